"""Three-way reconciliation, pure: ledger rows ↔ provider orders ↔ wallet transactions."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from batcher.core.models import WalletTransaction
from batcher.ledger.store import RowRecord
from batcher.providers.base import ProviderOrder
from batcher.reporting.reconcile import (
    ATTEMPT_CHARGED,
    COST_DIFFERS,
    CREDIT,
    IN_FLIGHT,
    IN_PROGRESS,
    MATCHED,
    MISMATCH,
    NO_ORDER,
    NO_TRANSACTION,
    NOT_VERIFIED,
    ORPHAN,
    OTHER_BATCH,
    RECONCILED,
    REFUNDED_ATTEMPT,
    ProviderData,
    ReconcileInputs,
    Reconciliation,
    RunWindow,
    Window,
    reconcile,
)
from batcher.reporting.verdicts import BalanceSpan

T0 = datetime(2026, 3, 1, 22, 0, tzinfo=UTC)
RUN = RunWindow("run-1", Window(T0, T0 + timedelta(minutes=10)))


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def row(n: int, **over: Any) -> RowRecord:
    """A succeeded GBP row with order o{n}; override any field."""
    currency = over.pop("currency", "GBP")
    face = Decimal(over.pop("face", "50.00"))
    cost = over.pop("cost", face * Decimal("0.975"))
    data: dict[str, Any] = {
        "batch": "nightly",
        "row_key": f"k{n}",
        "source_row": n + 1,
        "in_sheet": True,
        "reference": f"R-{n}",
        "content_hash": f"h{n}",
        "fields": {
            "recipient_email": f"p{n}@example.com",
            "recipient_name": f"Person {n}",
            "product_code": "AMAZON_UK_STD",
            "amount": str(face),
            "currency": currency,
        },
        "passthrough": {"Cost centre": "CC-1"},
        "currency": currency,
        "face_value": face,
        "est_cost": cost,
        "state": "succeeded",
        "attempt": 1,
        "retry_group": "",
        "failure_kind": None,
        "error_code": None,
        "error_message": None,
        "provider_request_id": None,
        "conflict": None,
        "chunk_key": "b1-key",
        "order_request_id": "req",
        "order_id": f"o{n}",
        "transaction_id": f"txn_{n}",
        "cost": None if cost is None else Decimal(cost).quantize(Decimal("0.01")),
        "cost_currency": currency,
        "voucher_last4": "AB12",
        "provider_status": "active",
        "created_at": "2026-03-01T22:00:00.000Z",
        "updated_at": "2026-03-01T22:01:00.000Z",
        "succeeded_at": "2026-03-01T22:01:00.000Z",
    }
    data.update(over)
    return RowRecord(**data)


def order_for(r: RowRecord, minutes: float = 1) -> ProviderOrder:
    return ProviderOrder(
        order_id=r.order_id or "",
        product_code=r.fields["product_code"],
        currency=r.currency,
        face_value=r.face_value,
        status="active",
        created_at=at(minutes),
        recipient_email=r.fields["recipient_email"],
        recipient_name=r.fields["recipient_name"],
        transaction_id=r.transaction_id,
    )


def debit_for(r: RowRecord, amount: Decimal | None = None, minutes: float = 1) -> WalletTransaction:
    assert r.cost is not None
    return WalletTransaction(
        transaction_type="purchase",
        amount=-(amount if amount is not None else r.cost),
        currency=r.currency,
        order_id=r.order_id,
        transaction_id=f"t-{r.order_id}",
        timestamp=at(minutes),
    )


def provider_for(rows: list[RowRecord]) -> ProviderData:
    ordered = [r for r in rows if r.order_id]
    return ProviderData([order_for(r) for r in ordered], [debit_for(r) for r in ordered])


def run(rows: list[RowRecord], data: ProviderData | None = None, **over: Any) -> Reconciliation:
    inputs = ReconcileInputs(
        rows=rows, runs=[RUN], provider=data if data is not None else provider_for(rows)
    )
    return reconcile(replace(inputs, **over))


def only(rec: Reconciliation, currency: str = "GBP") -> Any:
    (found,) = [c for c in rec.currencies if c.currency == currency]
    return found


# ---------------------------------------------------------------------------
# Agreement.


def test_every_order_matched_reconciles_to_the_cent() -> None:
    rows = [row(i, face=f"{10 + i}.33") for i in range(5)]
    rec = run(rows)
    gbp = only(rec)
    assert rec.verdict == RECONCILED and gbp.verdict == RECONCILED
    assert gbp.orders == 5
    assert gbp.face_value == sum(r.face_value for r in rows)
    assert gbp.cost == gbp.wallet_debits == sum(r.cost for r in rows if r.cost)
    assert gbp.difference == 0
    assert gbp.discount == gbp.face_value - gbp.cost
    assert {line.status for line in rec.wallet_lines} == {MATCHED}
    assert all(not c.problems for c in rec.checks.values())


def test_cents_are_exact_where_floats_would_drift() -> None:
    rows = [row(i, face="0.10", cost=Decimal("0.10")) for i in range(3)]
    rows += [row(9, face="0.20", cost=Decimal("0.20"))]
    gbp = only(run(rows))
    assert gbp.cost == Decimal("0.50") and gbp.wallet_debits == Decimal("0.50")
    assert gbp.verdict == RECONCILED


def test_yen_reconciles_in_whole_units() -> None:
    rows = [row(i, currency="JPY", face="5000", cost=Decimal("4875")) for i in range(3)]
    jpy = only(run(rows), "JPY")
    assert jpy.cost == Decimal(14625) and jpy.verdict == RECONCILED
    assert "¥14,625" in jpy.reason


def test_a_refund_nets_the_debit() -> None:
    r = row(1)
    assert r.cost is not None
    refund = WalletTransaction(
        transaction_type="refund", amount=Decimal("1.00"), currency="GBP",
        order_id=r.order_id, timestamp=at(2),
    )  # fmt: skip
    data = ProviderData([order_for(r)], [debit_for(r, r.cost + 1), refund])
    rec = run([r], data)
    assert only(rec).verdict == RECONCILED
    assert rec.checks[r.row_key].debit == r.cost


# ---------------------------------------------------------------------------
# Disagreement, each with its reason.


def test_orphan_in_the_window_is_listed_and_turns_the_currency_to_mismatch() -> None:
    rows = [row(1), row(2, currency="EUR")]
    data = provider_for(rows)
    orphan = ProviderOrder(
        order_id="stranger", product_code="TESCO_UK", currency="GBP",
        face_value=Decimal("25.00"), status="active", created_at=at(3),
        recipient_email="someone@example.com",
    )  # fmt: skip
    charge = WalletTransaction(
        transaction_type="purchase", amount=Decimal("-24.00"), currency="GBP",
        order_id="stranger", timestamp=at(3),
    )  # fmt: skip
    rec = run(rows, ProviderData([*data.orders, orphan], [*data.transactions, charge]))
    assert rec.verdict == MISMATCH
    assert [o.order.order_id for o in rec.orphans] == ["stranger"]
    assert rec.orphans[0].debit == Decimal("24.00")
    assert "outside batcher" in rec.orphans[0].note
    gbp, eur = only(rec), only(rec, "EUR")
    assert gbp.verdict == MISMATCH and gbp.orphans == 1
    assert "1 orphan order(s) worth £25.00" in gbp.reason
    assert eur.verdict == RECONCILED, "an orphan in GBP says nothing about EUR"
    assert [x.status for x in rec.wallet_lines if x.order_id == "stranger"] == [ORPHAN]


def test_a_provider_order_outside_every_run_window_is_not_an_orphan() -> None:
    rows = [row(1)]
    data = provider_for(rows)
    earlier = replace(order_for(row(7)), order_id="yesterday", created_at=at(-60))
    rec = run(rows, ProviderData([*data.orders, earlier], data.transactions))
    assert not rec.orphans and rec.verdict == RECONCILED


def test_an_order_of_a_row_in_flight_is_in_progress_never_an_orphan() -> None:
    sent = row(4, state="unknown", order_id=None, transaction_id=None, cost=None)
    done = row(1)
    late = replace(order_for(row(4)), order_id="o-late", created_at=at(2))
    charge = debit_for(row(4)).model_copy(update={"order_id": "o-late", "timestamp": at(2)})
    data = provider_for([done])
    rec = run([done, sent], ProviderData([*data.orders, late], [*data.transactions, charge]))
    assert not rec.orphans
    (flying,) = rec.in_flight
    assert flying.row.row_key == sent.row_key and flying.order.order_id == "o-late"
    (line,) = [x for x in rec.wallet_lines if x.status == IN_FLIGHT]
    assert "row 5" in line.note and "rerun" in line.note
    assert rec.verdict == IN_PROGRESS and only(rec).verdict == IN_PROGRESS
    unsettled = only(rec).unsettled
    assert unsettled.in_flight == 1 and unsettled.in_flight_debits == row(4).cost
    assert only(rec).difference == 0, "the confirmed orders still match to the cent"


def test_an_extra_order_beside_a_row_in_flight_is_still_an_orphan() -> None:
    sent = row(4, state="accepted", order_id=None, transaction_id=None, cost=None)
    done = row(1)
    late = replace(order_for(row(4)), order_id="o-late", created_at=at(2))
    twin = replace(late, order_id="o-twin", created_at=at(3))
    data = provider_for([done])
    rec = run([done, sent], ProviderData([*data.orders, late, twin], data.transactions))
    assert [o.order.order_id for o in rec.orphans] == ["o-twin"]
    assert rec.verdict == MISMATCH


def test_an_order_of_another_batch_is_not_an_orphan() -> None:
    rows = [row(1)]
    data = provider_for(rows)
    theirs = replace(order_for(row(8)), order_id="other-1", created_at=at(2))
    charge = debit_for(row(8)).model_copy(update={"order_id": "other-1", "timestamp": at(2)})
    rec = run(
        rows,
        ProviderData([*data.orders, theirs], [*data.transactions, charge]),
        other_batches={"other-1": "payroll"},
    )
    assert not rec.orphans and rec.verdict == RECONCILED
    (line,) = [x for x in rec.wallet_lines if x.status == OTHER_BATCH]
    assert line.note == "batch payroll"


def test_the_balance_movement_names_other_batches_and_top_ups_and_leaves_nothing_over() -> None:
    rows = [row(1), row(2)]
    data = provider_for(rows)
    theirs = debit_for(row(8)).model_copy(update={"order_id": "other-1", "timestamp": at(2)})
    top_up = WalletTransaction(
        transaction_type="funding", amount=Decimal("100.00"), currency="GBP", timestamp=at(3)
    )
    cost = sum((r.cost for r in rows if r.cost is not None), Decimal(0))
    before = Decimal("1000.00")
    after = before - cost - (row(8).cost or Decimal(0)) + Decimal("100.00")
    window = replace(RUN, before={"GBP": before}, after={"GBP": after})
    provider = ProviderData(data.orders, [*data.transactions, theirs, top_up])
    rec = run(rows, provider, runs=[window], other_batches={"other-1": "payroll"})
    moved = only(rec).movement
    assert moved.moved == after - before and moved.own == -cost
    assert moved.other_batches == -(row(8).cost or 0) and moved.credits == Decimal("100.00")
    assert moved.unexplained == 0 and rec.verdict == RECONCILED
    # A balance that moved by a cent more than every line explains is a mismatch.
    short = replace(window, after={"GBP": after - Decimal("0.01")})
    rec = run(rows, provider, runs=[short], other_batches={"other-1": "payroll"})
    assert only(rec).movement.unexplained == Decimal("-0.01") and rec.verdict == MISMATCH


def test_a_debit_that_differs_from_the_ledger_cost_is_a_mismatch() -> None:
    rows = [row(1), row(2)]
    assert rows[0].cost is not None
    data = ProviderData(
        [order_for(r) for r in rows],
        [debit_for(rows[0], rows[0].cost + Decimal("0.01")), debit_for(rows[1])],
    )
    rec = run(rows, data)
    gbp = only(rec)
    assert gbp.verdict == MISMATCH
    assert gbp.difference == Decimal("-0.01")
    assert "1 order(s) were charged differently" in gbp.reason
    assert [x.status for x in rec.wallet_lines if x.row is rows[0]] == [COST_DIFFERS]
    assert rec.wallet_lines[0].difference in (Decimal("0.01"), None)


def test_an_order_without_a_transaction_is_flagged() -> None:
    rows = [row(1), row(2)]
    data = ProviderData([order_for(r) for r in rows], [debit_for(rows[0])])
    rec = run(rows, data)
    assert only(rec).verdict == MISMATCH
    assert "1 order(s) have no wallet transaction" in only(rec).reason
    (line,) = [x for x in rec.wallet_lines if x.status == NO_TRANSACTION]
    assert line.row is rows[1] and line.flagged


def test_a_debit_with_no_order_is_flagged_only_inside_the_window() -> None:
    rows = [row(1)]
    data = provider_for(rows)
    stray = WalletTransaction(
        transaction_type="purchase", amount=Decimal("-9.99"), currency="GBP", timestamp=at(4)
    )
    outside = stray.model_copy(update={"timestamp": at(-30)})
    rec = run(rows, ProviderData(data.orders, [*data.transactions, stray, outside]))
    (line,) = [x for x in rec.wallet_lines if x.status == NO_ORDER]
    assert line.transaction is stray
    assert "1 wallet debit(s) worth £9.99 match no order" in only(rec).reason


def test_an_order_the_provider_did_not_list_is_a_mismatch() -> None:
    rows = [row(1), row(2)]
    data = ProviderData([order_for(rows[0])], [debit_for(r) for r in rows])
    gbp = only(run(rows, data))
    assert gbp.verdict == MISMATCH and "not listed by the provider" in gbp.reason


def test_a_face_value_the_provider_disagrees_with_is_a_mismatch() -> None:
    r = row(1)
    data = ProviderData([replace(order_for(r), face_value=Decimal("55.00"))], [debit_for(r)])
    assert "differ from the provider's record" in only(run([r], data)).reason


def test_an_order_with_no_ledger_cost_cannot_reconcile() -> None:
    r = row(1, cost=None)
    rec = run([r], ProviderData([order_for(r)], [debit_for(row(1))]))
    assert "have no cost in the ledger" in only(rec).reason


# ---------------------------------------------------------------------------
# Balances.


def test_balance_movement_must_be_explained_by_the_transactions() -> None:
    rows = [row(1, face="40.00", cost=Decimal("39.00"))]
    funding = WalletTransaction(
        transaction_type="funding", amount=Decimal("100.00"), currency="GBP", timestamp=at(5)
    )
    data = provider_for(rows)
    data = ProviderData(data.orders, [*data.transactions, funding])
    good = replace(RUN, before={"GBP": Decimal("500.00")}, after={"GBP": Decimal("561.00")})
    rec = run(rows, data, runs=[good])
    assert only(rec).verdict == RECONCILED
    assert [x.status for x in rec.wallet_lines if x.status == CREDIT] == [CREDIT]
    assert only(rec).balances == BalanceSpan(before=Decimal("500.00"), after=Decimal("561.00"))

    silent = replace(good, after={"GBP": Decimal("560.00")})  # £1 left with no transaction
    gbp = only(run(rows, data, runs=[silent]))
    assert gbp.verdict == MISMATCH
    assert "balance moved by £60.00 but the wallet transactions account for £61.00" in gbp.reason


def test_balances_only_reconcile_when_the_wallet_moved_by_the_costs() -> None:
    rows = [row(1, cost=Decimal("48.75")), row(2, cost=Decimal("48.75"))]
    moved = replace(RUN, before={"GBP": Decimal("1000.00")}, after={"GBP": Decimal("902.50")})
    idle = RunWindow("run-2", Window(at(20), at(21)), idle=True)
    rec = reconcile(ReconcileInputs(rows=rows, runs=[moved, idle]))
    assert rec.evidence == "balances" and only(rec).verdict == RECONCILED
    assert only(rec).wallet_debits == Decimal("97.50")
    assert not rec.wallet_lines and not rec.orphans

    extra = replace(moved, after={"GBP": Decimal("877.50")})  # £25 more left the wallet
    gbp = only(reconcile(ReconcileInputs(rows=rows, runs=[extra])))
    assert gbp.verdict == MISMATCH and "batcher report" in gbp.reason

    unread = replace(moved, after=None)
    assert only(reconcile(ReconcileInputs(rows=rows, runs=[unread]))).verdict == MISMATCH


def test_no_provider_data_is_never_reconciled() -> None:
    rec = reconcile(ReconcileInputs(rows=[row(1)], runs=[RUN], provider_error="timeout"))
    assert rec.evidence == "unavailable" and rec.verdict == NOT_VERIFIED
    assert "timeout" in rec.reason and "retry `batcher report" in rec.reason
    assert only(rec).verdict == NOT_VERIFIED


# ---------------------------------------------------------------------------
# Sheet ↔ ledger.


def test_state_counts_must_add_up_to_the_sheet() -> None:
    rows = [
        row(1),
        row(2, state="failed", order_id=None, cost=None, transaction_id=None),
        row(3, state="invalid", order_id=None, cost=None, transaction_id=None, currency="X"),
        row(4, state="pending", order_id=None, cost=None, transaction_id=None),
    ]
    rec = run(rows, sheet_rows=4)
    assert rec.counts_add_up and rec.state_counts["failed"] == 1
    assert sum(rec.state_counts.values()) == 4
    assert [c.currency for c in rec.currencies] == ["GBP"], "an invalid row's currency is noise"
    short = run(rows, sheet_rows=5)
    assert not short.counts_add_up and short.verdict == MISMATCH
    assert "do not add up" in short.reason


def test_an_order_whose_row_left_the_sheet_still_counts_but_not_as_a_sheet_row() -> None:
    rows = [row(1), row(2, in_sheet=False)]
    rec = run(rows, sheet_rows=1)
    assert rec.counts_add_up
    assert only(rec).orders == 2 and only(rec).verdict == RECONCILED


# ---------------------------------------------------------------------------
# Property: totals are exact sums, and one cent off anywhere is caught.

cents = st.integers(min_value=1, max_value=500_000).map(lambda c: Decimal(c) / 100)


@settings(max_examples=60, deadline=None)
@given(st.lists(cents, min_size=1, max_size=30), st.data())
def test_totals_are_exact_and_one_cent_is_caught(costs: list[Decimal], data: Any) -> None:
    rows = [row(i, face=str(c + 1), cost=c) for i, c in enumerate(costs)]
    rec = run(rows)
    gbp = only(rec)
    assert gbp.cost == sum(costs, Decimal(0)) == gbp.wallet_debits
    assert gbp.verdict == RECONCILED
    victim = data.draw(st.integers(min_value=0, max_value=len(rows) - 1))
    debits = [
        debit_for(r, (r.cost or Decimal(0)) + Decimal("0.01") if i == victim else None)
        for i, r in enumerate(rows)
    ]
    off = run(rows, ProviderData([order_for(r) for r in rows], debits))
    assert only(off).verdict == MISMATCH and only(off).difference == Decimal("-0.01")


def test_an_order_paid_from_another_wallet_counts_there() -> None:
    cross = row(1, face="50.00", cost=Decimal("63.10"), cost_currency="USD")
    debit = debit_for(cross).model_copy(update={"currency": "USD"})
    rec = run(
        [cross, row(2)],
        ProviderData([order_for(cross), order_for(row(2))], [debit, debit_for(row(2))]),
    )
    gbp, usd = only(rec), only(rec, "USD")
    assert gbp.orders == 2 and gbp.face_value == Decimal("100.00")
    assert gbp.cost == row(2).cost and gbp.discount == Decimal("50.00") - (row(2).cost or 0)
    assert "1 order(s) paid from the USD wallet" in gbp.reason
    assert usd.orders == 0 and usd.cost == usd.wallet_debits == Decimal("63.10")
    assert usd.verdict == gbp.verdict == RECONCILED
    assert "for the 1 order(s) paid from this wallet" in usd.reason and usd.wallet_orders == 1


# ---------------------------------------------------------------------------
# A transaction that settles a whole order request (a payout order).


def payout_rows(count: int, request: str = "po-1", first: int = 0) -> list[RowRecord]:
    """Per-recipient payouts (`order_id`) of one payout order (`order_request_id`)."""
    return [
        row(i, face=f"{20 + i}.15", cost=Decimal(f"{20 + i}.15"), order_id=f"payout-{i}",
            order_request_id=request, transaction_id=None, chunk_key=f"chunk-{request}")
        for i in range(first, first + count)
    ]  # fmt: skip


def total(rows: list[RowRecord]) -> Decimal:
    return sum((r.cost or Decimal(0) for r in rows), Decimal(0))


def payout_lines(rows: list[RowRecord]) -> list[ProviderOrder]:
    return [
        replace(order_for(r), product_code="", reference=r.order_request_id, transaction_id=None)
        for r in rows
    ]


def request_debit(
    request: str, amount: Decimal, kind: str = "payout", minutes: float = 1
) -> WalletTransaction:
    return WalletTransaction(
        transaction_type=kind, amount=-amount, currency="GBP", order_id=request,
        transaction_id=f"t-{request}-{kind}", timestamp=at(minutes),
    )  # fmt: skip


def test_one_debit_per_payout_order_settles_its_rows_to_the_cent() -> None:
    first, second = payout_rows(3, "po-1"), payout_rows(2, "po-2", first=3)
    rows = first + second
    fee = Decimal("0.42")
    data = ProviderData(
        payout_lines(rows),
        [
            request_debit("po-1", total(first)),
            # a payout order with a fee: payout and fx_fee together equal the ledger's costs
            request_debit("po-2", total(second) - fee),
            request_debit("po-2", fee, "fx_fee"),
        ],
    )
    rec = run(rows, data)
    gbp = only(rec)
    assert rec.verdict == RECONCILED, gbp.reason
    assert gbp.cost == gbp.wallet_debits == total(rows) and gbp.difference == 0
    assert {line.status for line in rec.wallet_lines} == {MATCHED}, "no order lacks a debit"
    assert not rec.orphans
    assert all(c.request_id in ("po-1", "po-2") and not c.problems for c in rec.checks.values())
    assert set(rec.checks) == {r.row_key for r in rows}
    assert rec.checks[rows[0].row_key].debit == rows[0].cost, "each row shows its share"
    (po1,) = [x for x in rec.wallet_lines if x.order_id == "po-1"]
    assert po1.rows == tuple(first) and po1.difference == 0 and "3 order(s)" in po1.note


def test_a_payout_order_debit_one_cent_off_its_rows_is_a_mismatch() -> None:
    rows = payout_rows(4)
    data = ProviderData(payout_lines(rows), [request_debit("po-1", total(rows) + Decimal("0.01"))])
    rec = run(rows, data)
    gbp = only(rec)
    assert gbp.verdict == MISMATCH and gbp.difference == Decimal("-0.01")
    assert "4 order(s) were charged differently" in gbp.reason
    (line,) = rec.wallet_lines
    assert line.status == COST_DIFFERS and line.difference == Decimal("0.01")
    assert all("request po-1" in c.problems[-1] for c in rec.checks.values())


def test_payouts_with_no_debit_at_all_are_orders_without_transactions() -> None:
    rows = payout_rows(2)
    rec = run(rows, ProviderData(payout_lines(rows), []))
    assert only(rec).verdict == MISMATCH
    assert "2 order(s) have no wallet transaction" in only(rec).reason
    assert [x.status for x in rec.wallet_lines] == [NO_TRANSACTION, NO_TRANSACTION]


# ---------------------------------------------------------------------------
# Failed, refunded orders of earlier attempts are the batch's own.


def failed_attempt(
    order_id: str, reference: str | None, refund: bool = True
) -> tuple[ProviderOrder, list[WalletTransaction]]:
    order = ProviderOrder(
        order_id=order_id, product_code="AMAZON_UK_STD", currency="GBP",
        face_value=Decimal("50.00"), status="failed", created_at=at(1), reference=reference,
    )  # fmt: skip
    charge = WalletTransaction(
        transaction_type="order", amount=Decimal("-48.75"), currency="GBP",
        order_id=order_id, transaction_id=f"t-{order_id}", reference=reference, timestamp=at(1),
    )  # fmt: skip
    back = charge.model_copy(
        update={"transaction_type": "refund", "amount": Decimal("48.75"), "timestamp": at(2)}
    )
    return order, [charge, back] if refund else [charge]


def test_a_failed_refunded_order_of_an_earlier_attempt_is_not_an_orphan() -> None:
    done = row(1, chunk_key="key-attempt-2", order_request_id="o1")
    order, transactions = failed_attempt("o-old", "key-attempt-1")
    data = provider_for([done])
    data = ProviderData([*data.orders, order], [*data.transactions, *transactions])
    # Without the earlier attempt's key the failed order looks like a stranger's.
    assert run([done], data).verdict == MISMATCH

    rec = run([done], data, attempt_keys=frozenset({"key-attempt-1"}))
    assert rec.verdict == RECONCILED, only(rec).reason
    assert not rec.orphans
    attempt = [x for x in rec.wallet_lines if x.order_id == "o-old"]
    assert [x.status for x in attempt] == [REFUNDED_ATTEMPT, REFUNDED_ATTEMPT]
    assert not any(x.flagged for x in attempt)
    assert only(rec).wallet_debits == done.cost, "the charge and its refund net to zero"


def test_a_row_released_for_retry_names_its_earlier_key_itself() -> None:
    done = row(1, chunk_key="key-attempt-2", retry_group="key-attempt-1")
    order, transactions = failed_attempt("o-old", "key-attempt-1")
    data = provider_for([done])
    rec = run([done], ProviderData([*data.orders, order], [*data.transactions, *transactions]))
    assert rec.verdict == RECONCILED and not rec.orphans


def test_a_failed_payout_order_of_an_earlier_attempt_nets_to_zero_by_request_id() -> None:
    rows = payout_rows(2, "po-2")
    paid = total(rows)
    failed_lines = [
        replace(o, order_id=f"{o.order_id}-old", reference="po-1", status="failed")
        for o in payout_lines(rows)
    ]
    charge = request_debit("po-1", paid)
    refund = charge.model_copy(update={"transaction_type": "refund", "amount": paid})
    data = ProviderData(
        [*payout_lines(rows), *failed_lines], [charge, refund, request_debit("po-2", paid)]
    )
    assert run(rows, data).orphans, "po-1 is unknown without the ledger's request ids"
    rec = run(rows, data, request_ids=frozenset({"po-1", "po-2"}))
    assert rec.verdict == RECONCILED, only(rec).reason
    assert not rec.orphans
    assert sorted(x.status for x in rec.wallet_lines) == sorted([MATCHED, *[REFUNDED_ATTEMPT] * 2])


def test_an_earlier_attempt_that_kept_the_money_is_flagged() -> None:
    done = row(1, chunk_key="key-attempt-2")
    order, transactions = failed_attempt("o-old", "key-attempt-1", refund=False)
    data = provider_for([done])
    data = ProviderData([*data.orders, order], [*data.transactions, *transactions])
    rec = run([done], data, attempt_keys=frozenset({"key-attempt-1"}))
    gbp = only(rec)
    assert gbp.verdict == MISMATCH and not rec.orphans
    (line,) = [x for x in rec.wallet_lines if x.order_id == "o-old"]
    assert line.status == ATTEMPT_CHARGED and line.flagged
    assert "kept £48.75" in gbp.reason
    assert gbp.wallet_debits == (done.cost or 0) + Decimal("48.75")


def test_an_order_whose_id_is_one_of_the_batchs_request_ids_is_its_own() -> None:
    done = row(1)
    order, transactions = failed_attempt("req-old", None)
    data = provider_for([done])
    data = ProviderData([*data.orders, order], [*data.transactions, *transactions])
    rec = run([done], data, request_ids=frozenset({"req-old"}))
    assert rec.verdict == RECONCILED and not rec.orphans
