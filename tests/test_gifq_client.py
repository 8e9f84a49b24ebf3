"""GIFQ client: encoding and result mapping (pure), poll economy over a mock transport,
and everything else against the real GIFQ sandbox."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from pydantic import SecretStr

from batcher.config import PROFILES, ProviderSettings
from batcher.core.errors import AuthError, ProviderUnavailable, UsageError
from batcher.providers.base import (
    IncompleteResult,
    OrderItem,
    OutcomeUnknown,
    PollResult,
    ProviderOptions,
)
from batcher.providers.gifq import (
    PAGE_LIMIT,
    GifqOrders,
    GifqPayouts,
    OrderBoard,
    account_fingerprint,
    amount_text,
    connect_gifq,
    is_last_page,
    map_payouts,
    order_body,
    order_cost,
    order_result,
    page_params,
    parse_brand,
    parse_redemption,
    parse_transaction,
    payout_order_body,
    rejection_code,
    shortfall,
)
from batcher.sandbox.server import SandboxHandle, running_sandbox
from batcher.transport.http import canonical_json, parse_json
from batcher.transport.throttle import RateLimiter, forget_limiters

SECRET = "GIFQ-SECRET-TOKEN-7c1d2e3f"
KEY = "b1-" + "a" * 40


@pytest.fixture(autouse=True)
def _fresh_limiters() -> Iterator[None]:
    forget_limiters()
    yield
    forget_limiters()


def item(
    n: int = 1,
    *,
    brand: str = "amazon",
    amount: str = "25",
    currency: str = "GBP",
    country: str = "GB",
    paying: str = "",
    email: str | None = None,
    name: str | None = None,
) -> OrderItem:
    return OrderItem(
        row_key=f"row{n}",
        product_code=brand,
        merchant="",
        currency=currency,
        amount=Decimal(amount),
        recipient_email=email if email is not None else f"person{n}@example.com",
        recipient_name=name if name is not None else f"Person {n}",
        country=country,
        payment_currency=paying,
    )


def settings(base_url: str = "http://127.0.0.1:9/api", token: str = SECRET) -> ProviderSettings:
    return ProviderSettings("gifq", base_url, SecretStr(token), PROFILES["gifq"])


def fast_limiter() -> RateLimiter:
    return RateLimiter(10_000.0)


# ---------------------------------------------------------------------------
# Encoding


def test_an_order_is_canonical_json_with_the_key_as_reference() -> None:
    body = GifqOrders(settings(), limiter=fast_limiter()).encode(KEY, [item(amount="50")])
    assert body == (
        b'{"brand":"amazon","country":"GB","currency":"GBP","face_value":"50.00",'
        b'"reference":"' + KEY.encode() + b'"}'
    )
    assert json.loads(body)["face_value"] == "50.00"


def test_face_value_has_exactly_the_currency_decimals() -> None:
    assert amount_text(Decimal("50"), "GBP") == "50.00"
    assert amount_text(Decimal("12.5"), "EUR") == "12.50"
    assert amount_text(Decimal("1000"), "JPY") == "1000"
    assert amount_text(Decimal("1.234"), "KWD") == "1.234"
    with pytest.raises(ValueError, match="more decimals"):
        amount_text(Decimal("10.005"), "GBP")
    with pytest.raises(ValueError, match="positive"):
        amount_text(Decimal("0"), "GBP")


def test_payment_currency_is_sent_only_when_it_differs() -> None:
    assert "payment_currency" not in order_body(KEY, item(paying=""))
    assert "payment_currency" not in order_body(KEY, item(paying="gbp"))
    body = order_body(KEY, item(paying="usd"))
    assert body["payment_currency"] == "USD"


def test_an_order_holds_exactly_one_item_and_needs_a_country() -> None:
    client = GifqOrders(settings(), limiter=fast_limiter())
    with pytest.raises(ValueError, match="exactly one"):
        client.encode(KEY, [item(1), item(2)])
    with pytest.raises(ValueError, match="country"):
        client.encode(KEY, [item(country="")])
    with pytest.raises(ValueError, match="reference"):
        client.encode("", [item()])


def test_encoding_is_deterministic() -> None:
    client = GifqOrders(settings(), limiter=fast_limiter())
    assert client.encode(KEY, [item(paying="EUR")]) == client.encode(KEY, [item(paying="EUR")])


def test_a_payout_order_lists_recipients_in_chunk_order() -> None:
    items = [item(2, amount="10"), item(1, amount="20.5", name="  Ann   Lee "), item(3, name="")]
    body = payout_order_body("cmp_1", items, 14)
    assert body == {
        "campaign_id": "cmp_1",
        "wallet_currency": "GBP",
        "expires_in_days": 14,
        "recipients": [
            {
                "email": "person2@example.com",
                "name": "Person 2",
                "amount": "10.00",
                "currency": "GBP",
            },
            {
                "email": "person1@example.com",
                "name": "Ann Lee",
                "amount": "20.50",
                "currency": "GBP",
            },
            {"email": "person3@example.com", "amount": "25.00", "currency": "GBP"},
        ],
    }


def test_a_payout_order_refuses_what_it_cannot_carry() -> None:
    with pytest.raises(ValueError, match="at most 2"):
        payout_order_body("c", [item(1), item(2), item(3)], 30, limit=2)
    with pytest.raises(ValueError, match="one wallet"):
        payout_order_body("c", [item(1), item(2, currency="EUR")], 30)
    with pytest.raises(ValueError, match="payment_currency"):
        payout_order_body("c", [item(1, paying="USD")], 30)


def test_payout_encode_uses_the_campaign_and_expiry_from_the_options() -> None:
    options = ProviderOptions(mode="payouts", campaign_id="cmp_9", expires_in_days=7)
    client = GifqPayouts(settings(), options=options, limiter=fast_limiter())
    body = json.loads(client.encode(KEY, [item()]))
    assert (body["campaign_id"], body["expires_in_days"]) == ("cmp_9", 7)
    assert KEY not in json.dumps(body)  # the key travels in the Idempotency-Key header


def test_connect_picks_the_mode() -> None:
    orders = connect_gifq(settings(), options=ProviderOptions())
    payouts = connect_gifq(
        settings(), options=ProviderOptions(mode="payouts", campaign_id="c", expires_in_days=3)
    )
    try:
        assert (orders.submit_limit, orders.idempotency_carrier) == (1, "body")
        assert orders.required_fields >= {"country", "product_code"}
        assert orders.validates_catalog
        assert (payouts.submit_limit, payouts.idempotency_carrier) == (1000, "header")
        assert payouts.required_fields == {"recipient_email", "amount", "currency"}
        assert not payouts.validates_catalog
    finally:
        orders.close()
        payouts.close()


# ---------------------------------------------------------------------------
# Paging


def test_a_page_never_asks_for_more_than_twenty() -> None:
    assert page_params(3, 20, {"payout_order_id": "po_1"}) == {
        "payout_order_id": "po_1",
        "page": 3,
        "limit": 20,
    }
    with pytest.raises(ValueError, match="1-20"):
        page_params(1, 21)
    with pytest.raises(ValueError):
        page_params(0, 20)


def test_the_last_page_comes_from_the_headers_or_a_short_page() -> None:
    assert is_last_page(2, 20, 20, {"total-pages": "2"})
    assert not is_last_page(1, 20, 20, {"total-pages": "2"})
    assert not is_last_page(1, 20, 20, {})
    assert is_last_page(1, 7, 20, {})


# ---------------------------------------------------------------------------
# Result mapping


def order(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "ord_1",
        "reference": KEY,
        "status": "completed",
        "brand": "amazon",
        "currency": "GBP",
        "face_value": Decimal("50.00"),
        "country": "GB",
        "price": Decimal("48.75"),
        "discount": Decimal("2.5"),
        "payment_currency": "GBP",
        "created_at": "2025-01-01T10:00:00Z",
    }
    base.update(fields)
    return base


def test_a_completed_order_costs_its_price() -> None:
    result = order_result(item(amount="50"), order())
    assert (result.status, result.order_id) == ("succeeded", "ord_1")
    assert (result.cost, result.cost_currency) == (Decimal("48.75"), "GBP")
    assert result.voucher_code is None  # the list carries no redemption


def test_a_cross_currency_order_costs_the_total_charged_in_the_payment_currency() -> None:
    fx = {
        "rate": Decimal("1.2700"),
        "fee_percentage": Decimal("1"),
        "fee_amount": Decimal("0.62"),
        "total_charged": Decimal("62.53"),
        "currency": "USD",
    }
    result = order_result(item(amount="50", paying="USD"), order(payment_currency="USD", fx_fee=fx))
    assert (result.cost, result.cost_currency) == (Decimal("62.53"), "USD")
    assert result.extra["fx_fee_amount"] == "0.62" and result.extra["price_currency"] == "GBP"


def test_without_a_total_the_fx_cost_is_converted_price_plus_fee() -> None:
    fx = {"rate": Decimal("1.27"), "fee_amount": Decimal("0.62"), "currency": "USD"}
    cost = order_cost(order(price=Decimal("48.75"), fx_fee=fx))
    assert cost == (Decimal("61.91") + Decimal("0.62"), "USD")  # 48.75 x 1.27 = 61.9125


def test_redemption_details_are_one_code_and_one_link_kept_out_of_repr() -> None:
    full = order(redemption={"code": "CODE-1234-5678", "pin": "987654", "link": "https://r/x"})
    result = order_result(item(), full)
    assert result.voucher_code == "CODE-1234-5678 / PIN 987654"
    assert result.redemption_url == "https://r/x"
    assert "CODE-1234" not in repr(result) and "https://r/x" not in repr(result)
    redemption = parse_redemption(full)
    assert (redemption.order_id, redemption.voucher_code) == ("ord_1", result.voucher_code)
    assert "CODE" not in repr(redemption) and "987654" not in repr(redemption)
    serial_only = parse_redemption(order(redemption={"serial": "0042", "security_code": "123"}))
    assert serial_only.voucher_code == "0042 / security code 123"
    assert parse_redemption(order()).voucher_code is None


def test_failed_and_pending_orders() -> None:
    failed = order_result(item(), order(status="failed", failure_reason="Supplier timeout"))
    assert (failed.status, failed.error_code, failed.error_message) == (
        "failed",
        "request_failed",
        "Supplier timeout",
    )
    pending = order_result(item(), order(status="pending", price=None))
    assert pending.status == "pending" and pending.cost is None


@pytest.mark.parametrize(
    ("status", "message", "code"),
    [
        (422, "Insufficient balance in USD wallet", "insufficient_funds"),
        (422, "Reference already used with different parameters", "idempotency_key_reused"),
        (422, "Out of stock for this face value", "out_of_stock"),
        (422, "No product matches brand, country, currency and face value", "validation_error"),
        (404, "Not found", "not_found"),
        (418, "teapot", "http_418"),
    ],
)
def test_rejection_codes(status: int, message: str, code: str) -> None:
    assert rejection_code(status, message) == code


def payout(n: int, amount: str, status: str = "sent", email: str | None = None) -> dict[str, Any]:
    return {
        "id": f"pay_{n}",
        "payout_order_id": "po_1",
        "email": email or f"PERSON{n}@example.com",
        "amount": Decimal(amount),
        "currency": "GBP",
        "status": status,
        "created_at": f"2025-01-01T10:00:{n:02d}Z",
    }


def test_payouts_map_back_by_email_and_amount() -> None:
    items = [item(1, amount="10"), item(2, amount="20"), item(3, amount="30")]
    payouts = [payout(3, "30.00", "redeemed"), payout(1, "10"), payout(2, "20.0", "failed")]
    mapped = map_payouts(payouts, items, wallet_currency="GBP")
    assert [r.row_key for r in mapped] == ["row1", "row2", "row3"]
    assert [(r.status, r.provider_status, r.order_id) for r in mapped] == [
        ("succeeded", "sent", "pay_1"),
        ("failed", "failed", "pay_2"),
        ("succeeded", "redeemed", "pay_3"),
    ]
    assert (mapped[0].cost, mapped[0].cost_currency) == (Decimal("10"), "GBP")


def test_payouts_equal_on_email_and_amount_prefer_the_same_name_then_pair_in_order() -> None:
    same = "twin@example.com"
    items = [item(1, email=same, name="Ann"), item(2, email=same, name="Bo")]
    unnamed = [payout(7, "25", email=same), payout(8, "25", email=same)]
    mapped = map_payouts(unnamed, items, wallet_currency="GBP")
    assert [r.order_id for r in mapped] == ["pay_7", "pay_8"]  # listing order
    named = [dict(unnamed[0], name="bo"), dict(unnamed[1], name="Ann ")]
    mapped = map_payouts(named, items, wallet_currency="GBP")
    assert [r.order_id for r in mapped] == ["pay_8", "pay_7"]


def test_the_shortfall_is_read_from_the_balance_message() -> None:
    message = "Insufficient balance: 1,062.53 USD required, 10.00 USD available"
    assert shortfall(message) == ("USD", Decimal("1062.53"), Decimal("10.00"))
    assert shortfall("Insufficient balance") is None


def test_payouts_that_do_not_add_up_are_incomplete() -> None:
    items = [item(1, amount="10"), item(2, amount="20")]
    with pytest.raises(IncompleteResult) as caught:
        map_payouts([payout(1, "10"), payout(9, "99")], items, wallet_currency="GBP")
    assert [r.row_key for r in caught.value.items] == ["row1"]


# ---------------------------------------------------------------------------
# Parsing


def test_each_brand_option_is_a_product() -> None:
    brand = {
        "brand": "apple",
        "title": "Apple",
        "categories": ["tech"],
        "countries": ["US", "GB"],
        "products": [
            {"id": 1, "min_face_value": Decimal("25.00"), "max_face_value": Decimal("25.00"),
             "currency": "USD", "discount": Decimal("3.0"), "stock_count": None, "countries": ["US"]},
            {"id": 2, "min_face_value": "5", "max_face_value": "100", "currency": "gbp",
             "discount": -2, "stock_count": 0, "countries": []},
        ],
    }  # fmt: skip
    fixed, ranged = parse_brand(brand)
    assert (fixed.product_code, fixed.currency, fixed.denominations) == (
        "apple",
        "USD",
        (Decimal("25.00"),),
    )
    assert fixed.countries == ("US",) and fixed.is_active and fixed.discount == Decimal("3.0")
    assert ranged.denominations == () and (ranged.min_value, ranged.max_value) == (5, 100)
    assert ranged.countries == ("US", "GB")  # the brand's, when the option names none
    assert not ranged.is_active and ranged.discount == Decimal(-2)
    assert ranged.currency == "GBP" and fixed.category == "tech"


def test_transactions_keep_their_sign_and_type() -> None:
    tx = parse_transaction(
        {"id": 7, "type": "fx_fee", "amount": "-0.62", "currency": "USD", "order_id": "ord_1",
         "reference": KEY, "balance_after": "10.00", "created_at": "2025-01-01T10:00:00Z"}
    )  # fmt: skip
    assert (tx.transaction_type, tx.amount, tx.currency, tx.order_id, tx.reference) == (
        "fx_fee",
        Decimal("-0.62"),
        "USD",
        "ord_1",
        KEY,
    )
    payout_tx = parse_transaction(
        {"id": 8, "type": "payout", "amount": -100, "currency": "GBP", "payout_order_id": "po_1"}
    )
    assert (payout_tx.amount, payout_tx.order_id) == (Decimal(-100), "po_1")


def test_the_account_id_is_a_stable_fingerprint_without_the_token() -> None:
    first = account_fingerprint("https://api.gifq.com/api", SECRET)
    assert first == account_fingerprint("https://api.gifq.com/api/", SECRET)
    assert first != account_fingerprint("https://api.gifq.com/api", SECRET + "x")
    assert SECRET not in first and first.startswith("gifq-")
    # The URL's spelling is not the account: only the token and the environment are.
    local = account_fingerprint("http://127.0.0.1:8123/api", SECRET)
    assert local == account_fingerprint("http://localhost:9000/api/", SECRET)
    assert local == account_fingerprint("https://api-sandbox.gifq.com/api", SECRET)
    assert first == account_fingerprint("https://API.gifq.com/api", SECRET)
    assert local != first  # a token valid in both environments is two accounts


# ---------------------------------------------------------------------------
# Poll economy, over a mock GIFQ (the sandbox's timing cannot be controlled)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class MockGifq:
    """Orders newest first, paged by 20; every request is recorded."""

    def __init__(self, count: int) -> None:
        self.orders = [
            {"id": f"ord_{i}", "reference": f"ref-{i}", "status": "pending", "brand": "amazon",
             "currency": "GBP", "face_value": "10.00", "price": "9.75", "country": "GB",
             "created_at": f"2025-01-01T10:{i // 60:02d}:{i % 60:02d}Z"}
            for i in range(count)
        ]  # fmt: skip
        self.requests: list[httpx.Request] = []
        self.busy = 0  # orders someone else creates just before each list page is read

    def complete(self, *indexes: int) -> None:
        for index in indexes:
            self.orders[index]["status"] = "completed"

    def create(self, count: int, status: str = "pending") -> None:
        """`count` more orders on top of the list (this client's or anyone's)."""
        for _ in range(count):
            i = len(self.orders)
            self.orders.append(
                {"id": f"ord_{i}", "reference": f"ref-{i}", "status": status, "brand": "amazon",
                 "currency": "GBP", "face_value": "10.00", "price": "9.75", "country": "GB",
                 "created_at": f"2025-01-01T{10 + i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z"}
            )  # fmt: skip

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert request.headers["X-Api-Token"] == SECRET
        path = request.url.path.removeprefix("/api")
        if path == "/orders":
            self.create(self.busy, status="completed")
            query = parse_qs(request.url.query.decode())
            page, limit = int(query["page"][0]), int(query["limit"][0])
            assert limit <= PAGE_LIMIT
            newest = list(reversed(self.orders))
            chunk = newest[(page - 1) * limit : page * limit]
            pages = max(1, -(-len(newest) // limit))
            return httpx.Response(200, json=chunk, headers={"total-pages": str(pages)})
        if path.startswith("/orders/"):
            wanted = path.rsplit("/", 1)[1]
            found = [o for o in self.orders if o["id"] == wanted]
            return httpx.Response(200, json=found[0]) if found else httpx.Response(404)
        if path == "/balances":
            return httpx.Response(401, json={"message": "Unauthorized", "status": "error"})
        raise AssertionError(f"unexpected {request.method} {path}")

    def client(self, clock: FakeClock) -> GifqOrders:
        return GifqOrders(
            settings("http://gifq.test/api"),
            transport=httpx.MockTransport(self.handler),
            limiter=fast_limiter(),
            clock=clock,
            refresh_seconds=2.0,
        )

    def lists(self) -> int:
        return sum(1 for r in self.requests if r.url.path == "/api/orders")

    def gets(self) -> int:
        return sum(1 for r in self.requests if r.url.path.startswith("/api/orders/"))


def poll_item(index: int) -> list[OrderItem]:
    return [item(index)]


def test_one_list_call_answers_twenty_polls() -> None:
    gifq, clock = MockGifq(20), FakeClock()
    gifq.complete(*range(20))
    client = gifq.client(clock)
    results = [client.poll(f"ord_{i}", poll_item(i)) for i in range(20)]
    assert {r.kind for r in results} == {"completed"}
    assert (gifq.lists(), gifq.gets()) == (1, 0)


def test_a_fresh_board_answers_pending_without_a_call() -> None:
    gifq, clock = MockGifq(5), FakeClock()
    client = gifq.client(clock)
    assert client.poll("ord_4", poll_item(4)).kind == "pending"
    gifq.complete(4)
    clock.now += 0.3
    assert client.poll("ord_4", poll_item(4)).kind == "pending"  # read 0.3 s ago
    assert gifq.lists() == 1
    clock.now += 0.3
    assert client.poll("ord_4", poll_item(4)).kind == "completed"
    assert (gifq.lists(), gifq.gets()) == (2, 0)


def create_pending(
    board: OrderBoard,
    clock: FakeClock,
    name: str,
    numbers: range,
    *,
    apart: float = 0.0,
    wait_first: bool = False,
) -> None:
    """Tell `board` of pending orders `name_n` created `apart` seconds from one another
    (the wait before each one, or after it)."""
    for n in numbers:
        if wait_first:
            clock.now += apart
        board.created(order(id=f"{name}_{n}", status="pending"))
        if not wait_first:
            clock.now += apart


def test_the_board_is_read_again_when_its_last_page_would_be_nearly_full() -> None:
    clock = FakeClock()
    board = OrderBoard(clock=clock)
    board.refreshing()
    create_pending(board, clock, "new", range(3), apart=0.4)
    assert not board.stale(2.0)  # orders are still being created: wait for more
    clock.now += 0.2
    assert board.stale(2.0)  # none for 0.6 s: the run's tail, read again now
    board.refreshing()
    board.read_showed(2)  # the read showed two awaited orders not final: read them again
    create_pending(board, clock, "more", range(19))
    assert board.depth() == 21 and not board.stale(2.0)  # two pages, the second nearly empty
    create_pending(board, clock, "last", range(16))
    assert board.depth() == 37 and not board.stale(2.0)
    board.created(order(id="last_16", status="pending"))
    assert board.depth() == 38 and board.stale(2.0)  # two nearly full pages
    board.refreshing()
    board.read_showed(0)
    create_pending(board, clock, "next", range(45))
    assert board.depth() == 46 and not board.stale(2.0)  # three pages, the third not full
    create_pending(board, clock, "then", range(12))
    assert board.depth() == 58 and board.stale(2.0)


def test_while_orders_are_created_the_board_says_when_its_next_read_is_due() -> None:
    clock = FakeClock()
    board = OrderBoard(clock=clock)
    board.refreshing()
    board.read_showed(1)
    # 10 orders a second
    create_pending(board, clock, "new", range(10), apart=0.1, wait_first=True)
    # 11 deep after 1 s: 39 deep (two nearly full pages) in 2.8 s, but max_age comes first
    assert board.read_due_in(2.0) == pytest.approx(1.0)
    create_pending(board, clock, "new", range(10, 20), apart=0.1, wait_first=True)
    assert board.read_due_in(2.0) == pytest.approx(1.8)  # 21 deep: 39 in 1.8 s
    create_pending(board, clock, "new", range(20, 38), apart=0.1, wait_first=True)
    assert board.stale(2.0) and board.read_due_in(2.0) is None  # 39 deep: due now


def test_a_board_with_more_than_a_page_to_read_waits_twice_max_age_at_most() -> None:
    clock = FakeClock()
    board = OrderBoard(clock=clock)
    board.refreshing()
    create_pending(board, clock, "new", range(25), apart=0.15)
    assert not board.stale(2.0)  # 26 deep after 3.75 s: not full, not yet 4 s old
    clock.now += 0.3
    assert board.stale(2.0)


def test_a_read_goes_down_to_every_order_created_since_the_last() -> None:
    """More orders created since the last read than `scan_pages` pages hold: the read
    still reaches them all on the list (a page is 20 of them), none is fetched by id."""
    gifq, clock = MockGifq(5), FakeClock()
    client = gifq.client(clock)
    assert client.poll("ord_4", poll_item(4)).kind == "pending"  # the first read
    for _ in range(75):
        gifq.create(1)
        client.board.created(gifq.orders[-1])
        clock.now += 0.01
    gifq.complete(*range(80))
    gifq.requests.clear()
    clock.now += 4.5  # past twice max_age
    assert client.poll("ord_5", poll_item(5)).kind == "completed"
    assert (gifq.lists(), gifq.gets()) == (4, 0)  # 80 orders: 4 pages, no GET by id
    others = [i for i in range(80) if i != 5]
    assert all(client.poll(f"ord_{i}", poll_item(i)).kind == "completed" for i in others)
    assert (gifq.lists(), gifq.gets()) == (4, 0)


def test_in_the_runs_tail_a_pending_from_memory_says_when_the_board_may_be_read() -> None:
    gifq, clock = MockGifq(3), FakeClock()
    client = gifq.client(clock)
    assert client.poll("ord_2", poll_item(2)).ask_again_in is None  # a read: back off as usual
    gifq.create(1)
    client.board.created(gifq.orders[-1])
    clock.now += 0.1
    creating = client.poll("ord_2", poll_item(2))  # orders being created: ask when a read is due
    assert creating.from_cache and creating.ask_again_in == pytest.approx(1.9)
    clock.now += 0.5
    read = client.poll("ord_1", poll_item(1))  # stale: read, pending
    assert read.ask_again_in is None and read.news_for_others  # the others may be answered
    clock.now += 0.2
    tail = client.poll("ord_1", poll_item(1))
    assert tail.from_cache and tail.ask_again_in == pytest.approx(0.3)
    assert not tail.news_for_others


def test_the_runs_tail_begins_sooner_once_orders_were_seen_to_settle_fast() -> None:
    clock = FakeClock()
    board = OrderBoard(clock=clock)
    board.refreshing()
    board.created(order(id="new_1", status="pending"))
    clock.now += 0.3
    assert board.tail_age() == 0.5 and not board.stale(2.0)  # nothing seen settle yet
    board.refreshing()
    board.seen_not_final("new_1")  # a read showed it pending at 0.3 s old
    assert board.tail_age() == pytest.approx(0.3 * 1.25 + 0.05)
    board.created(order(id="new_2", status="pending"))
    clock.now += 0.42
    assert not board.stale(2.0) and board.idle_read_in() is None  # may still be sending
    clock.now += 0.01
    assert board.stale(2.0) and board.idle_read_in() == 0.0  # 0.43 s idle: the tail
    board.seen_not_final("new_2")  # seen pending at 0.43 s old: no sooner than 0.5 s
    assert board.tail_age() == 0.5
    fast = OrderBoard(clock=clock)
    fast.created(order(id="quick", status="pending"))
    clock.now += 0.01
    fast.seen_not_final("quick")
    assert fast.tail_age() == 0.25  # never sooner than a quarter second


def test_a_created_order_is_awaited_before_its_first_poll() -> None:
    """So the read that answers one poll in a run's tail reaches every order still pending."""
    board = OrderBoard(clock=FakeClock())
    board.created(order(id="new_1", status="pending"))
    assert board.waiting() == {"new_1"}
    board.remember(order(id="new_1", status="completed"))
    assert board.waiting() == set()


def test_an_order_beyond_the_first_pages_is_fetched_by_id() -> None:
    gifq, clock = MockGifq(100), FakeClock()
    gifq.complete(0)
    client = gifq.client(clock)
    assert client.poll("ord_0", poll_item(0)).kind == "completed"  # the oldest order
    assert (gifq.lists(), gifq.gets()) == (3, 1)  # SCAN_PAGES pages, then GET /orders/ord_0
    gifq.requests.clear()
    gifq.complete(99)
    clock.now += 5
    assert client.poll("ord_99", poll_item(99)).kind == "completed"
    assert (gifq.lists(), gifq.gets()) == (1, 0)


def test_an_order_known_to_be_old_goes_straight_to_get_by_id() -> None:
    gifq, clock = MockGifq(100), FakeClock()
    client = gifq.client(clock)
    assert client.poll("ord_1", poll_item(1)).kind == "pending"
    gifq.requests.clear()
    clock.now += 5
    gifq.complete(1)
    assert client.poll("ord_1", poll_item(1)).kind == "completed"
    assert (gifq.lists(), gifq.gets()) == (0, 1)


EPOCH = datetime(2025, 1, 1, 10, 0, tzinfo=UTC)


def listed(orders: list[Any]) -> list[tuple[str, str, str | None]]:
    return sorted((o.order_id, o.status, o.reference) for o in orders)


def test_a_listing_after_polls_reads_only_what_the_polls_did_not_show_final() -> None:
    gifq, clock = MockGifq(15), FakeClock()
    gifq.complete(*range(15))
    client = gifq.client(clock)
    assert client.poll("ord_14", poll_item(14)).kind == "completed"  # page 1 is the whole list
    for _ in range(3):  # a run's polls: each read of page 1 reaches the one before
        gifq.create(16, status="completed")
        clock.now += 5
        newest = len(gifq.orders) - 1
        assert client.poll(f"ord_{newest}", poll_item(newest)).kind == "completed"
    gifq.create(2)  # not seen by any poll yet
    gifq.orders[40]["status"] = "pending"  # seen pending by its last read: read again by id
    client.listed.update(gifq.orders[40])
    gifq.orders[40]["status"] = "failed"
    gifq.requests.clear()
    found = client.orders(EPOCH)
    fresh = gifq.client(FakeClock()).orders(EPOCH)
    assert listed(found) == listed(fresh) and len(found) == 65
    assert next(o.status for o in found if o.order_id == "ord_40") == "failed"
    assert (gifq.lists(), gifq.gets()) == (4 + 1, 1)  # the fresh client's 4 pages, and ours: 1


def test_a_listing_reads_below_what_was_listed_down_to_its_start() -> None:
    gifq, clock = MockGifq(100), FakeClock()
    client = gifq.client(clock)
    assert client.poll("ord_99", poll_item(99)).kind == "pending"  # page 1 only: 80..99
    since = EPOCH + timedelta(seconds=30)
    gifq.complete(*range(100))
    gifq.create(3, status="completed")
    found = client.orders(since, EPOCH + timedelta(seconds=101))
    fresh = gifq.client(FakeClock()).orders(since, EPOCH + timedelta(seconds=101))
    assert listed(found) == listed(fresh)
    assert {o.order_id for o in found} == {f"ord_{i}" for i in range(30, 102)}


def test_a_read_reaching_below_what_was_listed_extends_it_down() -> None:
    gifq, clock = MockGifq(50), FakeClock()
    gifq.complete(*range(50))
    client = gifq.client(clock)
    assert client.poll("ord_49", poll_item(49)).kind == "completed"  # page 1: 30..49
    assert client.lookup(KEY, [item()]) is None  # pages 1 to 3: the whole list
    gifq.requests.clear()
    assert listed(client.orders(EPOCH)) == listed(gifq.client(FakeClock()).orders(EPOCH))
    assert gifq.lists() == 1 + 3  # ours: page 1; the fresh client's: all 3


def test_a_poll_reads_on_until_it_reaches_the_newest_order_it_read_before() -> None:
    gifq, clock = MockGifq(5), FakeClock()
    gifq.complete(*range(5))
    client = gifq.client(clock)
    client.poll("ord_4", poll_item(4))
    gifq.create(25, status="completed")  # ord_4 is now on page 2
    clock.now += 5
    assert client.poll("ord_29", poll_item(29)).kind == "completed"
    assert gifq.lists() == 1 + 2  # page 1 had ord_29, page 2 reaches ord_4
    gifq.create(3, status="completed")
    clock.now += 5
    gifq.requests.clear()
    assert client.poll("ord_32", poll_item(32)).kind == "completed"
    assert gifq.lists() == 1  # page 1 reaches ord_29: no more
    gifq.requests.clear()
    assert len(client.orders(EPOCH)) == 33 and gifq.lists() == 1


def test_too_many_orders_from_elsewhere_and_the_listing_reads_everything() -> None:
    gifq, clock = MockGifq(10), FakeClock()
    client = gifq.client(clock)
    client.poll("ord_9", poll_item(9))
    gifq.create(120, status="completed")  # more than TOP_PAGES pages above what it read
    gifq.requests.clear()
    found = client.orders(EPOCH)
    assert listed(found) == listed(gifq.client(FakeClock()).orders(EPOCH))
    assert len(found) == 130


@pytest.mark.parametrize("seed", range(60))
def test_a_listing_from_what_was_listed_is_the_providers_whole_list(seed: int) -> None:
    """Random runs (creations by this client and by others, completions, failures,
    polls, lookups): the listing equals a fresh client's full listing, every time."""
    rnd = random.Random(seed)
    gifq, clock = MockGifq(rnd.randrange(0, 45)), FakeClock()
    client = gifq.client(clock)
    for _ in range(rnd.randrange(1, 80)):
        step = rnd.random()
        if step < 0.4:
            gifq.create(rnd.choice([1, 1, 1, 2, 3, 5, 19, 30]), rnd.choice(["pending", "failed"]))
        elif step < 0.6:  # orders settle, a few left pending
            for placed in gifq.orders:
                if placed["status"] == "pending" and rnd.random() < 0.9:
                    placed["status"] = rnd.choice(["completed", "completed", "failed"])
        elif step < 0.95 and gifq.orders:
            index = rnd.randrange(max(0, len(gifq.orders) - 50), len(gifq.orders))
            client.poll(f"ord_{index}", poll_item(index))
        elif step < 1.0:
            client.lookup(KEY, [item()])
        clock.now += rnd.choice([0.1, 0.6, 3.0])
    since = EPOCH + timedelta(seconds=rnd.randrange(0, 40))
    gifq.busy = rnd.choice([0, 0, 1, 7, 19])  # others order while the listing reads pages
    before = {placed["id"] for placed in gifq.orders[since.second :]}
    found = client.orders(since)
    gifq.busy = 0
    fresh = listed(gifq.client(FakeClock()).orders(since))
    assert before <= {o.order_id for o in found}  # every order there when it began
    assert set(listed(found)) <= set(fresh)  # each as the provider shows it, and only once
    assert len({o.order_id for o in found}) == len(found)


def test_a_refused_token_is_an_auth_error_naming_no_secret() -> None:
    client = MockGifq(0).client(FakeClock())
    with pytest.raises(AuthError) as caught:
        client.account()
    assert SECRET not in str(caught.value)
    assert "GIFQ_API_TOKEN" in str(caught.value)


def test_the_board_forgets_redemption_details() -> None:
    board = OrderBoard(clock=FakeClock())
    board.remember(order(redemption={"code": "SECRET-CODE"}))
    assert "redemption" not in (board.get("ord_1") or {})


ResponseFor = Callable[[httpx.Request], httpx.Response]


def mock_orders_client(respond: ResponseFor) -> GifqOrders:
    return GifqOrders(
        settings("http://gifq.test/api"),
        transport=httpx.MockTransport(respond),
        limiter=fast_limiter(),
    )


def test_a_422_keeps_its_request_id() -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        body = {"message": "No product matches", "status": "error", "request_id": "req_42"}
        return httpx.Response(422, json=body)

    client = mock_orders_client(respond)
    payload = client.encode(KEY, [item()])
    result = client.submit(KEY, payload, [item()])
    assert (result.kind, result.error_code, result.provider_request_id) == (
        "rejected",
        "validation_error",
        "req_42",
    )


def test_provider_text_echoing_the_token_is_scrubbed() -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        body = {"message": f"token {SECRET} may not order this", "status": "error"}
        return httpx.Response(422, json=body, headers={"X-Request-Id": "req-7"})

    client = mock_orders_client(respond)
    result = client.submit(KEY, client.encode(KEY, [item()]), [item()])
    assert SECRET not in result.error_message and "***" in result.error_message
    assert result.provider_request_id == "req-7"  # from the header when the body has none


class MockPayouts:
    """GIFQ payout orders whose first POST is cut off after (or before) it is acted on."""

    def __init__(self, *, created_before_drop: bool) -> None:
        self.created_before_drop = created_before_drop
        self.orders: list[dict[str, Any]] = []
        self.payouts: list[dict[str, Any]] = []
        self.posts = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/api")
        if request.method == "POST" and path == "/payout-orders":
            self.posts += 1
            body = parse_json(request.content)
            if self.posts > 1 or self.created_before_drop:
                self.orders.insert(0, self.payout_order(body))
            if self.posts == 1:
                raise httpx.RemoteProtocolError("connection dropped", request=request)
            return httpx.Response(202, json={"id": self.orders[0]["id"], "status": "queued"})
        if path == "/payout-orders":
            return httpx.Response(200, content=canonical_json(self.orders))
        if path == "/payouts":
            wanted = request.url.params.get("payout_order_id")
            listed = [p for p in self.payouts if p["payout_order_id"] == wanted]
            return httpx.Response(200, content=canonical_json(listed))
        raise AssertionError(f"unexpected {request.method} {path}")

    def payout_order(self, body: dict[str, Any]) -> dict[str, Any]:
        total = sum((Decimal(r["amount"]) for r in body["recipients"]), Decimal(0))
        order_id = f"po_{len(self.orders) + 1}"
        self.payouts += [
            {"id": f"{order_id}-{i}", "payout_order_id": order_id, "status": "sent", **r}
            for i, r in enumerate(body["recipients"])
        ]
        return {
            "id": order_id,
            "campaign_id": int(body["campaign_id"]),
            "status": "completed",  # settled: its recipients can be compared
            "recipient_count": len(body["recipients"]),
            "total_amount": str(total),
            "wallet_currency": body["wallet_currency"],
            "created_at": datetime.now(UTC).isoformat(),
        }


@pytest.mark.parametrize("created", [True, False], ids=["created", "never-created"])
def test_a_payout_order_is_resent_only_after_a_lookup_says_it_is_not_there(created: bool) -> None:
    gifq = MockPayouts(created_before_drop=created)
    options = ProviderOptions(mode="payouts", campaign_id="101", expires_in_days=5)
    client = GifqPayouts(
        settings("http://gifq.test/api"),
        options=options,
        transport=httpx.MockTransport(gifq.handler),
        limiter=fast_limiter(),
    )
    items = [item(1), item(2, amount="30")]
    payload = client.encode(KEY, items)
    with pytest.raises(OutcomeUnknown):
        client.submit(KEY, payload, items)
    again = client.submit(KEY, payload, items)  # the runner's resend, same key and bytes
    assert (again.kind, again.request_id) == ("accepted", "po_1")
    assert gifq.posts == (1 if created else 2)
    assert len(gifq.orders) == 1


def test_a_replayed_reference_answers_with_the_existing_order() -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        assert parse_json(request.content)["reference"] == KEY
        return httpx.Response(200, content=canonical_json(order(status="completed")))

    client = mock_orders_client(respond)
    result = client.submit(KEY, client.encode(KEY, [item()]), [item()])
    assert result.kind == "completed" and result.items[0].order_id == "ord_1"


def test_transactions_stop_early_only_once_the_list_shows_newest_first() -> None:
    def tx(n: int, minute: int) -> dict[str, Any]:
        stamp = f"2025-01-01T10:{minute:02d}:00Z"
        return {"id": n, "type": "order", "amount": "-1.00", "currency": "GBP", "created_at": stamp}

    def serve(records: list[dict[str, Any]]) -> tuple[GifqOrders, list[int]]:
        pages: list[int] = []

        def respond(request: httpx.Request) -> httpx.Response:
            page = int(parse_qs(request.url.query.decode())["page"][0])
            pages.append(page)
            body = records[(page - 1) * 20 : page * 20]
            total = max(1, -(-len(records) // 20))
            return httpx.Response(200, json=body, headers={"total-pages": str(total)})

        return mock_orders_client(respond), pages

    newest_first = [tx(n, 59 - n // 2) for n in range(100)]  # minutes 59 down to 10
    client, pages = serve(newest_first)
    since = datetime(2025, 1, 1, 10, 50, tzinfo=UTC)
    found = client.transactions(since)
    assert len(found) == 20 and pages == [1, 2]  # page 2 lies wholly before `since`

    oldest_first = list(reversed(newest_first))
    client, pages = serve(oldest_first)
    assert len(client.transactions(since)) == 20 and pages == [1, 2, 3, 4, 5]

    same_time = [tx(n, 0) for n in range(30)] + [tx(99, 55)]  # no order shown on page 1
    client, pages = serve(same_time)
    assert [t.transaction_id for t in client.transactions(since)] == ["99"] and pages == [1, 2]


# ---------------------------------------------------------------------------
# Against the real GIFQ sandbox


@pytest.fixture
def make_gifq() -> Iterator[Callable[..., SandboxHandle]]:
    with ExitStack() as stack:

        def make(**overrides: Any) -> SandboxHandle:
            config = {"async_delay_seconds": 0.05, **overrides}
            return stack.enter_context(running_sandbox("gifq", **config))

        yield make


@pytest.fixture
def gifq_sandbox(make_gifq: Callable[..., SandboxHandle]) -> SandboxHandle:
    return make_gifq()


def orders_client(sandbox: SandboxHandle, **kwargs: Any) -> GifqOrders:
    return GifqOrders(settings(sandbox.base_url, sandbox.api_key), **kwargs)


def payouts_client(sandbox: SandboxHandle, campaign: str = "101") -> GifqPayouts:
    options = ProviderOptions(mode="payouts", campaign_id=campaign, expires_in_days=5)
    return GifqPayouts(settings(sandbox.base_url, sandbox.api_key), options=options)


def wait_until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def completed(client: GifqOrders, order_id: str, it: OrderItem) -> PollResult:
    def poll() -> PollResult | None:
        result = client.poll(order_id, [it])
        return result if result.kind != "pending" else None

    return wait_until(poll)


def logged_limits(sandbox: SandboxHandle) -> list[int]:
    log = sandbox.control("GET", "/stats")["log"]
    return [
        int(value)
        for entry in log
        for key, _, value in (part.partition("=") for part in entry["query"].split("&"))
        if key == "limit"
    ]


def test_catalog_pages_through_every_brand_with_at_most_twenty(gifq_sandbox: SandboxHandle) -> None:
    client = orders_client(gifq_sandbox)
    products = client.catalog()
    brands = {p.product_code for p in products}
    assert len(brands) == 27 and "zalando" in brands and "adidas" in brands
    apple_usd = sorted(
        p.denominations for p in products if (p.product_code, p.currency) == ("apple", "USD")
    )
    assert apple_usd == [(Decimal("25.00"),), (Decimal("50.00"),), (Decimal("100.00"),)]
    fnac = [p for p in products if p.product_code == "fnac"]
    assert all(p.is_active for p in fnac)
    gifq_sandbox.control("PATCH", "/products/1070", json={"stock_count": 0})  # tesco
    (tesco,) = [p for p in client.catalog() if p.product_code == "tesco"]
    assert not tesco.is_active
    limits = logged_limits(gifq_sandbox)
    assert len(limits) == 4 and max(limits) <= 20


def test_account_proves_the_token_and_never_shows_it(
    make_gifq: Callable[..., SandboxHandle],
) -> None:
    sandbox = make_gifq(api_keys=(SECRET,))
    account = orders_client(sandbox).account()
    assert account.account_id == account_fingerprint(sandbox.base_url, SECRET)
    assert SECRET not in account.model_dump_json()
    wrong = GifqOrders(settings(sandbox.base_url, SECRET + "-wrong"))
    with pytest.raises(AuthError) as caught:
        wrong.account()
    assert SECRET not in str(caught.value) and caught.value.exit_code == 4


def test_an_order_completes_and_costs_its_price(gifq_sandbox: SandboxHandle) -> None:
    client = orders_client(gifq_sandbox)
    it = item(amount="40")  # amazon GB, 2.5% discount
    submitted = client.submit(KEY, client.encode(KEY, [it]), [it])
    assert submitted.kind == "accepted" and submitted.request_id
    done = completed(client, submitted.request_id, it)
    assert done.kind == "completed"
    (result,) = done.items
    assert (result.status, result.cost, result.cost_currency) == (
        "succeeded",
        Decimal("39.00"),
        "GBP",
    )
    replay = client.submit(KEY, client.encode(KEY, [it]), [it])
    assert replay.kind == "completed" and replay.request_id == submitted.request_id
    redemption = client.redemption(submitted.request_id)
    assert redemption is not None and redemption.voucher_code
    assert client.redemption("no-such-order") is None
    assert len(gifq_sandbox.control("GET", "/orders")["orders"]) == 1


def test_cross_currency_cost_ties_to_the_wallet_to_the_cent(gifq_sandbox: SandboxHandle) -> None:
    client = orders_client(gifq_sandbox)
    it = item(amount="33.33", paying="USD")  # price 32.50 GBP; x 1.27 = 41.2750 -> 41.28
    submitted = client.submit(KEY, client.encode(KEY, [it]), [it])
    assert submitted.request_id
    (result,) = completed(client, submitted.request_id, it).items
    converted = Decimal("41.28")
    fee = Decimal("0.41")  # 1% of 41.28 = 0.4128
    assert (result.cost, result.cost_currency) == (converted + fee, "USD")
    assert result.extra["price"] == "32.50" and result.extra["fx_rate"] == "1.27"
    moves = [t for t in client.transactions() if t.order_id == submitted.request_id]
    assert sorted((t.transaction_type, t.amount, t.currency) for t in moves) == [
        ("fx_fee", -fee, "USD"),
        ("order", -converted, "USD"),
    ]
    assert -sum(t.amount for t in moves) == result.cost
    (listed,) = client.orders(datetime.now(UTC) - timedelta(hours=1))
    assert (listed.reference, listed.cost, listed.product_code) == (KEY, result.cost, "amazon")


def test_a_422_is_rejected_with_its_request_id(gifq_sandbox: SandboxHandle) -> None:
    client = orders_client(gifq_sandbox)
    it = item(amount="600")  # amazon GB tops out at 500
    result = client.submit(KEY, client.encode(KEY, [it]), [it])
    assert (result.kind, result.error_code) == ("rejected", "validation_error")
    assert result.provider_request_id and "face value" in result.error_message
    other = item(amount="40")
    reused = client.submit(KEY, client.encode(KEY, [other]), [other])
    assert reused.kind == "accepted"  # a refused reference stays free
    clash = client.submit(KEY, client.encode(KEY, [item(amount="41")]), [item(amount="41")])
    assert (clash.kind, clash.error_code) == ("rejected", "idempotency_key_reused")


def test_short_funds_name_the_wallet_and_the_amounts(gifq_sandbox: SandboxHandle) -> None:
    gifq_sandbox.control("PUT", "/balances/USD", json={"amount": "10.00"})
    client = orders_client(gifq_sandbox)
    it = item(amount="33.33", paying="USD")
    result = client.submit(KEY, client.encode(KEY, [it]), [it])
    assert (result.kind, result.currency) == ("insufficient_funds", "USD")
    assert (result.required, result.available) == (Decimal("41.69"), Decimal("10.00"))
    assert result.provider_request_id
    assert not gifq_sandbox.control("GET", "/orders")["orders"]


def test_lookup_finds_the_order_behind_a_dropped_connection(
    make_gifq: Callable[..., SandboxHandle],
) -> None:
    sandbox = make_gifq(fault_drop=1.0, seed=5)
    client = orders_client(sandbox)
    it = item(amount="25")
    with pytest.raises(OutcomeUnknown):
        client.submit(KEY, client.encode(KEY, [it]), [it])
    found = client.lookup(KEY, [it])
    (order,) = sandbox.control("GET", "/orders")["orders"]
    assert found is not None and found.request_id == order["id"]
    assert client.lookup("b1-" + "f" * 40, [it]) is None
    sandbox.control("PATCH", "/faults", json={"drop": 0.0})
    again = client.submit(KEY, client.encode(KEY, [it]), [it])
    assert again.request_id == order["id"]
    assert len(sandbox.control("GET", "/orders")["orders"]) == 1


def test_payouts_lifecycle_maps_each_recipient_to_its_row(
    make_gifq: Callable[..., SandboxHandle],
) -> None:
    sandbox = make_gifq()
    client = payouts_client(sandbox)
    client.preflight()
    items = [item(n, amount=str(10 + n), name=f"R {n}") for n in range(1, 4)]
    accepted = client.submit(KEY, client.encode(KEY, items), items)
    assert accepted.kind == "accepted" and accepted.request_id
    result = wait_until(
        lambda: (r := client.poll(accepted.request_id or "", items)).kind == "completed" and r
    )
    payouts = {p["email"]: p for p in sandbox.control("GET", "/payouts")["payouts"]}
    assert [(r.row_key, r.order_id, r.provider_status, r.cost) for r in result.items] == [
        (i.row_key, payouts[i.recipient_email]["id"], "sent", i.amount) for i in items
    ]
    first = result.items[0].order_id
    sandbox.control("PATCH", f"/payouts/{first}", json={"status": "redeemed"})
    again = client.poll(accepted.request_id or "", items)
    assert again.items[0].provider_status == "redeemed"
    assert -sum(t.amount for t in client.transactions() if t.transaction_type == "payout") == 36
    listed = client.orders(datetime.now(UTC) - timedelta(hours=1))
    assert {p.order_id for p in listed} == {r.order_id for r in result.items}


def test_payout_lookup_before_any_resend(make_gifq: Callable[..., SandboxHandle]) -> None:
    sandbox = make_gifq(fault_drop=1.0, seed=9)
    client = payouts_client(sandbox)
    items = [item(n, amount=str(20 + n)) for n in range(1, 3)]
    with pytest.raises(OutcomeUnknown):
        client.submit(KEY, client.encode(KEY, items), items)
    (created,) = sandbox.control("GET", "/payout-orders")["payoutOrders"]
    fresh = payouts_client(sandbox)  # a new run: nothing claimed yet
    found = fresh.lookup(KEY, items)
    assert found is not None and found.request_id == created["id"]
    assert fresh.lookup(KEY, items) is None  # one payout order answers one chunk only
    others = [item(n, amount="99") for n in range(1, 3)]
    assert payouts_client(sandbox).lookup(KEY, others) is None
    later = datetime.now(UTC) + timedelta(hours=1)
    assert payouts_client(sandbox).lookup(KEY, items, sent_after=later) is None
    assert len(sandbox.control("GET", "/payout-orders")["payoutOrders"]) == 1


def test_payout_lookup_refuses_to_guess_between_twins(gifq_sandbox: SandboxHandle) -> None:
    client = payouts_client(gifq_sandbox)
    items = [item(1, amount="15")]
    for key in ("b1-" + "1" * 40, "b1-" + "2" * 40):
        assert client.submit(key, client.encode(key, items), items).kind == "accepted"
    with pytest.raises(ProviderUnavailable, match="will not guess"):
        payouts_client(gifq_sandbox).lookup(KEY, items)


def test_failed_payout_orders_fail_their_rows(make_gifq: Callable[..., SandboxHandle]) -> None:
    sandbox = make_gifq(fault_payout_fail=1.0, seed=4)
    client = payouts_client(sandbox)
    items = [item(1), item(2, amount="30")]
    accepted = client.submit(KEY, client.encode(KEY, items), items)
    result = wait_until(
        lambda: (r := client.poll(accepted.request_id or "", items)).kind != "pending" and r
    )
    assert (result.kind, result.error_code) == ("failed", "request_failed")
    assert payouts_client(sandbox).lookup(KEY, items) is None  # refunded: a resend pays once


def test_payout_refusals(gifq_sandbox: SandboxHandle) -> None:
    gifq_sandbox.control("PUT", "/balances/GBP", json={"amount": "20.00"})
    client = payouts_client(gifq_sandbox)
    items = [item(1), item(2)]
    short = client.submit(KEY, client.encode(KEY, items), items)
    assert (short.kind, short.currency, short.required, short.available) == (
        "insufficient_funds", "GBP", Decimal("50.00"), Decimal("20.00"),
    )  # fmt: skip
    gifq_sandbox.control("PATCH", "/campaigns/101", json={"status": "paused"})
    key = "b1-" + "3" * 40
    paused = client.submit(key, client.encode(key, items), items)
    assert (paused.kind, paused.error_code) == ("rejected", "validation_error")
    assert paused.provider_request_id and "paused" in paused.error_message


@pytest.mark.parametrize(
    ("campaign", "words"),
    [("103", "is paused"), ("104", "is draft"), ("105", "is archived"), ("999", "does not exist")],
)
def test_the_campaign_must_be_active(
    gifq_sandbox: SandboxHandle, campaign: str, words: str
) -> None:
    payouts_client(gifq_sandbox, "101").preflight()
    with pytest.raises(UsageError, match=words) as caught:
        payouts_client(gifq_sandbox, campaign).preflight()
    assert caught.value.exit_code == 2


def test_no_list_call_ever_asks_for_more_than_twenty(gifq_sandbox: SandboxHandle) -> None:
    client = orders_client(gifq_sandbox)
    for n in range(25):
        key = f"b1-{n:040d}"
        client.submit(key, client.encode(key, [item(n, amount=str(10 + n))]), [item(n)])
    client.catalog()
    client.transactions()
    client.orders(datetime.now(UTC) - timedelta(days=1))
    client.lookup("b1-" + "e" * 40, [item()])
    payouts = payouts_client(gifq_sandbox)
    payouts.preflight()
    payouts.lookup(KEY, [item()])
    limits = logged_limits(gifq_sandbox)
    assert len(limits) >= 10 and set(limits) == {20}
