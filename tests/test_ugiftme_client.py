"""UGiftMe client: result mapping (pure), header variants the sandbox never sends
(via httpx.MockTransport), and everything else against the real sandbox."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import formatdate
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from batcher.config import PROFILES, ProviderSettings
from batcher.core.errors import AuthError, ProviderUnavailable
from batcher.providers.base import IncompleteResult, ItemResult, OrderItem, OutcomeUnknown
from batcher.providers.ugiftme import UGiftMeProvider, map_order_result, rejection_code
from batcher.sandbox.server import SandboxHandle
from batcher.transport.http import canonical_json
from batcher.transport.throttle import RateLimiter, forget_limiters

SECRET = "SECRET-KEY-0f9e8d7c-6b5a"


def item(n: int, product: str = "AMAZON_UK_STD", amount: str = "25", **extra: str) -> OrderItem:
    return OrderItem(
        row_key=f"row{n}",
        product_code=product,
        merchant="Amazon",
        currency="GBP",
        amount=Decimal(amount),
        recipient_email=extra.get("email", f"person{n}@example.com"),
        recipient_name=extra.get("name", f"Person {n}"),
    )


def created(source: OrderItem, **overrides: Any) -> dict[str, Any]:
    order: dict[str, Any] = {
        "_id": f"65f0000000000000000000{source.row_key[-2:].zfill(2)}",
        "productCode": source.product_code,
        "merchant": {
            "name": source.merchant,
            "voucherCode": f"VC-{source.row_key}",
            "redemptionUrl": f"https://redeem.example/{source.row_key}",
        },
        "currency": source.currency,
        "valuePurchased": source.amount,
        "status": "active",
        "giftOrder": {
            "recipientEmail": source.recipient_email,
            "recipientName": source.recipient_name,
        },
        "transactionId": "txn_" + "A" * 26,
    }
    order.update(overrides)
    return order


def no_cost(_code: str, _face: Decimal, _currency: str) -> Decimal | None:
    return None


# ---------------------------------------------------------------------------
# Result mapping


def test_created_orders_map_back_to_their_rows_in_any_order() -> None:
    items = [item(1), item(2, amount="50"), item(3, product="TESCO_UK")]
    result = {"orders": [created(items[2]), created(items[0]), created(items[1])]}
    mapped = map_order_result(result, items, cost_of=no_cost)
    assert [r.row_key for r in mapped] == ["row1", "row2", "row3"]
    assert all(r.status == "succeeded" for r in mapped)
    assert mapped[1].voucher_code == "VC-row2"
    assert mapped[1].redemption_url == "https://redeem.example/row2"
    assert mapped[0].transaction_id == "txn_" + "A" * 26


def test_matching_tolerates_number_formats_email_case_and_spacing() -> None:
    items = [item(1, amount="50", email="Ann@Example.com", name="Ann  Smith")]
    order = created(items[0], valuePurchased=Decimal("50.00"))
    order["giftOrder"] = {"recipientEmail": "ann@example.com", "recipientName": "Ann Smith"}
    (result,) = map_order_result({"orders": [order]}, items, cost_of=no_cost)
    assert result.status == "succeeded"


def test_cost_comes_from_the_catalog_discount() -> None:
    items = [item(1, amount="50")]

    def cost_of(code: str, face: Decimal, currency: str) -> Decimal | None:
        assert (code, face, currency) == ("AMAZON_UK_STD", Decimal("50"), "GBP")
        return Decimal("48.75")

    (result,) = map_order_result({"orders": [created(items[0])]}, items, cost_of=cost_of)
    assert (result.cost, result.cost_currency) == (Decimal("48.75"), "GBP")
    assert result.extra == {"cost_source": "catalog_discount"}


def test_rejections_without_index_fail_the_unmatched_item_of_that_product() -> None:
    items = [item(1), item(2, product="TESCO_UK"), item(3)]
    result = {
        "orders": [created(items[0])],
        "rejectedOrders": [
            {"productCode": "AMAZON_UK_STD", "reason": "Value not allowed"},
            {"productCode": "TESCO_UK", "reason": "Product is inactive"},
        ],
    }
    mapped = {r.row_key: r for r in map_order_result(result, items, cost_of=no_cost)}
    assert mapped["row1"].status == "succeeded"
    assert (mapped["row2"].status, mapped["row2"].error_message) == (
        "failed",
        "Product is inactive",
    )
    assert (mapped["row3"].status, mapped["row3"].error_message) == ("failed", "Value not allowed")
    assert mapped["row3"].error_code == "item_rejected"


def test_several_rejections_of_one_product_are_assigned_in_chunk_order() -> None:
    items = [item(1), item(2), item(3)]
    result = {
        "orders": [created(items[1])],
        "rejectedOrders": [
            {"productCode": "AMAZON_UK_STD", "reason": "first"},
            {"productCode": "AMAZON_UK_STD", "reason": "second"},
        ],
    }
    mapped = {r.row_key: r for r in map_order_result(result, items, cost_of=no_cost)}
    assert (mapped["row1"].error_message, mapped["row3"].error_message) == ("first", "second")


def test_a_single_order_result_is_the_order_itself() -> None:
    items = [item(1)]
    (result,) = map_order_result(created(items[0]), items, cost_of=no_cost)
    assert result.status == "succeeded"


@pytest.mark.parametrize(
    "result",
    [
        pytest.param(lambda items: {"orders": [created(items[0])]}, id="item-unaccounted"),
        pytest.param(
            lambda items: {
                "orders": [created(items[0]), created(items[1], productCode="OTHER")],
            },
            id="stray-order",
        ),
        pytest.param(
            lambda items: {
                "orders": [created(items[0]), created(items[1])],
                "rejectedOrders": [{"productCode": "AMAZON_UK_STD", "reason": "?"}],
            },
            id="stray-rejection",
        ),
        pytest.param(
            lambda items: {"orders": [created(items[0]), created(items[0]), created(items[1])]},
            id="duplicate-order",
        ),
    ],
)
def test_a_result_that_does_not_add_up_is_an_unknown_outcome_keeping_the_certain_matches(
    result: Callable[[list[OrderItem]], dict[str, Any]],
) -> None:
    items = [item(1), item(2)]
    with pytest.raises(IncompleteResult) as caught:
        map_order_result(result(items), items, cost_of=no_cost)
    assert isinstance(caught.value, OutcomeUnknown)
    certain = {r.row_key for r in caught.value.items}
    assert "row1" in certain
    assert all(r.status == "succeeded" for r in caught.value.items)
    assert "VC-" not in str(caught.value)


def test_item_results_keep_bearer_credentials_out_of_repr() -> None:
    result = ItemResult("row1", "succeeded", voucher_code="VC-SECRET", redemption_url="https://x/y")
    assert "VC-SECRET" not in repr(result)
    assert "https://x/y" not in repr(result)


def test_rejection_codes() -> None:
    reused = {"error": "Idempotency key reused with a different payload"}
    assert rejection_code(400, reused) == "idempotency_key_reused"
    assert rejection_code(400, {"error": "Unknown product"}) == "validation_error"
    assert rejection_code(404, {"error": "Not found"}) == "not_found"
    assert rejection_code(413, None) == "http_413"


# ---------------------------------------------------------------------------
# Header variants the sandbox never emits (httpx.MockTransport)


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.epoch = 1_700_000_000.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.epoch + self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def mock_provider(
    handler: Callable[[httpx.Request], httpx.Response], fake: FakeTime
) -> UGiftMeProvider:
    settings = ProviderSettings(
        "ugiftme",
        "https://api.example.test/api/v1/business",
        SecretStr(SECRET),
        PROFILES["ugiftme"],
    )
    limiter = RateLimiter(2, clock=fake.monotonic, wall_clock=fake.wall, sleep=fake.sleep)
    provider = UGiftMeProvider(settings, transport=httpx.MockTransport(handler), limiter=limiter)
    provider._discounts = {}  # no catalog round trip in these tests
    return provider


def test_x_ratelimit_headers_with_an_epoch_reset_pace_the_next_request() -> None:
    fake = FakeTime()
    sent_at: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent_at.append(fake.now)
        headers = {
            "X-RateLimit-Limit": "10",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(int(fake.epoch + 30)),
        }
        return httpx.Response(200, json={"businessId": "b1", "name": "Acme"}, headers=headers)

    provider = mock_provider(handler, fake)
    provider.account()
    provider.account()
    assert sent_at[0] == 0
    assert sent_at[1] >= 30  # waited for the window to reset, as the epoch said


def test_a_429_with_an_http_date_retry_after_is_waited_out_and_the_same_bytes_resent() -> None:
    fake = FakeTime()
    seen: list[tuple[float, bytes, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((fake.now, request.content, request.headers["Idempotency-Key"]))
        if len(seen) == 1:
            retry_at = formatdate(fake.epoch + fake.now + 9, usegmt=True)
            return httpx.Response(
                429, json={"error": "Too many requests"}, headers={"Retry-After": retry_at}
            )
        return httpx.Response(
            202,
            json={"orderRequestId": "65f000000000000000000abc", "status": "queued"},
            headers={"X-Account-Orders-Async": "true"},
        )

    provider = mock_provider(handler, fake)
    items = [item(1)]
    payload = provider.encode("b1-key", items)
    result = provider.submit("b1-key", payload, items)
    assert (result.kind, result.request_id) == ("accepted", "65f000000000000000000abc")
    assert len(seen) == 2
    assert seen[1][0] - seen[0][0] == pytest.approx(9)  # exactly as told, never sooner
    assert seen[0][1] == seen[1][1] == payload
    assert seen[0][2] == seen[1][2] == "b1-key"
    assert provider.limiter.stats().throttled == 1


def test_provider_text_echoing_the_key_is_scrubbed() -> None:
    fake = FakeTime()

    def handler(request: httpx.Request) -> httpx.Response:
        body = {"error": "Validation failed", "details": [f"bad header {SECRET}"]}
        return httpx.Response(400, json=body)

    provider = mock_provider(handler, fake)
    items = [item(1)]
    result = provider.submit("b1-key", provider.encode("b1-key", items), items)
    assert result.kind == "rejected"
    assert SECRET not in result.error_message
    assert "***" in result.error_message

    def unauthorised(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": "Invalid API key", "reason": f"{SECRET} unknown"})

    with pytest.raises(AuthError) as caught:
        mock_provider(unauthorised, fake).account()
    assert SECRET not in str(caught.value)


def test_money_in_responses_never_passes_through_float() -> None:
    fake = FakeTime()

    def handler(request: httpx.Request) -> httpx.Response:
        body = b'[{"currency":"GBP","balance":0.30000000000000004,"availableBalance":1234567.89}]'
        return httpx.Response(200, content=body, headers={"Content-Type": "application/json"})

    (balance,) = mock_provider(handler, fake).balances()
    assert balance.balance == Decimal("0.30000000000000004")
    assert balance.available == Decimal("1234567.89")


def test_canonical_json_matches_what_encode_sends() -> None:
    assert canonical_json({"b": [Decimal("1.50")], "a": "é"}) == '{"a":"é","b":[1.50]}'.encode()


# ---------------------------------------------------------------------------
# Against the real sandbox


SANDBOX_KEY = "SANDBOX-KEY-3c1d9e2a-7b7b-4f0e-9d55-d1e2f3a4b5c6"


@pytest.fixture
def sandbox(make_ugiftme_sandbox: Callable[..., SandboxHandle]) -> Iterator[SandboxHandle]:
    """A fresh sandbox per test; limiters are per key, so they start fresh too."""
    forget_limiters()
    yield make_ugiftme_sandbox(api_keys=(SANDBOX_KEY,))
    forget_limiters()


def settings_for(sandbox: SandboxHandle, key: str = SANDBOX_KEY) -> ProviderSettings:
    return ProviderSettings("ugiftme", sandbox.base_url, SecretStr(key), PROFILES["ugiftme"])


@pytest.fixture
def provider(sandbox: SandboxHandle) -> Iterator[UGiftMeProvider]:
    client = UGiftMeProvider(settings_for(sandbox))
    yield client
    client.close()


def sync_mode(sandbox: SandboxHandle) -> None:
    sandbox.control("PUT", "/mode", {"mode": "sync"})


def fast_async_mode(sandbox: SandboxHandle, delay: int = 1) -> None:
    """Async mode; a request spends `delay` seconds queued, then as long processing."""
    sandbox.control("PUT", "/mode", {"mode": "async", "asyncDelaySeconds": delay})


def requests_seen(sandbox: SandboxHandle, method: str, path: str) -> int:
    log = sandbox.control("GET", "/stats")["log"]
    return sum(1 for e in log if e["method"] == method and e["path"].endswith(path))


def order_items(*specs: tuple[str, str], currency: str = "GBP") -> list[OrderItem]:
    merchants = {"AMAZON_UK_STD": "Amazon UK", "TESCO_UK": "Tesco", "ARGOS_UK": "Argos"}
    return [
        OrderItem(
            row_key=f"row{n}",
            product_code=code,
            merchant=merchants[code],
            currency=currency,
            amount=Decimal(amount),
            recipient_email=f"person{n}@example.com",
            recipient_name=f"Person {n}",
            message="Thanks!",
        )
        for n, (code, amount) in enumerate(specs, start=1)
    ]


def poll_until_done(provider: UGiftMeProvider, request_id: str, items: list[OrderItem]) -> Any:
    deadline = time.monotonic() + 10
    seen = []
    while time.monotonic() < deadline:
        result = provider.poll(request_id, items)
        seen.append(result.kind)
        if result.kind != "pending":
            return result, seen
        time.sleep(0.05)
    raise AssertionError("the order request never finished")


def test_account(provider: UGiftMeProvider) -> None:
    account = provider.account()
    assert account.name == "Sandbox Trading Ltd"
    assert len(account.account_id) == 24
    assert (account.plan, account.status) == ("business", "verified")


def test_catalog_fetches_every_page(sandbox: SandboxHandle, provider: UGiftMeProvider) -> None:
    provider.page_limit = 10
    products = provider.catalog()
    assert len(products) == 38
    assert len({p.product_code for p in products}) == 38
    assert requests_seen(sandbox, "GET", "/products") == 4
    by_code = {p.product_code: p for p in products}
    argos = by_code["ARGOS_UK"]
    assert argos.denominations[:2] == (Decimal(5), Decimal(10))
    assert by_code["AMAZON_UK_STD"].discount == Decimal("2.5")
    assert by_code["SPOTIFY_UK"].discount == Decimal("-1.5")
    assert by_code["HMV_UK"].is_active is False
    assert by_code["AMAZON_UK_STD"].merchant == "Amazon UK"
    assert all(isinstance(p.discount, Decimal) for p in products)


def test_balances_show_holds_of_queued_orders(
    sandbox: SandboxHandle, provider: UGiftMeProvider
) -> None:
    before = {b.currency: b for b in provider.balances()}
    assert before["GBP"].balance == before["GBP"].available == Decimal("10000.00")
    sandbox.control("PUT", "/mode", {"mode": "async", "asyncDelaySeconds": 5})
    items = order_items(("AMAZON_UK_STD", "100"))
    provider.submit("b1-hold", provider.encode("b1-hold", items), items)
    gbp = {b.currency: b for b in provider.balances()}["GBP"]
    assert gbp.balance == Decimal("10000.00")
    assert gbp.available == Decimal("9902.50")  # 100 less the 2.5 % discount, on hold


def test_sync_bulk_maps_created_and_rejected_items(
    sandbox: SandboxHandle, provider: UGiftMeProvider
) -> None:
    sync_mode(sandbox)
    items = order_items(
        ("AMAZON_UK_STD", "25"),
        ("TESCO_UK", "7.5"),
        ("AMAZON_UK_STD", "5000"),  # above maxValue: rejected, without an index
        ("ARGOS_UK", "7"),  # not a denomination: rejected
    )
    result = provider.submit("b1-sync", provider.encode("b1-sync", items), items)
    assert result.kind == "completed"
    by_row = {r.row_key: r for r in result.items}
    assert [by_row[k].status for k in ("row1", "row2", "row3", "row4")] == [
        "succeeded",
        "succeeded",
        "failed",
        "failed",
    ]
    assert by_row["row3"].error_code == "item_rejected" and by_row["row3"].error_message
    created = {o["_id"]: o for o in sandbox.control("GET", "/orders")["orders"]}
    assert len(created) == 2
    for row in ("row1", "row2"):
        outcome = by_row[row]
        stored = created[outcome.order_id]
        assert stored["idempotencyKey"] == "b1-sync"
        assert outcome.voucher_code == stored["merchant"]["voucherCode"]
        assert outcome.redemption_url == stored["merchant"]["redemptionUrl"]
        assert outcome.transaction_id == stored["transactionId"]
        assert outcome.cost == Decimal(str(stored["cost"]))  # catalog discount == wallet charge
        assert outcome.cost_currency == "GBP"


def test_a_resend_with_the_same_key_and_bytes_is_replayed_not_reordered(
    sandbox: SandboxHandle, provider: UGiftMeProvider
) -> None:
    sync_mode(sandbox)
    items = order_items(("AMAZON_UK_STD", "10"), ("TESCO_UK", "20"))
    payload = provider.encode("b1-replay", items)
    first = provider.submit("b1-replay", payload, items)
    second = provider.submit("b1-replay", payload, items)
    assert [r.order_id for r in first.items] == [r.order_id for r in second.items]
    assert sandbox.control("GET", "/orders")["total"] == 2


def test_the_same_key_with_other_bytes_is_a_distinct_rejection(
    sandbox: SandboxHandle, provider: UGiftMeProvider
) -> None:
    sync_mode(sandbox)
    items = order_items(("AMAZON_UK_STD", "10"))
    provider.submit("b1-reuse", provider.encode("b1-reuse", items), items)
    other = order_items(("AMAZON_UK_STD", "11"))
    result = provider.submit("b1-reuse", provider.encode("b1-reuse", other), other)
    assert (result.kind, result.error_code) == ("rejected", "idempotency_key_reused")


def test_async_bulk_is_accepted_then_polled_to_completion(
    sandbox: SandboxHandle, provider: UGiftMeProvider
) -> None:
    fast_async_mode(sandbox)
    items = order_items(("AMAZON_UK_STD", "12.34"), ("TESCO_UK", "1"), ("ARGOS_UK", "25"))
    accepted = provider.submit("b1-async", provider.encode("b1-async", items), items)
    assert accepted.kind == "accepted" and accepted.request_id
    result, seen = poll_until_done(provider, accepted.request_id, items)
    assert seen[0] == "pending"
    assert result.kind == "completed"
    by_row = {r.row_key: r for r in result.items}
    assert by_row["row1"].status == by_row["row3"].status == "succeeded"
    assert by_row["row2"].status == "failed"  # TESCO_UK starts at 5.00
    assert by_row["row3"].cost == Decimal("24.25")  # 25 less 3 %


def test_a_failed_order_request_is_a_failed_poll(
    sandbox: SandboxHandle, provider: UGiftMeProvider
) -> None:
    fast_async_mode(sandbox)
    sandbox.control("PATCH", "/faults", {"async_fail": 1})
    items = order_items(("AMAZON_UK_STD", "10"))
    accepted = provider.submit("b1-fail", provider.encode("b1-fail", items), items)
    result, _ = poll_until_done(provider, accepted.request_id or "", items)
    assert (result.kind, result.error_code) == ("failed", "request_failed")
    assert "Upstream supplier error" in result.error_message


def test_an_unknown_order_request_is_an_unknown_outcome(provider: UGiftMeProvider) -> None:
    with pytest.raises(OutcomeUnknown, match="unknown to UGiftMe"):
        provider.poll("65f0000000000000000000ff", order_items(("AMAZON_UK_STD", "10")))


def test_insufficient_funds_reports_exact_amounts(
    sandbox: SandboxHandle, provider: UGiftMeProvider
) -> None:
    sync_mode(sandbox)
    sandbox.control("PUT", "/wallets/GBP", {"balance": "1.00"})
    items = order_items(("AMAZON_UK_STD", "10"), ("TESCO_UK", "20"))
    result = provider.submit("b1-402", provider.encode("b1-402", items), items)
    assert result.kind == "insufficient_funds"
    assert (result.currency, result.available) == ("GBP", Decimal("1.00"))
    assert result.required == Decimal("9.75") + Decimal("19.20")
    assert sandbox.control("GET", "/orders")["total"] == 0


def test_every_item_rejected_is_still_a_completed_result(
    sandbox: SandboxHandle, provider: UGiftMeProvider
) -> None:
    sync_mode(sandbox)
    sandbox.control("PATCH", "/faults", {"reject_item": 1})
    items = order_items(("AMAZON_UK_STD", "10"), ("AMAZON_UK_STD", "11"), ("TESCO_UK", "12"))
    result = provider.submit("b1-oos", provider.encode("b1-oos", items), items)
    assert result.kind == "completed"
    assert {(r.status, r.error_message) for r in result.items} == {("failed", "Out of stock")}


def test_a_429_under_a_tiny_rate_limit_is_waited_out(
    sandbox: SandboxHandle, provider: UGiftMeProvider
) -> None:
    # A window long enough that a pause on a loaded machine does not let it end
    # before the other client's request arrives (then no 429 would come at all).
    sandbox.control("PUT", "/rate-limit", {"limit": 1, "windowSeconds": 5})
    provider.account()  # this key's window is now used up
    # Another process with the same key knows nothing of that: it meets a 429.
    other = UGiftMeProvider(settings_for(sandbox), limiter=RateLimiter(2))
    started = time.monotonic()
    assert other.account().name == "Sandbox Trading Ltd"
    assert time.monotonic() - started >= 0.9  # waited as Retry-After said
    assert other.limiter.stats().throttled == 1
    assert sandbox.control("GET", "/stats")["tooManyRequestsTotal"] == 1
    # On the sandbox's clock: the resend came no sooner than the 429's Retry-After.
    log = sandbox.control("GET", "/stats")["log"]
    assert [e["status"] for e in log] == [200, 429, 200]
    refused, resent = log[1], log[2]
    assert refused["retryAfter"] >= 1
    assert resent["t"] - refused["t"] >= refused["retryAfter"]
    other.close()


def test_a_tiny_rate_limit_is_respected_without_429s(
    sandbox: SandboxHandle, provider: UGiftMeProvider
) -> None:
    sandbox.control("PUT", "/rate-limit", {"limit": 4, "windowSeconds": 1})
    for _ in range(6):
        provider.account()
    assert sandbox.control("GET", "/stats")["tooManyRequestsTotal"] == 0
    assert provider.limiter.stats().requests == 6


def test_a_post_that_meets_a_500_is_not_retried(
    sandbox: SandboxHandle, provider: UGiftMeProvider
) -> None:
    provider.catalog()
    sandbox.control("PATCH", "/faults", {"500": 1})
    items = order_items(("AMAZON_UK_STD", "10"))
    with pytest.raises(OutcomeUnknown, match="HTTP 500"):
        provider.submit("b1-500", provider.encode("b1-500", items), items)
    assert requests_seen(sandbox, "POST", "/orders/bulk") == 1


def test_a_get_that_keeps_meeting_500s_is_retried_then_unavailable(
    sandbox: SandboxHandle, provider: UGiftMeProvider
) -> None:
    provider.catalog()  # so the poll below needs no catalog for its costs
    sandbox.control("PATCH", "/faults", {"500": 1})
    with pytest.raises(ProviderUnavailable, match="HTTP 500"):
        provider.balances()
    assert requests_seen(sandbox, "GET", "/wallet") == 3
    with pytest.raises(OutcomeUnknown):  # for the runner, a poll that cannot answer is unknown
        provider.poll("65f0000000000000000000ff", order_items(("AMAZON_UK_STD", "10")))


def test_a_dropped_answer_is_unknown_and_the_resend_is_replayed(
    sandbox: SandboxHandle, provider: UGiftMeProvider
) -> None:
    sync_mode(sandbox)
    provider.catalog()
    sandbox.control("PATCH", "/faults", {"drop": 1})
    items = order_items(("AMAZON_UK_STD", "10"), ("TESCO_UK", "20"))
    payload = provider.encode("b1-drop", items)
    with pytest.raises(OutcomeUnknown):
        provider.submit("b1-drop", payload, items)
    result = provider.submit("b1-drop", payload, items)  # drops never hit a replay
    assert result.kind == "completed"
    assert {r.status for r in result.items} == {"succeeded"}
    assert sandbox.control("GET", "/orders")["total"] == 2


def test_a_concurrent_resend_while_the_first_is_in_flight_is_unknown(
    sandbox: SandboxHandle, provider: UGiftMeProvider
) -> None:
    sync_mode(sandbox)
    provider.catalog()
    # 5 s: room for the resend to arrive while the first still holds the key, on a
    # loaded machine (well inside the client's 30 s read timeout).
    sandbox.control("PATCH", "/faults", {"latency": 1, "latencyMs": 5000})
    items = order_items(("AMAZON_UK_STD", "10"))
    payload = provider.encode("b1-409", items)
    outcomes: dict[str, Any] = {}

    def first() -> None:
        outcomes["first"] = provider.submit("b1-409", payload, items)

    thread = threading.Thread(target=first)
    thread.start()
    # The resend goes once the first holds the key (a fixed sleep could lose the race
    # on a loaded machine); the first keeps the latency it already drew.
    deadline = time.monotonic() + 10
    while "b1-409" not in sandbox.app_state.idempotency.in_flight_keys():
        assert time.monotonic() < deadline, "the first request never reached the sandbox"
        time.sleep(0.01)
    sandbox.control("PATCH", "/faults", {"latency": 0})
    with pytest.raises(OutcomeUnknown, match="409"):
        provider.submit("b1-409", payload, items)
    thread.join(30)
    assert not thread.is_alive()
    assert outcomes["first"].kind == "completed"
    assert sandbox.control("GET", "/orders")["total"] == 1


def test_transactions_are_signed_and_stop_at_since(
    sandbox: SandboxHandle, provider: UGiftMeProvider
) -> None:
    sync_mode(sandbox)
    items = order_items(("AMAZON_UK_STD", "40"))
    provider.submit("b1-tx1", provider.encode("b1-tx1", items), items)
    everything = provider.transactions()
    purchases = [t for t in everything if t.transaction_type == "purchase"]
    assert [t.amount for t in purchases] == [Decimal("-39.00")]
    assert all(t.amount > 0 for t in everything if t.transaction_type == "funding")
    assert purchases[0].order_id

    cutoff = datetime.now(UTC)
    time.sleep(0.01)
    later = order_items(("TESCO_UK", "10"))
    provider.submit("b1-tx2", provider.encode("b1-tx2", later), later)
    recent = provider.transactions(since=cutoff)
    assert [(t.transaction_type, t.amount) for t in recent] == [("purchase", Decimal("-9.60"))]


def test_orders_since_lists_what_was_created(
    sandbox: SandboxHandle, provider: UGiftMeProvider
) -> None:
    sync_mode(sandbox)
    since = datetime.now(UTC) - timedelta(minutes=1)
    items = order_items(("AMAZON_UK_STD", "40"), ("TESCO_UK", "10.50"))
    submitted = provider.submit("b1-list", provider.encode("b1-list", items), items)
    listed = {o.order_id: o for o in provider.orders(since)}
    assert set(listed) == {r.order_id for r in submitted.items}
    tesco = next(o for o in listed.values() if o.product_code == "TESCO_UK")
    assert (tesco.face_value, tesco.currency, tesco.status) == (Decimal("10.50"), "GBP", "active")
    assert tesco.recipient_email == "person2@example.com"
    assert provider.orders(datetime.now(UTC) + timedelta(minutes=1)) == []


def test_a_wrong_key_is_an_auth_error_that_never_shows_the_key(sandbox: SandboxHandle) -> None:
    wrong = "WRONG-KEY-0000-1111-2222-333344445555"
    client = UGiftMeProvider(settings_for(sandbox, wrong))
    with pytest.raises(AuthError) as caught:
        client.account()
    message = str(caught.value)
    assert "refused the API key" in message and "Invalid API key" in message
    assert wrong not in message and SANDBOX_KEY not in message
    assert "UGIFTME_API_KEY" in message
    client.close()


def test_an_incomplete_profile_is_an_auth_error(
    sandbox: SandboxHandle, provider: UGiftMeProvider
) -> None:
    sandbox.control("PUT", "/account/profile", {"complete": False})
    with pytest.raises(AuthError, match="403"):
        provider.account()


def test_connection_refused_names_the_host(sandbox: SandboxHandle) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free once closed: nothing listens there
    settings = ProviderSettings(
        "ugiftme",
        f"http://127.0.0.1:{port}/api/v1/business",
        SecretStr(SANDBOX_KEY),
        PROFILES["ugiftme"],
    )
    client = UGiftMeProvider(settings)
    with pytest.raises(ProviderUnavailable) as caught:
        client.account()
    assert str(caught.value) == f"cannot reach 127.0.0.1:{port}: connection refused"
    client.close()


def test_providers_of_one_key_share_one_limiter(sandbox: SandboxHandle) -> None:
    first = UGiftMeProvider(settings_for(sandbox))
    second = UGiftMeProvider(settings_for(sandbox), max_rate=1)
    other_key = UGiftMeProvider(settings_for(sandbox, "ANOTHER-KEY"))
    assert first.limiter is second.limiter
    assert other_key.limiter is not first.limiter
    for client in (first, second, other_key):
        client.close()


def test_debug_logs_carry_no_key_and_no_voucher(
    sandbox: SandboxHandle, provider: UGiftMeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    sync_mode(sandbox)
    caplog.set_level(logging.DEBUG)
    items = order_items(("AMAZON_UK_STD", "10"), ("TESCO_UK", "20"))
    result = provider.submit("b1-logs", provider.encode("b1-logs", items), items)
    vouchers = [r.voucher_code for r in result.items if r.voucher_code]
    urls = [r.redemption_url for r in result.items if r.redemption_url]
    assert len(vouchers) == len(urls) == 2
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "/orders/bulk" in logged  # the logs do say what happened...
    for secret in (SANDBOX_KEY, *vouchers, *urls):  # ...but never with what
        assert secret not in logged
        assert secret not in repr(result)


def test_listings_read_concurrently_while_orders_arrive_miss_and_repeat_nothing(
    sandbox: SandboxHandle, provider: UGiftMeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Orders and wallet transactions are read 4 pages at a time; new orders land at
    the head of both newest-first listings between page reads, pushing the rest
    onto pages other workers have already read."""
    sync_mode(sandbox)
    since = datetime.now(UTC) - timedelta(minutes=1)
    for n in range(6):  # 60 orders and 60 purchases: 12 and 13 pages of 5
        items = [
            OrderItem(
                row_key=f"row{i}", product_code="AMAZON_UK_STD", merchant="Amazon UK",
                currency="GBP", amount=Decimal(10 + i), recipient_email=f"p{n}-{i}@example.com",
            )
            for i in range(10)
        ]  # fmt: skip
        provider.submit(f"b1-seed{n}", provider.encode(f"b1-seed{n}", items), items)
    before_orders = {o["_id"] for o in sandbox.control("GET", "/orders")["orders"]}
    before_transactions = {t.transaction_id for t in provider.transactions()}

    other = UGiftMeProvider(settings_for(sandbox))
    reads = {"n": 0}
    real_get = provider._api.get
    lock = threading.Lock()

    def get_with_arrivals(path: str, *, params: Any = None, **options: Any) -> Any:
        if path in ("/orders/search", "/wallet/transactions"):
            with lock:
                reads["n"] += 1
                n = reads["n"]
            if n % 2 == 0:  # every other page: another order, placed by another client
                late = order_items(("TESCO_UK", str(10 + n)))
                other.submit(f"b2-late{n}", other.encode(f"b2-late{n}", late), late)
        return real_get(path, params=params, **options)

    monkeypatch.setattr(provider._api, "get", get_with_arrivals)
    provider.page_limit, provider.list_workers = 5, 4
    orders = provider.orders(since)
    transactions = provider.transactions(since)
    other.close()

    after_orders = {o["_id"] for o in sandbox.control("GET", "/orders")["orders"]}
    order_ids = [o.order_id for o in orders]
    assert len(order_ids) == len(set(order_ids)), "an order was listed twice"
    assert before_orders <= set(order_ids) <= after_orders
    transaction_ids = [t.transaction_id for t in transactions]
    assert len(transaction_ids) == len(set(transaction_ids)), "a transaction was listed twice"
    assert before_transactions - {None} <= set(transaction_ids)
    assert len(after_orders) - len(before_orders) >= 10  # orders did arrive while listing
