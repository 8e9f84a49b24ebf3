"""Reading provider JSON: msgspec's decoder, with json's semantics where batcher relies
on them, and a typed decoder for a success body tried first (`ApiClient.get(decode=)`)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from batcher.core.errors import OutcomeUnknown, ProviderUnavailable
from batcher.transport.http import ApiClient, parse_json
from batcher.transport.throttle import RateLimiter

KEY = "sk-json-test-key"


def test_numbers_are_ints_or_decimals_as_written() -> None:
    data = parse_json(b'{"a": 10, "b": 48.03, "c": 1e400, "d": -0.0, "e": 1.50, "f": 1E5}')
    assert data == {"a": 10, "b": Decimal("48.03"), "c": Decimal("1E+400")} | {
        "d": Decimal("-0.0"),
        "e": Decimal("1.50"),
        "f": Decimal("1E+5"),
    }
    assert type(data["a"]) is int
    assert [str(data[k]) for k in "bcdef"] == ["48.03", "1E+400", "-0.0", "1.50", "1E+5"]
    assert parse_json(b"12345678901234567890123") == 12345678901234567890123


@pytest.mark.parametrize(
    "body",
    [b'{"a": NaN}', b'{"a": Infinity}', b"[-Infinity]", b"NaN", b"\xef\xbb\xbf[NaN]"],
)
def test_nan_and_infinity_are_refused_as_bad_json(body: bytes) -> None:
    """json.loads reads them as floats, which money must never pass through."""
    with pytest.raises(ValueError, match="not a JSON number"):
        parse_json(body)


@pytest.mark.parametrize("body", [b"", b"{", b"[1] x", b"{'a': 1}", b'"\xff"', b"nul"])
def test_bad_json_raises_value_error(body: bytes) -> None:
    with pytest.raises(ValueError):
        parse_json(body)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'\xef\xbb\xbf{"a": 1.5}', {"a": Decimal("1.5")}),  # a byte order mark
        ('{"a": "é", "b": 2.5}'.encode("utf-16"), {"a": "é", "b": Decimal("2.5")}),
        (b'["\\ud800"]', ["\ud800"]),  # an escaped lone surrogate
        (b'{"a": 1, "a": 2}', {"a": 2}),
    ],
)
def test_what_json_reads_is_still_read(body: bytes, expected: Any) -> None:
    assert parse_json(body) == expected


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.decimals(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=15,
)


def as_json(value: Any) -> str:
    """JSON text with each Decimal written as a number, with the digits it carries."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, list):
        return "[" + ",".join(as_json(item) for item in value) + "]"
    if isinstance(value, dict):
        fields = (f"{json.dumps(key)}: {as_json(item)}" for key, item in value.items())
        return "{" + ", ".join(fields) + "}"
    return json.dumps(value, ensure_ascii=False)


@given(json_values)
def test_parse_json_reads_what_json_loads_reads(value: Any) -> None:
    body = as_json(value).encode()
    got, expected = parse_json(body), json.loads(body, parse_float=Decimal)
    assert repr(got) == repr(expected)


def client(body: bytes, status: int = 200, secret: str = KEY) -> ApiClient:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body)

    return ApiClient(
        "http://127.0.0.1:1/api",
        auth_headers={"X-API-Key": secret},
        limiter=RateLimiter(1e6),
        transport=httpx.MockTransport(answer),
    )


@pytest.mark.parametrize("body", [b'{"a": NaN}', b"{"])
def test_a_get_answered_with_bad_json_is_refused_as_before(body: bytes) -> None:
    with pytest.raises(ProviderUnavailable, match="with a body that is not JSON"):
        client(body).get("/auth")


def test_a_post_answered_with_bad_json_has_an_unknown_outcome() -> None:
    with pytest.raises(OutcomeUnknown, match="unreadable body"):
        client(b'{"results": [NaN]}', 201).post("/orders/bulk", content=b"{}")


def typed(content: bytes) -> tuple[str, bytes]:
    if b"odd" in content:
        raise ValueError("not for the typed decoder")
    return ("typed", content)


def test_a_typed_decoder_reads_a_success_body() -> None:
    assert client(b'{"a": 1}').get("/x", decode=typed).data == ("typed", b'{"a": 1}')


def test_a_body_the_typed_decoder_refuses_is_parsed_as_json() -> None:
    assert client(b'{"odd": 1.5}').get("/x", decode=typed).data == {"odd": Decimal("1.5")}


def test_an_error_body_is_never_given_to_the_typed_decoder() -> None:
    response = client(b'{"error": "nope"}', 404).get("/x", decode=typed)
    assert response.data == {"error": "nope"}


def test_a_body_that_may_hold_a_secret_is_parsed_and_scrubbed_not_typed() -> None:
    """Only the generic path scrubs our secrets out of what the provider says."""
    body = json.dumps({"note": f"echo {KEY}"}).encode()
    assert client(body).get("/x", decode=typed).data == {"note": "echo ***"}
    # A key with a character JSON may escape can hide in any body: always scrubbed.
    assert client(b'{"a": 1}', secret='k"ey').get("/x", decode=typed).data == {"a": 1}
