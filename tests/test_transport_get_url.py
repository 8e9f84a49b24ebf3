"""ApiClient.get builds each URL once, yet sends exactly the URL httpx would have built."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from batcher.transport.http import ApiClient, Params
from batcher.transport.throttle import RateLimiter

BASES = [
    "http://127.0.0.1:8080/api/v1/business",
    "http://127.0.0.1:8080/api/v1/business/",
    "https://api.example.test",
    "https://api.example.test/v2/",
]
PATHS = ["/orders/search", "wallet/transactions", "/orders/a%2Fb", "/a b/ü", "/products", "/"]
PARAMS: list[Params] = [
    {"page": 2, "limit": 100},
    {"startDate": "2026-12-04T19:00:00Z", "sortBy": "createdAt", "order": "desc", "page": 7},
    {"q": "a b&c=d+e/f?g#h", "name": "Zoë ünïcode €", "empty": ""},
    {"percent": "100%", "tilde": "~x", "semi": "a;b", "n": 0, "neg": -3},
]


def _client(base: str, seen: list[httpx.URL]) -> ApiClient:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        return httpx.Response(200, json={"ok": True})

    return ApiClient(
        base,
        auth_headers={"X-API-Key": "key"},
        limiter=RateLimiter(1e6),
        transport=httpx.MockTransport(answer),
    )


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("params", PARAMS)
def test_a_get_sends_the_url_httpx_builds_from_path_and_params(
    base: str, path: str, params: Params
) -> None:
    seen: list[httpx.URL] = []
    client = _client(base, seen)
    expected = httpx.Client(base_url=base).build_request("GET", path, params=params).url
    built = client._url(path, params)
    assert isinstance(built, httpx.URL)  # parsed once, here; not left to build_request
    assert built == expected and str(built) == str(expected)
    assert client.get(path, params=params).data == {"ok": True}
    assert [str(url) for url in seen] == [str(expected)]
    assert seen[0].raw_path == expected.raw_path


@pytest.mark.parametrize("params", [None, {}])
def test_a_get_without_params_is_left_to_httpx(params: Params | None) -> None:
    seen: list[httpx.URL] = []
    client = _client(BASES[0], seen)
    assert client._url("/auth", params) is None
    client.get("/auth", params=params)
    assert str(seen[0]) == "http://127.0.0.1:8080/api/v1/business/auth"


@pytest.mark.parametrize("path", ["/orders?status=active", "/orders#top", "http://other.test/x"])
def test_a_path_with_its_own_query_fragment_or_host_is_left_to_httpx(path: str) -> None:
    seen: list[httpx.URL] = []
    client = _client(BASES[0], seen)
    assert client._url(path, {"page": 2}) is None
    client.get(path, params={"page": 2})
    expected = httpx.Client(base_url=BASES[0]).build_request("GET", path, params={"page": 2})
    assert str(seen[0]) == str(expected.url)


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8).filter(lambda t: t.isprintable()),
        st.one_of(st.integers(), st.text(max_size=12).filter(lambda t: t.isprintable())),
        min_size=1,
        max_size=4,
    )
)
def test_any_printable_params_give_the_same_url(params: dict[str, str | int]) -> None:
    base = BASES[0]
    expected = httpx.Client(base_url=base).build_request("GET", "/orders", params=params).url
    client = ApiClient(base, auth_headers={}, limiter=RateLimiter(1e6))
    assert str(client._url("/orders", params)) == str(expected)
