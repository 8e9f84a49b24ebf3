"""Reconciliation's per-currency totals and the verdict each currency gets (pure)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from batcher.core.money import format_money
from batcher.reporting.row_facts import CurrencyRows, RowFacts
from batcher.reporting.verdicts import (
    ATTEMPT_CHARGED,
    CREDIT,
    FX_FEE_TYPES,
    IN_FLIGHT,
    IN_PROGRESS,
    MISMATCH,
    NO_ORDER,
    NO_TRANSACTION_PROBLEM,
    NOT_VERIFIED,
    OTHER_BATCH,
    OWN_STATUSES,
    RECONCILED,
    ZERO,
    BalanceSpan,
    CurrencyReconciliation,
    Evidence,
    Movement,
    Orphan,
    ReconcileInputs,
    RunWindow,
    Unsettled,
    Verdict,
    WalletLine,
)

#: the kinds of problem an order's check can have, counted per paying wallet
UNLISTED, NO_DEBIT, DEBIT_DIFFERS, LISTING_DIFFERS = "unlisted", "no debit", "debit", "listing"
#: wallet -> problem kind -> orders with it
ProblemCounts = Mapping[str, Counter[str]]


def currencies_in(
    facts: RowFacts, lines: Sequence[WalletLine], orphans: Sequence[Orphan]
) -> list[str]:
    found = set(facts.currencies)
    found |= {line.currency for line in lines if line.flagged and line.currency}
    found |= {o.order.currency for o in orphans if o.order.currency}
    return sorted(found)


@dataclass
class _Tally:
    """The figures and the reasons for one currency, built up step by step."""

    currency: str
    orders: int = 0  # orders with a face value in this currency
    charged: int = 0  # orders paid from this currency's wallet
    face: Decimal = ZERO
    cost: Decimal = ZERO
    discount: Decimal = ZERO
    debits: Decimal | None = None
    in_flight: int = 0  # rows sent and not yet confirmed
    unsent: int = 0  # rows not sent yet (pending or planned)
    held: int = 0  # rows held for a person, never sent
    in_flight_debits: Decimal = ZERO
    fx_fees: Decimal = ZERO
    movement: Movement | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def money(self, amount: Decimal) -> str:
        return format_money(amount, self.currency)

    def unsettled(self) -> Unsettled:
        return Unsettled(self.in_flight, self.in_flight_debits, self.unsent)


def currency_verdict(
    currency: str,
    inputs: ReconcileInputs,
    facts: RowFacts,
    problems: ProblemCounts,
    lines: Sequence[WalletLine],
    orphans: Sequence[Orphan],
    evidence: Evidence,
) -> CurrencyReconciliation:
    tally = _Tally(currency)
    figures = facts.currency(currency)
    _tally_ledger(tally, figures)
    _tally_unsettled(tally, figures)
    mine = [o for o in orphans if o.order.currency == currency]
    unverified = False
    if evidence == "transactions":
        _tally_transactions(tally, problems.get(currency) or Counter(), lines)
        _tally_orphans(tally, mine)
        _tally_balance_movement(tally, inputs, lines)
    elif evidence == "balances":
        _tally_balances_only(tally, inputs, figures)
    else:
        unverified = True
        tally.notes.insert(
            0,
            "the provider's data could not be read, so nothing was verified; retry "
            "`batcher report BATCH` once the provider answers",
        )
    return CurrencyReconciliation(
        currency=currency,
        orders=tally.orders,
        face_value=tally.face,
        cost=tally.cost,
        wallet_debits=tally.debits,
        discount=tally.discount,
        balances=_balance_span(inputs.runs, currency),
        orphans=len(mine),
        orphan_value=sum((o.order.face_value for o in mine), ZERO),
        verdict=_verdict(tally, unverified),
        reason=_reason(tally, evidence),
        unsettled=tally.unsettled(),
        fx_fees=tally.fx_fees,
        movement=tally.movement,
        wallet_orders=tally.charged,
    )


def _verdict(tally: _Tally, unverified: bool) -> Verdict:
    if tally.problems:
        return MISMATCH
    if unverified:
        return NOT_VERIFIED
    if tally.unsettled():
        return IN_PROGRESS
    return RECONCILED


def _tally_ledger(tally: _Tally, figures: CurrencyRows) -> None:
    tally.orders, tally.face = figures.orders, figures.face
    tally.charged, tally.cost, tally.discount = figures.charged, figures.cost, figures.discount
    if figures.missing_cost:
        tally.problems.append(f"{figures.missing_cost} order(s) have no cost in the ledger")
    for wallet, count in sorted(figures.paid_elsewhere.items()):
        tally.notes.append(f"{count} order(s) paid from the {wallet} wallet (no discount shown)")


def _tally_transactions(tally: _Tally, problems: Counter[str], lines: Sequence[WalletLine]) -> None:
    debits = flying = fx_fees = kept_value = stray_value = ZERO
    kept: set[str | None] = set()  # the order ids of attempts that kept money
    stray = 0
    for x in lines:  # one pass over the lines for everything the currency sums
        if x.currency != tally.currency:
            continue
        tx, status = x.transaction, x.status
        if tx is None:
            if status == ATTEMPT_CHARGED:
                kept.add(x.order_id)
            elif status == NO_ORDER:
                stray += 1
            continue
        if status in OWN_STATUSES:  # `x.own`
            debits += -tx.amount
            if tx.transaction_type in FX_FEE_TYPES:
                fx_fees += -tx.amount
        if status == IN_FLIGHT:
            flying += -tx.amount
        elif status == ATTEMPT_CHARGED:
            kept.add(x.order_id)
            kept_value += -tx.amount
        elif status == NO_ORDER:
            stray += 1
            stray_value += -tx.amount
    tally.debits = debits
    if tally.debits != tally.cost:
        tally.problems.append(
            f"ledger cost {tally.money(tally.cost)} ≠ wallet debits {tally.money(tally.debits)}"
            f" (difference {tally.money(tally.cost - tally.debits)})"
        )
    for kind, text in (
        (UNLISTED, "not listed by the provider"),
        (NO_DEBIT, "have no wallet transaction"),
        (DEBIT_DIFFERS, "were charged differently from the ledger's cost"),
        (LISTING_DIFFERS, "differ from the provider's record (currency or face value)"),
    ):
        if problems[kind]:
            tally.problems.append(f"{problems[kind]} order(s) {text}")
    tally.in_flight_debits = flying
    tally.fx_fees = fx_fees
    if kept:
        tally.problems.append(
            f"{len(kept)} order(s) of failed or unconfirmed attempts kept "
            f"{tally.money(kept_value)} (see the Wallet sheet)"
        )
    if stray:
        tally.problems.append(
            f"{stray} wallet debit(s) worth {tally.money(stray_value)} match no order"
        )


def problem_kinds(listed: bool, problems: Sequence[str]) -> list[str]:
    """The kinds of problem an order's check has, as the per-currency reasons count them."""
    kinds = [] if listed else [UNLISTED]
    if NO_TRANSACTION_PROBLEM in problems:
        kinds.append(NO_DEBIT)
    if any(p.startswith("wallet debit") for p in problems):
        kinds.append(DEBIT_DIFFERS)
    if any(p.startswith("the provider has") for p in problems):
        kinds.append(LISTING_DIFFERS)
    return kinds


def _tally_orphans(tally: _Tally, orphans: Sequence[Orphan]) -> None:
    if not orphans:
        return
    value = sum((o.order.face_value for o in orphans), ZERO)
    tally.problems.append(
        f"{len(orphans)} orphan order(s) worth {tally.money(value)} at the provider are not in "
        "the ledger (see Orphans)"
    )


def _tally_balance_movement(
    tally: _Tally, inputs: ReconcileInputs, lines: Sequence[WalletLine]
) -> None:
    """Each run's balance change, explained by the transactions in its window, by whose.

    Only what no transaction explains is a mismatch: another batch's debits or a
    top-up in the window are named, not flagged.
    """
    assert inputs.provider is not None
    status_of = {id(x.transaction): x.status for x in lines if x.transaction is not None}
    parts = dict.fromkeys(("moved", "own", "in_flight", "other_batches", "credits", "other"), ZERO)
    read = False
    for run in inputs.runs:
        if run.before is None or run.after is None:
            continue
        if tally.currency not in run.before or tally.currency not in run.after:
            continue
        read = True
        moved = run.after[tally.currency] - run.before[tally.currency]
        parts["moved"] += moved
        explained = ZERO
        start, end = run.window.start, run.window.end
        for tx in inputs.provider.transactions:
            moment = tx.timestamp
            if tx.currency != tally.currency or moment is None:
                continue
            if not start <= moment <= end:  # `run.window.contains(moment)`
                continue
            explained += tx.amount
            parts[_part_of(status_of.get(id(tx)), tx.amount)] += tx.amount
        if moved != explained:
            tally.problems.append(
                f"in run {run.run_id} the balance moved by {tally.money(moved)} but the wallet "
                f"transactions account for {tally.money(explained)} (unexplained "
                f"{tally.money(moved - explained)})"
            )
    if read:
        tally.movement = Movement(**parts)


def _part_of(status: str | None, amount: Decimal) -> str:
    if status in OWN_STATUSES:
        return "own"
    if status == IN_FLIGHT:
        return "in_flight"
    if status == OTHER_BATCH:
        return "other_batches"
    if status == CREDIT or (status is None and amount > 0):
        return "credits"
    return "other"


def _tally_balances_only(tally: _Tally, inputs: ReconcileInputs, figures: CurrencyRows) -> None:
    moved = ZERO
    for run in inputs.runs:
        if run.idle:
            continue
        if run.before is None or run.after is None:
            tally.problems.append(
                f"run {run.run_id} did not read the balances at both ends, so nothing was "
                "verified; run `batcher report` to match every transaction"
            )
            return
        moved += run.before.get(tally.currency, ZERO) - run.after.get(tally.currency, ZERO)
    tally.debits = moved
    if moved == tally.cost:
        return
    gap = moved - tally.cost
    flying, at_most = figures.flying_charged, figures.flying_at_most
    if flying and ZERO < gap <= at_most:
        # The orders in flight may already be paid: that is progress, not a mismatch.
        tally.in_flight_debits = gap
        tally.debits = tally.cost
        tally.notes.append(
            f"the wallet moved {tally.money(gap)} more than the confirmed orders cost; the "
            f"{flying} order(s) in flight (up to {tally.money(at_most)}) account for it"
        )
        return
    tally.problems.append(
        f"ledger cost {tally.money(tally.cost)} ≠ wallet balance movement "
        f"{tally.money(moved)} (difference {tally.money(tally.cost - moved)}); run "
        "`batcher report` to match every transaction and find the cause"
    )


def _tally_unsettled(tally: _Tally, figures: CurrencyRows) -> None:
    tally.in_flight, tally.unsent, tally.held = figures.in_flight, figures.unsent, figures.held
    if tally.in_flight:
        tally.notes.append(
            f"{tally.in_flight} order(s) still in flight, matched to their order requests: "
            "a rerun of the batch settles them"
        )
    if tally.unsent:
        tally.notes.append(f"{tally.unsent} row(s) not sent yet: a rerun of the batch sends them")
    if tally.held:
        tally.notes.append(
            f"{tally.held} row(s) held, never sent (possible duplicates): see the Failures sheet"
        )


def _reason(tally: _Tally, evidence: Evidence) -> str:
    if tally.problems:
        return "; ".join(tally.problems + tally.notes)
    if evidence == "balances":
        text = (
            f"ledger cost {tally.money(tally.cost)} equals the wallet's balance movement over "
            f"the {tally.charged} order(s) paid from this wallet; run `batcher report` for "
            "transaction-level matching"
        )
    else:
        text = (
            f"ledger cost {tally.money(tally.cost)} equals the wallet debits for the "
            f"{tally.charged} order(s) paid from this wallet; no orphans"
        )
        if tally.movement is not None and tally.movement.other_batches:
            text += (
                "; other batches' debits in the window: "
                f"{tally.money(-tally.movement.other_batches)}"
            )
    return "; ".join([text, *tally.notes])


def _balance_span(runs: Sequence[RunWindow], currency: str) -> BalanceSpan:
    first_to_last = sorted(runs, key=lambda r: r.window.start)
    last_to_first = sorted(runs, key=lambda r: r.window.start, reverse=True)
    befores = (r.before[currency] for r in first_to_last if r.before and currency in r.before)
    afters = (r.after[currency] for r in last_to_first if r.after and currency in r.after)
    return BalanceSpan(before=next(befores, None), after=next(afters, None))
