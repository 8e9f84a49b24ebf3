"""UGiftMe request bodies: canonical, deterministic, exact money."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from batcher.config import PROFILES, ProviderSettings
from batcher.providers.base import OrderItem
from batcher.providers.ugiftme import UGiftMeProvider
from batcher.transport.http import canonical_json, parse_json
from batcher.transport.throttle import RateLimiter

KEY = "b1-0123456789abcdef"


@pytest.fixture(scope="module")
def provider() -> Iterator[UGiftMeProvider]:
    settings = ProviderSettings(
        "ugiftme",
        "http://127.0.0.1:9/api/v1/business",
        SecretStr("encode-test-key"),
        PROFILES["ugiftme"],
    )
    client = UGiftMeProvider(settings, limiter=RateLimiter(100))
    yield client
    client.close()


def item(n: int = 1, **overrides: object) -> OrderItem:
    fields: dict[str, object] = {
        "row_key": f"row{n}",
        "product_code": "AMAZON_UK_STD",
        "merchant": "Amazon",
        "currency": "GBP",
        "amount": Decimal("50"),
        "recipient_email": f"person{n}@example.com",
        "recipient_name": "Ann Smith",
        "message": "Thank you",
    }
    fields.update(overrides)
    return OrderItem(**fields)  # type: ignore[arg-type]


def test_exact_bytes_sorted_compact_and_amounts_with_the_currency_decimals(
    provider: UGiftMeProvider,
) -> None:
    body = provider.encode(KEY, [item()])
    assert body == (
        b'{"orders":[{"currency":"GBP","giftMessage":"Thank you","merchant":"Amazon",'
        b'"productCode":"AMAZON_UK_STD","recipientEmail":"person1@example.com",'
        b'"recipientName":"Ann Smith","valuePurchased":50.00}]}'
    )


@pytest.mark.parametrize(
    ("currency", "amount", "literal"),
    [
        ("GBP", "50", b"50.00"),
        ("GBP", "50.5", b"50.50"),
        ("GBP", "0.10", b"0.10"),
        ("JPY", "1000", b"1000"),
        ("KWD", "12.5", b"12.500"),
        ("EUR", "1E+3", b"1000.00"),
    ],
)
def test_amount_literals(
    provider: UGiftMeProvider, currency: str, amount: str, literal: bytes
) -> None:
    body = provider.encode(KEY, [item(currency=currency, amount=Decimal(amount))])
    assert b'"valuePurchased":' + literal + b"}" in body


def test_empty_optional_fields_are_omitted(provider: UGiftMeProvider) -> None:
    body = provider.encode(KEY, [item(recipient_name="", message="")])
    decoded = parse_json(body)["orders"][0]
    assert "recipientName" not in decoded
    assert "giftMessage" not in decoded
    assert decoded["recipientEmail"] == "person1@example.com"


def test_text_stays_utf8_and_is_escaped_safely(provider: UGiftMeProvider) -> None:
    body = provider.encode(KEY, [item(recipient_name='Zoë "Z" Ñúñez', message="line\nbreak")])
    assert 'Zoë \\"Z\\" Ñúñez'.encode() in body
    assert b"line\\nbreak" in body
    assert parse_json(body)["orders"][0]["giftMessage"] == "line\nbreak"


def test_the_key_does_not_change_the_body(provider: UGiftMeProvider) -> None:
    assert provider.encode("b1-aaaa", [item()]) == provider.encode("b1-bbbb", [item()])


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([], "at least one"),
        ([item(n) for n in range(101)], "at most 100"),
        ([item(1), item(2, currency="EUR")], "one currency"),
        ([item(1), item(2, recipient_email="PERSON1@example.com ")], "repeats"),
        ([item(amount=Decimal("10.005"))], "more decimals"),
        ([item(amount=Decimal("-5"))], "positive"),
        ([item(amount=Decimal("0"))], "positive"),
        ([item(amount=Decimal("NaN"))], "positive"),
    ],
)
def test_chunks_that_cannot_be_sent_or_mapped_back_are_refused(
    provider: UGiftMeProvider, items: list[OrderItem], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        provider.encode(KEY, items)


def test_a_float_can_never_reach_a_request_body() -> None:
    with pytest.raises(TypeError):
        canonical_json({"valuePurchased": 50.0})


amounts = st.decimals(
    min_value=Decimal("0.01"), max_value=Decimal("99999.99"), places=2, allow_nan=False
)
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


@st.composite
def chunks(draw: st.DrawFn) -> list[OrderItem]:
    count = draw(st.integers(min_value=1, max_value=8))
    values = draw(st.lists(amounts, min_size=count, max_size=count))
    names = draw(st.lists(texts, min_size=count, max_size=count))
    messages = draw(st.lists(texts, min_size=count, max_size=count))
    return [
        item(n, amount=value, recipient_name=name, message=message)
        for n, (value, name, message) in enumerate(zip(values, names, messages, strict=True))
    ]


@settings(max_examples=60, deadline=None)
@given(chunk=chunks())
def test_encode_is_stable_and_round_trips_amounts_exactly(
    provider: UGiftMeProvider, chunk: list[OrderItem]
) -> None:
    body = provider.encode(KEY, chunk)
    assert provider.encode(KEY, list(chunk)) == body  # same items, same bytes
    decoded = parse_json(body)["orders"]
    assert len(decoded) == len(chunk)
    for sent, original in zip(decoded, chunk, strict=True):
        value = sent["valuePurchased"]
        assert isinstance(value, Decimal)  # never a float on the way back either
        assert value == original.amount
        assert value.as_tuple().exponent == -2  # exactly the currency's decimals
        assert sent.get("recipientName", "") == original.recipient_name
        assert sent.get("giftMessage", "") == original.message
    # Canonical: re-encoding the decoded body gives the same bytes.
    assert canonical_json({"orders": decoded}) == body


_TEXT = st.text(st.characters(codec="utf-8"), max_size=12)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            _TEXT.filter(bool),  # product code
            _TEXT,  # merchant
            st.sampled_from(["GBP", "EUR", "JPY", "KWD", "USD"]),
            st.decimals(min_value=Decimal("0.001"), max_value=Decimal("99999"), places=3),
            _TEXT,  # email
            _TEXT,  # name
            _TEXT,  # message
        ),
        min_size=1,
        max_size=6,
        unique_by=lambda r: (r[0], r[3], r[4], r[5]),
    )
)
def test_the_bulk_body_is_canonical_json_of_the_item_bodies(
    provider: UGiftMeProvider, rows: list[tuple[str, str, str, Decimal, str, str, str]]
) -> None:
    """The body written straight from the items is byte for byte canonical_json of
    `order_item_body`: a planned chunk's stored bytes never depend on which wrote them."""
    from batcher.core.money import fits_currency
    from batcher.providers.ugiftme import order_item_body

    items = [
        item(n, product_code=p, merchant=m, currency=c, amount=a, recipient_email=e,
             recipient_name=nm, message=msg)
        for n, (p, m, c, a, e, nm, msg) in enumerate(rows)
        if fits_currency(a, c)
    ]  # fmt: skip
    expected = canonical_json({"orders": [order_item_body(i) for i in items]})
    try:
        body = provider.encode(KEY, items)
    except ValueError:
        return  # refused (no items, or two items one match key): nothing to compare
    assert body == expected
    assert parse_json(body) == {"orders": [order_item_body(i) for i in items]}
