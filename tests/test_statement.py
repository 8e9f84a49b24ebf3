"""The month-end statement's tie-out (reporting/statement.py), pure."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from batcher.core.models import WalletTransaction
from batcher.reporting.reconcile import MISMATCH, RECONCILED, Window
from batcher.reporting.statement import (
    OTHER_DEBIT,
    TOP_UP,
    Checkpoint,
    build_statement,
)
from tests.test_reconcile import T0, at, debit_for, row

PERIOD = Window(T0 - timedelta(days=1), T0 + timedelta(days=1))


def top_up(amount: str, minutes: float) -> WalletTransaction:
    return WalletTransaction(
        transaction_type="funding", amount=Decimal(amount), currency="GBP",
        transaction_id=f"fund-{minutes}", timestamp=at(minutes),
    )  # fmt: skip


def by_hand(amount: str, minutes: float) -> WalletTransaction:
    return WalletTransaction(
        transaction_type="purchase", amount=-Decimal(amount), currency="GBP",
        order_id="o-hand", transaction_id="t-hand", timestamp=at(minutes),
    )  # fmt: skip


def test_the_period_ties_out_line_by_line_to_the_cent() -> None:
    a = [row(1), row(2, passthrough={"Cost centre": "CC-2"})]
    b = [row(3, order_id="o3b", transaction_id="txn_3b")]
    late = row(4, order_id="o-late", succeeded_at="2026-03-05T10:00:00.000Z")
    txs = [top_up("100.00", 0.5), *(debit_for(r) for r in [*a, *b]), by_hand("10.00", 2)]
    after = [top_up("5.00", 60 * 30), debit_for(late, minutes=60 * 96)]
    now = {"GBP": Decimal("1000.00")}
    st = build_statement(PERIOD, {"payroll": a, "rewards": [*b, late]}, [*txs, *after], now)
    (gbp,) = st.wallets
    cost = sum((r.cost or Decimal(0) for r in [*a, *b]), Decimal(0))
    assert gbp.ledger_cost == gbp.order_debits == cost and gbp.orders == 3
    assert gbp.closing == Decimal("1000.00") - Decimal("5.00") + late.cost  # type: ignore[operator]
    assert gbp.opening == gbp.closing - Decimal("100.00") + cost + Decimal("10.00")
    assert gbp.top_ups == Decimal("100.00") and gbp.other_debits == Decimal("10.00")
    assert gbp.tied_balance == gbp.closing and gbp.verdict == RECONCILED
    assert st.batches == ["payroll", "rewards"], "the late order is outside the period"
    assert {line.kind for line in st.lines} >= {TOP_UP, OTHER_DEBIT}
    centres = {(s.cost_centre, s.orders) for s in st.spend}
    assert centres == {("CC-1", 2), ("CC-2", 1)}


def test_a_debit_that_differs_from_the_ledger_is_a_mismatch() -> None:
    rows = [row(1), row(2)]
    txs = [debit_for(rows[0]), debit_for(rows[1], amount=Decimal("40.00"))]
    st = build_statement(PERIOD, {"payroll": rows}, txs, {"GBP": Decimal("500.00")})
    (gbp,) = st.wallets
    assert gbp.difference == rows[1].cost - Decimal("40.00")  # type: ignore[operator]
    assert gbp.verdict == MISMATCH and st.verdict == MISMATCH


def test_a_balance_the_transactions_do_not_explain_is_a_mismatch() -> None:
    rows = [row(1)]
    txs = [debit_for(rows[0], minutes=5)]
    now = {"GBP": Decimal("500.00")}
    good = Checkpoint("run-1", at(1), "GBP", Decimal("500.00") + rows[0].cost)  # type: ignore[operator]
    st = build_statement(PERIOD, {"payroll": rows}, txs, now, [good])
    assert st.verdict == RECONCILED and st.wallets[0].checkpoints == 1
    bad = Checkpoint("run-2", at(1), "GBP", Decimal("700.00"))
    st = build_statement(PERIOD, {"payroll": rows}, txs, now, [bad])
    (gbp,) = st.wallets
    assert gbp.verdict == MISMATCH and "run-2 read £700.00" in gbp.checkpoint_errors[0]
