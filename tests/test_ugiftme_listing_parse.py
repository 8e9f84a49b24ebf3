"""Parsing UGiftMe listings: the fast parsers build exactly what the checked
constructors would, and malformed records fail as they always did."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from batcher.config import PROFILES, ProviderSettings
from batcher.core.errors import ProviderUnavailable
from batcher.core.models import ModelError, WalletTransaction
from batcher.providers import ugiftme
from batcher.providers.base import ProviderOrder
from batcher.providers.ugiftme import (
    UGiftMeProvider,
    _total_pages,
    _total_records,
    listed_orders,
    listed_transactions,
    parse_provider_order,
    parse_transaction,
)
from batcher.providers.wire import assemble, parse_time
from batcher.transport.http import parse_json
from batcher.transport.throttle import RateLimiter
from tests.test_transport_json import as_json

TRANSACTIONS: list[dict[str, Any]] = [
    {
        "_id": " tx1 ",
        "transactionType": "purchase",
        "transactionValue": Decimal("24.58"),
        "currency": "GBP",
        "orderID": "o1",
        "timestamp": "2026-12-04T20:24:54.832Z",
        "details": {"description": " Tesco 25.60 GBP "},
    },
    {"transactionId": "tx2", "_id": "ignored", "transactionType": "refund", "transactionValue": -5},
    {"transactionType": "funding", "transactionValue": "100.5", "details": {"currency": "EUR"}},
    {"transactionType": " fx_fee ", "transactionValue": Decimal("-0.25"), "currency": "  "},
    {"transactionType": 7, "transactionValue": "3", "orderID": 12, "transactionId": ""},
    {"transactionValue": 0, "timestamp": "2026-12-04 20:24:54", "details": "not an object"},
    {"transactionValue": 1, "timestamp": " 2026-12-04T20:24:54+02:00 ", "transactionId": 5},
    {"transactionValue": 1, "timestamp": "yesterday", "orderID": "  "},
    {"transactionValue": 1, "timestamp": "", "details": {"currency": 3, "description": None}},
]

ORDERS: list[dict[str, Any]] = [
    {
        "_id": "o1",
        "productCode": "TESCO_UK",
        "currency": "GBP",
        "valuePurchased": Decimal("25.60"),
        "status": "active",
        "createdAt": "2026-12-04T20:24:54.832Z",
        "giftOrder": {"recipientEmail": " a@example.com ", "recipientName": "A"},
        "transactionId": "txn_1",
    },
    {"_id": " o2 ", "valuePurchased": 10, "giftOrder": "no", "transactionId": "  "},
    {"_id": "o3", "valuePurchased": "7.5", "productCode": 4, "createdAt": None},
    {"_id": "o4", "valuePurchased": "1", "createdAt": "2026-12-04T20:24:54", "transactionId": 9},
]


def checked_copy(model: Any) -> Any:
    """The model rebuilt through its own constructor (every check of a core model)."""
    values = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)}
    return type(model)(**values)


@pytest.mark.parametrize("record", TRANSACTIONS)
def test_a_parsed_transaction_is_what_the_checked_constructor_builds(
    record: dict[str, Any],
) -> None:
    transaction = parse_transaction(record)
    assert type(transaction) is WalletTransaction
    again = checked_copy(transaction)
    assert again == transaction
    for field in dataclasses.fields(transaction):
        assert type(getattr(again, field.name)) is type(getattr(transaction, field.name))
    assert hash(again) == hash(transaction)


@pytest.mark.parametrize("record", ORDERS)
def test_a_parsed_order_is_what_the_constructor_builds(record: dict[str, Any]) -> None:
    order = parse_provider_order(record)
    assert type(order) is ProviderOrder
    assert checked_copy(order) == order
    assert hash(checked_copy(order)) == hash(order)


def test_transaction_fields_are_read_as_before() -> None:
    first, second, third, fourth, fifth, sixth, seventh, eighth, _ = (
        parse_transaction(record) for record in TRANSACTIONS
    )
    assert first == WalletTransaction(
        transaction_type="purchase",
        amount=Decimal("-24.58"),
        currency="GBP",
        order_id="o1",
        transaction_id="tx1",
        timestamp=datetime(2026, 12, 4, 20, 24, 54, 832000, tzinfo=UTC),
        description="Tesco 25.60 GBP",
    )
    assert (second.transaction_id, second.amount) == ("tx2", Decimal(5))
    assert (third.amount, third.currency, third.transaction_id) == (Decimal("100.5"), "EUR", None)
    assert (fourth.transaction_type, fourth.amount, fourth.currency) == (
        "fx_fee",
        Decimal("-0.25"),
        "",
    )
    assert (fifth.transaction_type, fifth.order_id, fifth.transaction_id) == ("", None, None)
    assert sixth.timestamp == datetime(2026, 12, 4, 20, 24, 54, tzinfo=UTC)  # naive: UTC
    assert seventh.timestamp == datetime(2026, 12, 4, 18, 24, 54, tzinfo=UTC)
    assert seventh.timestamp.utcoffset() == timedelta(hours=2)  # type: ignore[union-attr]
    assert seventh.transaction_id is None
    assert (eighth.timestamp, eighth.order_id) == (None, None)


def test_order_fields_are_read_as_before() -> None:
    first, second, third, fourth = (parse_provider_order(record) for record in ORDERS)
    assert first == ProviderOrder(
        order_id="o1",
        product_code="TESCO_UK",
        currency="GBP",
        face_value=Decimal("25.60"),
        status="active",
        created_at=datetime(2026, 12, 4, 20, 24, 54, 832000, tzinfo=UTC),
        recipient_email="a@example.com",
        recipient_name="A",
        transaction_id="txn_1",
    )
    assert (second.order_id, second.face_value, second.recipient_email) == ("o2", Decimal(10), "")
    assert second.transaction_id is None
    assert (third.product_code, third.created_at) == ("", None)
    assert fourth.created_at == datetime(2026, 12, 4, 20, 24, 54, tzinfo=UTC)
    assert fourth.transaction_id is None


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("abc", ValueError),
        ("NaN", ValueError),
        ("Infinity", ValueError),
        (1.5, TypeError),
        (True, TypeError),
        (None, TypeError),
        ({"amount": 1}, TypeError),
    ],
)
def test_an_unreadable_amount_raises_as_before(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_transaction({"transactionType": "purchase", "transactionValue": value})
    with pytest.raises(error):
        parse_provider_order({"_id": "o1", "valuePurchased": value})


def test_a_non_finite_decimal_is_refused_by_the_model_naming_the_field() -> None:
    with pytest.raises(ModelError, match="WalletTransaction\namount\n  Input should be a finite"):
        parse_transaction({"transactionType": "funding", "transactionValue": Decimal("Infinity")})


@pytest.mark.parametrize("value", [None, "", "   ", 7])
def test_an_order_without_an_id_is_refused(value: Any) -> None:
    with pytest.raises(ValueError, match="missing _id"):
        parse_provider_order({"_id": value, "valuePurchased": 1})


def test_assemble_needs_every_field_and_only_those() -> None:
    values = {f.name: None for f in dataclasses.fields(WalletTransaction)}
    with pytest.raises(TypeError, match="every field"):
        assemble(WalletTransaction, **{k: v for k, v in values.items() if k != "reference"})
    with pytest.raises(TypeError, match="every field"):
        assemble(WalletTransaction, **values, extra=1)
    built = assemble(WalletTransaction, **values)  # nothing is checked: the caller did
    assert built.amount is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.amount = Decimal(1)  # type: ignore[misc]


def test_parse_time_reads_repeated_text_the_same_every_time() -> None:
    for _ in range(3):
        assert parse_time("2026-12-04T20:24:54Z") == datetime(2026, 12, 4, 20, 24, 54, tzinfo=UTC)
        assert parse_time(" 2026-12-04T20:24:54 ") == datetime(2026, 12, 4, 20, 24, 54, tzinfo=UTC)
        moment = parse_time("2026-12-04T20:24:54-05:00")
        assert moment is not None and moment.tzinfo == timezone(timedelta(hours=-5))
        assert parse_time("") is None
        assert parse_time("   ") is None
        assert parse_time("soon") is None
        assert parse_time(None) is None
        assert parse_time(20261204) is None


# ------------------------------------------------------------ whole listings


def listing_provider(pages: dict[str, list[list[Any]]]) -> UGiftMeProvider:
    """A provider whose /wallet/transactions and /orders/search answer these pages."""

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/api/v1/business")
        key = {"/wallet/transactions": "transactions", "/orders/search": "orders"}[path]
        records = pages[key]
        number = int(request.url.params["page"])
        total = sum(len(page) for page in records)
        body = {
            key: records[number - 1],
            "pagination": {"total": total, "totalPages": len(records), "page": number},
        }
        return httpx.Response(200, json=body)

    settings = ProviderSettings(
        "ugiftme",
        "https://api.example.test/api/v1/business",
        SecretStr("listing-test-key"),
        PROFILES["ugiftme"],
    )
    provider = UGiftMeProvider(
        settings, transport=httpx.MockTransport(handler), limiter=RateLimiter(1e6)
    )
    provider.page_limit = 2
    return provider


def wire(record: dict[str, Any]) -> dict[str, Any]:
    """As the record comes off the wire (Decimals written as JSON numbers)."""
    return json.loads(json.dumps(record, default=str))


def test_a_listing_skips_entries_that_are_not_objects_and_keeps_the_order() -> None:
    transactions = [wire(TRANSACTIONS[0]), "junk", wire(TRANSACTIONS[1]), wire(TRANSACTIONS[2])]
    orders = [wire(ORDERS[0]), wire(ORDERS[1]), 3, wire(ORDERS[2])]
    provider = listing_provider(
        {
            "transactions": [transactions[:2], transactions[2:]],
            "orders": [orders[:2], orders[2:]],
        }
    )
    listed = provider.transactions()
    assert [tx.transaction_id for tx in listed] == ["tx1", "tx2", None]
    assert listed[0].amount == Decimal("-24.58")
    assert [o.order_id for o in provider.orders(datetime(2026, 1, 1, tzinfo=UTC))] == [
        "o1",
        "o2",
        "o3",
    ]


@pytest.mark.parametrize(
    ("kind", "bad"),
    [
        ("transactions", {"transactionType": "purchase", "transactionValue": "twelve"}),
        ("transactions", {"transactionType": "purchase", "transactionValue": True}),
        ("transactions", {"transactionType": "purchase"}),
        ("orders", {"valuePurchased": 5}),
        ("orders", {"_id": "o9", "valuePurchased": "NaN"}),
    ],
)
def test_a_malformed_record_on_a_later_page_fails_the_listing_with_the_same_error(
    kind: str, bad: dict[str, Any]
) -> None:
    good = [wire(TRANSACTIONS[0]), wire(TRANSACTIONS[1])]
    good_orders = [wire(ORDERS[0]), wire(ORDERS[1])]
    pages = {"transactions": [good, [bad]], "orders": [good_orders, [bad]]}
    provider = listing_provider(pages)
    path = "/wallet/transactions" if kind == "transactions" else "/orders/search"
    with pytest.raises(ProviderUnavailable) as caught:
        if kind == "transactions":
            provider.transactions()
        else:
            provider.orders(datetime(2026, 1, 1, tzinfo=UTC))
    assert caught.value.message == f"UGiftMe sent data batcher cannot read from {path}"
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert "listing-test-key" not in str(caught.value)


# ------------------------------------------------ pages read straight into models
#
# A listing page is decoded by msgspec into typed structures and built into models
# (`listed_orders`, `listed_transactions`); a page that path refuses (ValueError) is
# parsed as JSON and read by the record parsers above. Whatever page the fast path
# accepts, it must build exactly what the parsers build from it.


MONEY_TEXTS = [" 1.5 ", "1_000", "NaN", "-Infinity", "sNaN", "\u0661", "\xa01.5", "1e3", "abc"]
MONEY_TEXTS += ["", "  ", "-0", "0E-7", "+2.50", "1.", ".5", "0x10", "1e400", "-0.00"]
TIMES = ["2026-12-04T20:24:54.832Z", " 2026-12-04T20:24:54+02:00 ", "2026-12-04 20:24:54"]
TIMES += ["2026-12-04T20:24:54.123456789Z", "2026-12-04", "yesterday", "", "  "]
TEXTS = ["o1", " o2 ", "", "   ", "\u00a0x\u2003", "TESCO_UK", "purchase", "refund", " funding "]
TEXTS += ["fx_fee", "\ud7ff", "a\x00b"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.sampled_from([Decimal("-0"), Decimal("-0.0"), Decimal("1E+2"), Decimal("0.10")]),
    st.sampled_from(TEXTS + MONEY_TEXTS + TIMES),
    st.text(max_size=6),
)
values = st.one_of(scalars, st.lists(scalars, max_size=2), st.dictionaries(st.text(), scalars))


texts = st.one_of(st.none(), st.sampled_from(TEXTS + TIMES + MONEY_TEXTS), st.text(max_size=6))
amounts = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.sampled_from([Decimal("-0"), Decimal("-0.0"), Decimal("1E+2"), Decimal("0.10")]),
    st.sampled_from(MONEY_TEXTS),
)


def objects(fields: dict[str, Any]) -> Any:
    """Objects with any of these fields, each mostly of the type its reader expects."""
    return st.fixed_dictionaries(
        {},
        optional={name: st.one_of(usual, usual, usual, values) for name, usual in fields.items()},
    )


recipients = objects(dict.fromkeys(["recipientEmail", "recipientName", "message"], texts))
order_records = objects(
    dict.fromkeys(["_id", "productCode", "currency", "status", "createdAt", "transactionId"], texts)
    | {"valuePurchased": amounts, "giftOrder": st.one_of(st.none(), recipients), "extra": values}
)
details = objects(dict.fromkeys(["currency", "description", "type"], texts))
transaction_records = objects(
    dict.fromkeys(["_id", "transactionId", "transactionType", "currency", "orderID"], texts)
    | dict.fromkeys(["timestamp"], texts)
    | {"transactionValue": amounts, "details": st.one_of(st.none(), details), "extra": values}
)
paginations = st.one_of(
    values,
    objects(dict.fromkeys(["total", "totalTransactions", "totalOrders", "totalPages"], scalars)),
)


def read_as_before(kind: str, body: bytes) -> Any:
    """What the listing read from a page before it had a fast path: records, totals."""
    data = parse_json(body)
    parse = parse_transaction if kind == "transactions" else parse_provider_order
    try:
        items = [parse(r) if isinstance(r, dict) else None for r in data[kind]]
    except (ValueError, TypeError, ArithmeticError):
        return "refused"
    return items, _total_records(data), _total_pages(data)


def check_the_same(kind: str, page: dict[str, Any]) -> bool:
    """Whether the fast path read the page (else it left it to the parsers)."""
    body = as_json(page).encode()
    listed = listed_transactions if kind == "transactions" else listed_orders
    try:
        fast = listed(body)
    except ValueError:
        return False
    before = read_as_before(kind, body)
    assert before != "refused", "the fast path read a page the parsers refuse"
    items, total, total_pages = before
    assert (fast.total, fast.total_pages) == (total, total_pages)
    assert [repr(item) for item in fast.items] == [repr(item) for item in items]
    assert fast.items == items
    for built, parsed in zip(fast.items, items, strict=True):
        assert type(built) is type(parsed)
        assert vars(built).keys() == vars(parsed).keys()
        for name, value in vars(parsed).items():
            assert type(vars(built)[name]) is type(value), name
    return True


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.one_of(order_records, order_records, scalars), max_size=4),
    paginations,
    st.one_of(st.none(), scalars),
)
def test_an_orders_page_read_fast_is_what_the_parsers_read(
    records: list[Any], pagination: Any, total_pages: Any
) -> None:
    check_the_same(
        "orders", {"orders": records, "pagination": pagination, "totalPages": total_pages}
    )


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.one_of(transaction_records, transaction_records, scalars), max_size=4),
    paginations,
    st.one_of(st.none(), scalars),
)
def test_a_transactions_page_read_fast_is_what_the_parsers_read(
    records: list[Any], pagination: Any, total: Any
) -> None:
    page = {"transactions": records, "pagination": pagination, "totalTransactions": total}
    check_the_same("transactions", page)


FAST_ORDERS = [
    ORDERS[0],
    {"_id": " o2 ", "valuePurchased": 10, "transactionId": "  ", "giftOrder": None},
    {"_id": "o3", "valuePurchased": "7.5", "createdAt": None, "status": " active "},
    {"_id": "o4", "valuePurchased": Decimal("1E+2"), "createdAt": "2026-12-04T20:24:54"},
    {"_id": "o5", "valuePurchased": Decimal("-0.0"), "giftOrder": {"recipientName": None}},
]
FAST_TRANSACTIONS = [
    TRANSACTIONS[0],
    TRANSACTIONS[1],
    TRANSACTIONS[2],
    TRANSACTIONS[3],
    {"transactionValue": 1, "timestamp": " 2026-12-04T20:24:54+02:00 ", "transactionId": "  "},
    {"transactionValue": 1, "timestamp": "yesterday", "orderID": "  ", "details": None},
    {"transactionValue": "12.50", "transactionType": " refund ", "currency": "EUR"},
    {"transactionValue": Decimal("-0"), "transactionType": "x"},  # the int 0, as json reads it
]


@pytest.mark.parametrize(
    ("kind", "records"), [("orders", FAST_ORDERS), ("transactions", FAST_TRANSACTIONS)]
)
def test_the_usual_pages_are_read_fast_and_as_before(kind: str, records: list[Any]) -> None:
    page = {kind: records, "pagination": {"total": 7, "totalPages": 1}}
    assert check_the_same(kind, page)


@pytest.mark.parametrize(
    ("kind", "record"),
    [
        ("orders", {"_id": 7, "valuePurchased": 1}),
        ("orders", {"_id": "  ", "valuePurchased": 1}),
        ("orders", {"_id": "o1", "valuePurchased": "NaN"}),
        ("orders", {"_id": "o1", "valuePurchased": 1, "productCode": 4}),
        ("orders", {"_id": "o1", "valuePurchased": 1, "giftOrder": "no"}),
        ("transactions", {"transactionValue": True}),
        ("transactions", {"transactionValue": "Infinity"}),
        ("transactions", {"transactionValue": 1, "transactionId": 5}),
        ("transactions", {"transactionValue": 1, "details": "not an object"}),
        ("transactions", "not an object"),
    ],
)
def test_an_odd_record_leaves_its_page_to_the_parsers(kind: str, record: Any) -> None:
    assert not check_the_same(kind, {kind: [record], "pagination": {"total": 1}})


def test_a_well_formed_listing_never_calls_the_record_parsers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(record: Any) -> Any:
        raise AssertionError("a well-formed page was read record by record")

    monkeypatch.setattr(ugiftme, "parse_transaction", refuse)
    monkeypatch.setattr(ugiftme, "parse_provider_order", refuse)
    transactions = [wire(record) for record in FAST_TRANSACTIONS]
    orders = [wire(record) for record in FAST_ORDERS]
    provider = listing_provider(
        {
            "transactions": [transactions[i : i + 2] for i in range(0, 8, 2)],
            "orders": [orders[i : i + 2] for i in range(0, 5, 2)],
        }
    )
    listed = provider.transactions()
    assert [tx.amount for tx in listed] == [
        Decimal("-24.58"),
        Decimal(5),
        Decimal("100.5"),
        Decimal("-0.25"),
        Decimal(1),
        Decimal(1),
        Decimal("12.50"),
        Decimal(0),
    ]
    assert [o.order_id for o in provider.orders(datetime(2026, 1, 1, tzinfo=UTC))] == [
        "o1",
        "o2",
        "o3",
        "o4",
        "o5",
    ]


def test_a_page_that_echoes_the_key_is_scrubbed_not_read_fast() -> None:
    echo = {"transactionValue": 1, "details": {"description": "paid by listing-test-key"}}
    provider = listing_provider({"transactions": [[echo]], "orders": [[]]})
    (transaction,) = provider.transactions()
    assert transaction.description == "paid by ***"
