"""A GET's fast path (first attempt outside tenacity, a page's URL as its path's parsed
URL with a new query) behaves as the former `ApiClient.get`, kept here as the oracle:
the same answers, errors, messages, retries, waits and requests, for any sequence of
answers; the same URL as httpx builds, to the byte, for any params."""

from __future__ import annotations

import functools
import random
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from batcher.core.errors import ProviderUnavailable
from batcher.transport import http
from batcher.transport.http import ApiClient, ApiResponse, Decode, Params, _RetryableGet
from batcher.transport.throttle import RateLimiter

SECRET = "sk_live_abc123"
BASE = "https://api.example.test/v1"


class FormerGet(ApiClient):
    """`ApiClient.get` as it was before the fast path: tenacity around every attempt,
    and the URL parsed by httpx.URL from the whole text."""

    def get(
        self, path: str, *, params: Params | None = None, decode: Decode | None = None
    ) -> ApiResponse:
        if not params or self._base_text is None or any(c in path for c in "?#:"):
            request = self._client.build_request("GET", path, params=params)
        else:
            query = str(httpx.QueryParams(params))
            url = httpx.URL(f"{self._base_text}{path.lstrip('/')}?{query}")
            request = self._client.build_request("GET", url)
        retrying = Retrying(
            stop=stop_after_attempt(self._get_attempts),
            wait=wait_exponential_jitter(multiplier=0.5, max=8.0, jitter=0.5),
            retry=retry_if_exception_type(_RetryableGet),
            sleep=self._retry_sleep,
            reraise=True,
        )
        try:
            return retrying(self._get_once, request, path, decode)
        except _RetryableGet as exc:
            if exc.connect_failure:
                message = f"cannot reach {self.host}: {exc.description}"
            else:
                message = f"{self.host}: GET {path} failed: {exc.description}"
            raise ProviderUnavailable(message) from None
        except http._StillThrottled:
            raise ProviderUnavailable(
                f"{self.host}: GET {path} is still rate limited after "
                f"{self._max_throttled_retries} retries"
            ) from None


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 9))
        self.now += max(0.0, seconds)


#: What the provider may answer, one per request.
OUTCOMES = [
    "ok",
    "ok_echo",  # a success page that echoes the key: only the scrubbing path may read it
    "typed",  # a body the typed decoder reads
    "not_json",
    "s500",
    "s503_retry_after",
    "s429",
    "s401",
    "s403",
    "s404",
    "connect_error",
    "read_timeout",
    "protocol_error",
]


def _answer(outcome: str, request: httpx.Request) -> httpx.Response:
    if outcome == "ok":
        return httpx.Response(200, json={"orders": [{"amount": 1.5}], "page": 1})
    if outcome == "ok_echo":
        return httpx.Response(200, json={"typed": True, "note": f"key {SECRET} seen"})
    if outcome == "typed":
        return httpx.Response(200, json={"typed": True, "n": 7})
    if outcome == "not_json":
        return httpx.Response(200, content=b"<html>oops</html>")
    if outcome == "s500":
        return httpx.Response(500, json={"error": "boom"})
    if outcome == "s503_retry_after":
        return httpx.Response(503, headers={"Retry-After": "2"}, json={"error": "later"})
    if outcome == "s429":
        return httpx.Response(429, headers={"Retry-After": "1"}, json={"error": "slow"})
    if outcome == "s401":
        return httpx.Response(401, json={"error": f"bad key {SECRET}"})
    if outcome == "s403":
        return httpx.Response(403, json={"message": "denied"})
    if outcome == "s404":
        return httpx.Response(404, json={"error": "no such page"})
    if outcome == "connect_error":
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
    if outcome == "read_timeout":
        raise httpx.ReadTimeout("timed out", request=request)
    if outcome == "protocol_error":
        raise httpx.RemoteProtocolError("closed", request=request)
    raise AssertionError(outcome)


def _typed(content: bytes) -> Any:
    import json

    data = json.loads(content)
    if not isinstance(data, dict) or not data.get("typed"):
        raise ValueError("not for me")
    return ("typed", sorted(data))


def _run(
    kind: type[ApiClient],
    script: list[str],
    path: str,
    params: Params | None,
    decode: Decode | None,
    attempts: int,
) -> tuple[Any, list[str], list[float]]:
    fake = FakeTime()
    sent: list[str] = []
    answers = iter(script)

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(str(request.url))
        return _answer(next(answers, "ok"), request)

    api = kind(
        BASE,
        auth_headers={"X-API-Key": SECRET},
        limiter=RateLimiter(1e6, clock=fake.clock, wall_clock=fake.clock, sleep=fake.sleep),
        auth_hint="check KEY",
        transport=httpx.MockTransport(answer),
        get_attempts=attempts,
        max_throttled_retries=2,
        retry_sleep=fake.sleep,
    )
    random.seed(1234)  # tenacity's jitter
    try:
        response = api.get(path, params=params, decode=decode)
        outcome: Any = ("ok", response.status_code, response.data, dict(response.headers))
    except Exception as exc:  # compared as type and message
        outcome = ("error", type(exc).__name__, str(exc), getattr(exc, "hint", None))
    return outcome, sent, fake.slept


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    script=st.lists(st.sampled_from(OUTCOMES), max_size=7),
    params=st.sampled_from([None, {"page": 3, "limit": 100}, {"q": "a b", "ok": True}]),
    typed=st.booleans(),
    attempts=st.integers(min_value=1, max_value=4),
)
def test_a_get_answers_fails_retries_and_waits_as_the_former_get(
    script: list[str], params: Params | None, typed: bool, attempts: int
) -> None:
    decode = _typed if typed else None
    former = _run(FormerGet, script, "/orders/search", params, decode, attempts)
    now = _run(ApiClient, script, "/orders/search", params, decode, attempts)
    assert now == former
    # The key never comes out of a success body or an error message.
    assert SECRET not in repr(now[0])


@pytest.mark.parametrize(
    ("script", "requests", "sleeps"),
    [
        (["s500", "ok"], 2, 1),  # a 5xx, then success: one retry, after one backoff
        (["connect_error", "read_timeout", "ok"], 3, 2),
        (["s429", "ok"], 2, 1),  # a 429 is waited out by the limiter and resent
        (["s500", "s500", "s500"], 3, 2),  # attempts spent: the error of the last one
    ],
)
def test_the_first_attempt_outside_tenacity_still_retries(
    script: list[str], requests: int, sleeps: int
) -> None:
    outcome, sent, slept = _run(ApiClient, script, "/x", {"page": 1}, None, 3)
    assert len(sent) == requests and len(slept) == sleeps
    if script[-1] == "ok":
        assert outcome[0] == "ok" and outcome[1] == 200
    else:
        assert outcome[:3] == (
            "error",
            "ProviderUnavailable",
            "api.example.test: GET /x failed: HTTP 500",
        )


def test_a_page_that_echoes_the_key_is_scrubbed_not_typed() -> None:
    outcome, _, _ = _run(ApiClient, ["ok_echo"], "/x", {"page": 1}, _typed, 3)
    assert outcome[2] == {"typed": True, "note": "key *** seen"}


# ----------------------------------------------------------------------------- URLs

BASES = [
    "http://127.0.0.1:8080/api/v1/business",
    "https://api.example.test/v2/",
    "https://API.Example.test:443/a/../b",
    "http://[::1]:8080/x",
]
PATHS = ["/orders/search", "wallet/transactions", "/a%2Fb", "/a b/ü", "/./c/../d", "", "/"]


@functools.cache
def _clients(base: str) -> tuple[httpx.Client, ApiClient]:
    """httpx's own client and ours for `base`, made once: each loads a TLS context."""
    return httpx.Client(base_url=base), ApiClient(base, auth_headers={}, limiter=RateLimiter(1e6))


@settings(max_examples=300, deadline=None)
@given(
    base=st.sampled_from(BASES),
    path=st.sampled_from(PATHS),
    params=st.dictionaries(
        st.text(min_size=1, max_size=6),
        st.one_of(st.integers(), st.booleans(), st.text(max_size=10)),
        min_size=1,
        max_size=5,
    ),
)
def test_a_page_url_is_the_url_httpx_builds(base: str, path: str, params: Params) -> None:
    httpx_client, client = _clients(base)
    client._path_urls.clear()  # the first call parses the path, the second reuses it
    try:
        expected: httpx.URL | None = httpx_client.build_request("GET", path, params=params).url
    except httpx.InvalidURL:
        expected = None
    for _ in range(2):  # the second from the path's kept URL
        try:
            built = client._url(path, params)
        except httpx.InvalidURL:
            assert expected is None
            continue
        assert expected is not None and built is not None
        assert str(built) == str(expected) and built.raw_path == expected.raw_path
        assert built == expected and built.host == expected.host and built.port == expected.port
        assert built.query == expected.query and built.params == expected.params


def test_a_query_the_parser_would_change_is_left_to_it() -> None:
    client = ApiClient(BASES[0], auth_headers={}, limiter=RateLimiter(1e6))
    for query in ["a=b", "a=%7E", "a=b+c&d="]:
        assert http._PLAIN_QUERY.fullmatch(query)
    for query in ["a=%7e", "a=b c", 'a="', "a=<", "a=ü", "a=%", "a=%zz", "a=b#c"]:
        assert not http._PLAIN_QUERY.fullmatch(query)
    long = {"q": "x" * http._MAX_SHORT_URL}
    expected = httpx.Client(base_url=BASES[0]).build_request("GET", "/o", params=long).url
    assert client._url("/o", long) == expected
    assert client._path_urls == {}  # parsed whole, by httpx
    too_long = {"q": "x" * 70_000}  # over httpx's limit: refused as the former _url did
    with pytest.raises(httpx.InvalidURL) as former:
        FormerGet(BASES[0], auth_headers={}, limiter=RateLimiter(1e6)).get("/o", params=too_long)
    with pytest.raises(httpx.InvalidURL) as now:
        client.get("/o", params=too_long)
    assert str(now.value) == str(former.value) == "URL too long"


def test_the_kept_path_urls_stay_few() -> None:
    client = ApiClient(BASES[0], auth_headers={}, limiter=RateLimiter(1e6))
    for number in range(3 * http._MAX_PATH_URLS):
        client._url(f"/orders/{number}", {"page": 1})
    assert len(client._path_urls) <= http._MAX_PATH_URLS


@pytest.mark.parametrize(
    "params", [{"flag": True}, {"flag": False}, {"n": 1.5}, {"items": ["a", "b"]}, {1: "x"}]
)
def test_values_httpx_writes_its_own_way_are_written_by_httpx(params: Any) -> None:
    expected = str(httpx.QueryParams(params))
    assert http._query_text(params) == expected
