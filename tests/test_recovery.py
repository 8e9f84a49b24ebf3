"""Recovery from the provider: which pending rows an order list proves already ordered
(pure matching), and which new rows look like edits of ordered ones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from batcher.execute.recovery import (
    HELD_AMBIGUOUS,
    HELD_POSSIBLE_EDIT,
    match_orders,
    possible_edits,
)
from batcher.ledger.store import RowRecord
from batcher.providers.base import ProviderOrder

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def row(key: str, n: int, *, amount: str = "10.00", email: str = "a@x.com", name: str = "Ann",
        message: str = "", product: str = "P1", **over: Any) -> RowRecord:  # fmt: skip
    values: dict[str, Any] = {
        "batch": "b", "row_key": key, "source_row": n, "in_sheet": True, "reference": None,
        "content_hash": f"{product}|{amount}|{email}|{name}|{message}",
        "fields": {"recipient_email": email, "product_code": product, "recipient_name": name,
                   "message": message},
        "passthrough": {}, "currency": "GBP", "face_value": Decimal(amount),
        "est_cost": Decimal(amount), "state": "pending", "attempt": 1, "retry_group": "",
        "failure_kind": None, "error_code": None, "error_message": None,
        "provider_request_id": None, "conflict": None, "chunk_key": None,
        "order_request_id": None, "order_id": None, "transaction_id": None, "cost": None,
        "cost_currency": None, "voucher_last4": None, "provider_status": None,
        "created_at": "", "updated_at": "", "succeeded_at": None,
    }  # fmt: skip
    values.update(over)
    return RowRecord(**values)


def order(order_id: str, *, amount: str = "10", email: str = "A@X.com", name: str = "Ann",
          product: str = "p1", status: str = "completed", minutes: int = 0) -> ProviderOrder:  # fmt: skip
    return ProviderOrder(
        order_id=order_id, product_code=product, currency="GBP", face_value=Decimal(amount),
        status=status, created_at=T0 + timedelta(minutes=minutes), recipient_email=email,
        recipient_name=name,
    )  # fmt: skip


def test_an_order_with_the_same_match_key_settles_the_row() -> None:
    found = match_orders([row("k1", 2), row("k2", 3, email="b@x.com")], [order("o1")], set())
    assert [(f.row_key, f.order_id, f.state) for f in found.found] == [("k1", "o1", "succeeded")]
    assert found.found[0].cost == Decimal("10.00") and not found.held


def test_claimed_dead_and_other_orders_never_match() -> None:
    orders = [
        order("claimed"),
        order("failed", status="failed"),
        order("other-amount", amount="10.01"),
        order("other-name", name="Bob"),
        ProviderOrder("no-recipient", "P1", "GBP", Decimal(10), "completed", T0),
    ]
    result = match_orders([row("k1", 2)], orders, {"claimed"})
    assert not result.found and not result.held


def test_identical_rows_take_as_many_orders_as_there_are() -> None:
    rows = [row("k1", 2), row("k2", 3), row("k3", 4)]
    result = match_orders(rows, [order("o2", minutes=2), order("o1", minutes=1)], set())
    assert [(f.row_key, f.order_id) for f in result.found] == [("k1", "o1"), ("k2", "o2")]
    assert not result.held  # k3 stays pending: identical rows are interchangeable


def test_rows_that_differ_where_the_order_cannot_tell_are_held() -> None:
    rows = [row("k1", 2, message="Happy birthday"), row("k2", 3, message="Thank you")]
    result = match_orders(rows, [order("o1")], set())
    assert not result.found
    assert [(h.row_key, h.error_code) for h in result.held] == [
        ("k1", HELD_AMBIGUOUS),
        ("k2", HELD_AMBIGUOUS),
    ]
    assert "o1" in (result.held[0].error_message or "")
    assert all(h.state == "held" for h in result.held)
    assert "--release-held 2" in (result.held[0].error_message or "")


def test_payouts_match_without_product_or_name() -> None:
    payout = ProviderOrder("pay1", "", "GBP", Decimal("10.0"), "sent", T0, "a@x.com",
                           reference="po_7")  # fmt: skip
    result = match_orders([row("k1", 2, product="PAYOUT")], [payout], set())
    assert [(f.order_id, f.provider_request_id) for f in result.found] == [("pay1", "po_7")]


def test_a_new_row_like_an_ordered_row_that_left_the_sheet_is_held() -> None:
    old = row("k1", 2, state="succeeded", in_sheet=False, order_id="o1")
    edited = row("k2", 2, amount="12.00")
    other = row("k3", 3, email="c@x.com")
    referenced = row("r1", 4, amount="13.00", reference="REF-1")
    retried = row("k4", 5, amount="14.00", attempt=2)
    held = possible_edits([old, edited, other, referenced, retried])
    assert [(h.row_key, h.error_code) for h in held] == [("k2", HELD_POSSIBLE_EDIT)]
    assert "o1" in (held[0].error_message or "") and "row 2" in (held[0].error_message or "")
    assert held[0].state == "held" and "--release-held 2" in (held[0].error_message or "")
    assert possible_edits([row("k1", 2, state="failed", in_sheet=False), edited]) == []
