"""No string leaves the transport with one of our secrets in it, whatever the provider echoes."""

from __future__ import annotations

import json

import httpx
from hypothesis import given
from hypothesis import strategies as st

from batcher.transport.http import ApiClient, scrub_secrets
from batcher.transport.throttle import RateLimiter

KEY = 'sk-test-4f9a2b/c"d'


def _client(body: dict[str, object], status: int = 200) -> ApiClient:
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.headers["X-API-Key"] == KEY
        return httpx.Response(status, content=json.dumps(body).encode())

    return ApiClient(
        "http://127.0.0.1:1/api",
        auth_headers={"X-API-Key": KEY},
        limiter=RateLimiter(1000),
        transport=httpx.MockTransport(answer),
    )


def test_a_rejection_that_echoes_the_key_is_scrubbed() -> None:
    body = {
        "results": [
            {"status": "rejected", "reason": f"key {KEY} may not order", KEY: [KEY, 5]},
        ]
    }
    data = _client(body, 201).post("/orders/bulk", content=b"{}").data
    assert KEY not in json.dumps(data)
    assert data["results"][0]["reason"] == "key *** may not order"
    assert data["results"][0]["***"] == ["***", 5]


def test_a_read_that_echoes_the_key_is_scrubbed() -> None:
    data = _client({"orders": [{"note": f"by {KEY}"}]}).get("/orders").data
    assert data == {"orders": [{"note": "by ***"}]}


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
        max_leaves=20,
    ),
    st.text(alphabet=st.characters(exclude_characters="\x00"), min_size=4, max_size=12),
)
def test_scrubbed_values_never_hold_the_secret(value: object, secret: str) -> None:
    def plant(v: object) -> object:
        if isinstance(v, str):
            return v + secret + v
        if isinstance(v, list):
            return [plant(x) for x in v]
        if isinstance(v, dict):
            return {plant(k): plant(x) for k, x in v.items()}
        return v

    def strings(v: object) -> list[str]:
        if isinstance(v, str):
            return [v]
        if isinstance(v, list):
            return [s for x in v for s in strings(x)]
        if isinstance(v, dict):
            return [s for k, x in v.items() for s in (*strings(k), *strings(x))]
        return []

    scrubbed = scrub_secrets(plant(value), [secret], mask="\x00")
    assert not any(secret in s for s in strings(scrubbed))
