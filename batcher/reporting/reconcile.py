"""Three-way reconciliation: sheet rows ↔ ledger ↔ provider orders ↔ wallet transactions.

Pure functions over data the caller has already fetched; no I/O. Money is
Decimal from end to end and every comparison is exact, to the cent.

The scope is one batch: every order the ledger holds for it, over the time
windows of the batch's runs. Three legs:

- **sheet ↔ ledger**: the row counts by state add up to the rows in the sheet.
- **ledger ↔ provider orders**: each of the batch's orders is listed by the
  provider with the same currency and face value; a provider order created in
  a run window that no batch in the ledger placed is an **orphan** (say, a
  double order made outside batcher).
- **orders ↔ wallet**: each order has its wallet debit (matched by order id, or
  by transaction id), equal to the ledger's cost. A transaction may also settle
  a whole order request (one charge for many rows, as a payout order is paid):
  the rows no transaction names are matched by their `order_request_id`, and
  the request's net debit must equal the sum of those rows' costs. A debit that
  matches no order is flagged, and so is an order with no debit. Each run's
  balance movement must be explained by the transactions in its window.
- **earlier attempts**: a provider order whose reference is one of the batch's
  idempotency keys (chunk keys, of any attempt), or whose id or reference is one
  of its order request ids, is the batch's own, never an orphan. When no
  succeeded row holds it (a failed attempt), its wallet transactions must net
  to zero (the charge and its refund); money it kept is flagged.

When the listings were not fetched (`ReconcileInputs.provider is None`, as after
a large run), the orders ↔ wallet leg falls back to the balances each run read
at its start and end: the wallet must have moved by exactly the ledger's costs.
That proves no money left for anything else during the runs, but cannot name an
orphan; `batcher report` lists and matches everything.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from batcher.core.keys import MatchKey, match_key
from batcher.core.models import WalletTransaction
from batcher.core.money import format_money
from batcher.core.states import UNSETTLED_STATES
from batcher.ledger.store import RowRecord, count_states
from batcher.providers.base import ProviderOrder
from batcher.reporting.tally import currencies_in, currency_verdict
from batcher.reporting.verdicts import (
    ATTEMPT_CHARGED,
    COST_DIFFERS,
    CREDIT,
    MATCHED,
    MISMATCH,
    NO_ORDER,
    NO_TRANSACTION,
    NO_TRANSACTION_PROBLEM,
    ORPHAN,
    OTHER_BATCH,
    RECONCILED,
    REFUNDED_ATTEMPT,
    ZERO,
    Evidence,
    OrderCheck,
    Orphan,
    ProviderData,
    ReconcileInputs,
    Reconciliation,
    RunWindow,
    WalletLine,
    Window,
    charged_currency,
    ordered_rows,
    span,
)


def reconcile(inputs: ReconcileInputs) -> Reconciliation:
    """Reconcile one batch. Never raises on odd provider data: oddities become reasons."""
    in_sheet = [r for r in inputs.rows if r.in_sheet]
    counts = count_states(in_sheet)
    ordered = ordered_rows(inputs.rows)
    if inputs.provider is None:
        evidence: Evidence = "unavailable" if inputs.provider_error else "balances"
        checks: dict[str, OrderCheck] = {}
        lines: list[WalletLine] = []
        orphans: list[Orphan] = []
    else:
        evidence = "transactions"
        checks, lines, orphans = match_orders(inputs, ordered)
    currencies = [
        currency_verdict(currency, inputs, ordered, checks, lines, orphans, evidence)
        for currency in currencies_in(inputs.rows, lines, orphans)
    ]
    return Reconciliation(
        evidence=evidence,
        state_counts=counts,
        rows_in_sheet=len(in_sheet),
        sheet_rows=inputs.sheet_rows,
        currencies=currencies,
        checks=checks,
        wallet_lines=lines,
        orphans=orphans,
        provider_error=inputs.provider_error,
    )


def row_match_key(row: RowRecord) -> MatchKey:
    f = row.fields
    return match_key(
        f.get("product_code", ""), row.face_value, f.get("recipient_email", ""),
        f.get("recipient_name", ""),
    )  # fmt: skip


# ---------------------------------------------------------------------------
# Matching (the transaction-level evidence).


@dataclass
class _Index:
    """The provider's data, indexed for matching."""

    orders: dict[str, ProviderOrder]
    by_order: dict[str, list[WalletTransaction]]
    by_txid: dict[str, list[WalletTransaction]]

    @classmethod
    def of(cls, data: ProviderData) -> _Index:
        by_order: dict[str, list[WalletTransaction]] = defaultdict(list)
        by_txid: dict[str, list[WalletTransaction]] = defaultdict(list)
        for tx in data.transactions:
            if tx.order_id:
                by_order[tx.order_id].append(tx)
            elif tx.transaction_id:
                by_txid[tx.transaction_id].append(tx)
        return cls({o.order_id: o for o in data.orders}, by_order, by_txid)

    def transactions_for(self, row: RowRecord) -> list[WalletTransaction]:
        found = self.by_order.get(row.order_id or "")
        if found:
            return found
        return self.by_txid.get(row.transaction_id or "", [])


def _in_runs(runs: Sequence[RunWindow], moment: datetime | None) -> bool:
    return any(run.window.contains(moment) for run in runs)


def _net_debit(transactions: Iterable[WalletTransaction]) -> Decimal:
    """Purchases are negative amounts, refunds positive: the debit is minus their sum."""
    return -sum((tx.amount for tx in transactions), ZERO)


@dataclass(frozen=True)
class _Own:
    """What marks a provider order or transaction as the batch's own, over every attempt."""

    keys: frozenset[str]  # idempotency keys (chunk keys), every attempt
    requests: frozenset[str]  # order request ids, every attempt
    order_ids: frozenset[str]  # the order ids the batch's succeeded rows hold

    @classmethod
    def of(cls, inputs: ReconcileInputs, ordered: Sequence[RowRecord]) -> _Own:
        keys = {k for r in inputs.rows for k in (r.chunk_key, r.retry_group) if k}
        requests = {r.order_request_id for r in inputs.rows if r.order_request_id}
        return cls(
            frozenset(keys | set(inputs.attempt_keys)),
            frozenset(requests | set(inputs.request_ids)),
            frozenset(r.order_id for r in ordered if r.order_id),
        )

    def placed(self, order: ProviderOrder) -> bool:
        """The batch placed this order: in this attempt or an earlier one."""
        if order.order_id in self.order_ids or order.order_id in self.requests:
            return True
        return order.reference is not None and (
            order.reference in self.keys or order.reference in self.requests
        )


def match_orders(
    inputs: ReconcileInputs, ordered: Sequence[RowRecord]
) -> tuple[dict[str, OrderCheck], list[WalletLine], list[Orphan]]:
    assert inputs.provider is not None
    index = _Index.of(inputs.provider)
    checks: dict[str, OrderCheck] = {}
    lines: list[WalletLine] = []
    used: set[int] = set()
    unmatched: list[RowRecord] = []
    for row in ordered:
        transactions = index.transactions_for(row)
        if not transactions:
            unmatched.append(row)
            continue
        used.update(id(tx) for tx in transactions)
        check = _check_order(row, index.orders.get(row.order_id or ""), transactions)
        checks[row.row_key] = check
        lines.extend(_order_lines(row, check, transactions))
    # A transaction no row names may settle the rows' whole order request.
    by_request: dict[str, list[RowRecord]] = defaultdict(list)
    for row in unmatched:
        request = row.order_request_id
        settling = [tx for tx in index.by_order.get(request or "", []) if id(tx) not in used]
        if request and settling:
            by_request[request].append(row)
            continue
        check = _check_order(row, index.orders.get(row.order_id or ""), [])
        checks[row.row_key] = check
        lines.extend(_order_lines(row, check, []))
    for request, rows in by_request.items():
        transactions = [tx for tx in index.by_order[request] if id(tx) not in used]
        used.update(id(tx) for tx in transactions)
        request_checks, request_lines = _settle_request(request, rows, transactions, index)
        checks.update(request_checks)
        lines.extend(request_lines)
    own = _Own.of(inputs, ordered)
    orphans = _orphans(inputs, index, own)
    lines.extend(_attempt_lines(inputs, index, own, used))
    orphan_ids = {o.order.order_id for o in orphans}
    for tx in inputs.provider.transactions:
        if id(tx) not in used:
            line = _other_line(tx, inputs, orphan_ids)
            if line is not None:
                lines.append(line)
    lines.sort(key=_line_sort_key)
    return checks, lines, orphans


def _listing_problems(row: RowRecord, listed: ProviderOrder | None) -> list[str]:
    if listed is None:
        return ["not listed by the provider in the window"]
    if listed.currency != row.currency or listed.face_value != row.face_value:
        return [
            f"the provider has {format_money(listed.face_value, listed.currency or row.currency)}"
            f" {listed.currency}, the ledger {format_money(row.face_value, row.currency)}"
        ]
    return []


def _check_order(
    row: RowRecord, listed: ProviderOrder | None, transactions: Sequence[WalletTransaction]
) -> OrderCheck:
    problems = _listing_problems(row, listed)
    debit = _net_debit(transactions) if transactions else None
    currency = transactions[0].currency if transactions else None
    if debit is None:
        problems.append(NO_TRANSACTION_PROBLEM)
    elif row.cost is None:
        problems.append("the ledger has no cost for this order")
    elif debit != row.cost or currency != charged_currency(row):
        problems.append(
            f"wallet debit {format_money(debit, currency or row.currency)} "
            f"≠ ledger cost {format_money(row.cost, charged_currency(row))}"
        )
    return OrderCheck(row.row_key, listed is not None, debit, currency, tuple(problems))


def _settle_request(
    request: str,
    rows: Sequence[RowRecord],
    transactions: Sequence[WalletTransaction],
    index: _Index,
) -> tuple[dict[str, OrderCheck], list[WalletLine]]:
    """Transactions that settle a whole order request, against the sum of its rows' costs."""
    debit = _net_debit(transactions)
    paid_in = {tx.currency for tx in transactions}
    charged = {charged_currency(r) for r in rows}
    currency = transactions[0].currency
    cost = sum((r.cost for r in rows if r.cost is not None), ZERO)
    no_cost = any(r.cost is None for r in rows)
    agrees = not no_cost and debit == cost and paid_in == charged and len(paid_in) == 1
    problem = None
    if no_cost:
        problem = f"the ledger has no cost for every order of request {request}"
    elif not agrees:
        problem = (
            f"wallet debit {format_money(debit, currency)} for request {request} "
            f"≠ ledger cost {format_money(cost, sorted(charged)[0])} of its {len(rows)} order(s)"
        )
    checks: dict[str, OrderCheck] = {}
    for row in rows:
        problems = _listing_problems(row, index.orders.get(row.order_id or ""))
        if problem:
            problems.append(problem)
        share = row.cost if agrees else None
        checks[row.row_key] = OrderCheck(
            row.row_key, index.orders.get(row.order_id or "") is not None, share,
            currency if agrees else None, tuple(problems), request_id=request,
        )  # fmt: skip
    sources = sorted(r.source_row for r in rows)
    where = f"row {sources[0]}" if len(sources) == 1 else f"rows {sources[0]}–{sources[-1]}"
    note = f"settles request {request}: {len(rows)} order(s), {where}"
    status = MATCHED if agrees else COST_DIFFERS
    lines = [
        WalletLine(
            status, tx.currency, transaction=tx, ledger_cost=cost,
            difference=(debit - cost) if i == 0 else None, note=note, rows=tuple(rows),
        )
        for i, tx in enumerate(transactions)
    ]  # fmt: skip
    return checks, lines


def _order_lines(
    row: RowRecord, check: OrderCheck, transactions: Sequence[WalletTransaction]
) -> list[WalletLine]:
    currency = charged_currency(row)
    if not transactions:
        return [WalletLine(NO_TRANSACTION, currency, row=row, ledger_cost=row.cost)]
    differs = check.debit != row.cost or check.debit_currency != currency
    difference = None if row.cost is None or check.debit is None else check.debit - row.cost
    status = COST_DIFFERS if differs else MATCHED
    return [
        WalletLine(
            status, tx.currency, transaction=tx, row=row, ledger_cost=row.cost,
            difference=difference if i == 0 else None,
        )
        for i, tx in enumerate(transactions)
    ]  # fmt: skip


def _attempt_lines(
    inputs: ReconcileInputs, index: _Index, own: _Own, used: set[int]
) -> list[WalletLine]:
    """The wallet side of the batch's orders no succeeded row holds (failed attempts).

    A failed attempt's charge and refund net to zero; anything else it kept is flagged.
    """
    assert inputs.provider is not None
    attempts = {
        o.order_id
        for o in index.orders.values()
        if own.placed(o) and o.order_id not in own.order_ids
    }
    groups: dict[str, list[WalletTransaction]] = defaultdict(list)
    for tx in inputs.provider.transactions:
        if id(tx) in used:
            continue
        if tx.order_id and (tx.order_id in attempts or tx.order_id in own.requests):
            groups[tx.order_id].append(tx)
        elif tx.reference and tx.reference in own.keys:
            groups[tx.order_id or tx.reference].append(tx)
    unsettled = _unsettled_by_attempt(inputs.rows)
    lines: list[WalletLine] = []
    for key, transactions in groups.items():
        used.update(id(tx) for tx in transactions)
        net = _net_debit(transactions)
        currency = transactions[0].currency
        if net == 0 and len({tx.currency for tx in transactions}) == 1:
            status, note = REFUNDED_ATTEMPT, f"order {key}: charged and refunded, nets to zero"
        else:
            status = ATTEMPT_CHARGED
            order = index.orders.get(key)
            row = unsettled.get(key) or unsettled.get(order.reference if order else None)
            note = f"order {key} of this batch kept {format_money(net, currency)}"
            if row is not None:
                note += (
                    f"; row {row.source_row} is still unconfirmed ({row.state}): rerun the "
                    "batch to settle it"
                )
            else:
                note += " but no succeeded row holds it"
        lines.extend(
            WalletLine(status, tx.currency, transaction=tx, note=note) for tx in transactions
        )
    return lines


def _unsettled_by_attempt(rows: Sequence[RowRecord]) -> dict[str | None, RowRecord]:
    found: dict[str | None, RowRecord] = {}
    for row in rows:
        if row.state in UNSETTLED_STATES:
            for key in (row.chunk_key, row.order_request_id, row.order_id):
                if key:
                    found[key] = row
    return found


def _orphans(inputs: ReconcileInputs, index: _Index, own: _Own) -> list[Orphan]:
    """Provider orders no batch in the ledger placed, created (or charged) in a run window."""
    unsettled = _unsettled_by_key(inputs.rows)
    found: list[Orphan] = []
    for order in index.orders.values():
        if own.placed(order) or order.order_id in inputs.other_batches:
            continue
        if order.reference and order.reference in inputs.other_batches:
            continue
        transactions = index.by_order.get(order.order_id, [])
        charged_in_window = any(_in_runs(inputs.runs, tx.timestamp) for tx in transactions)
        if not (_in_runs(inputs.runs, order.created_at) or charged_in_window):
            continue
        debit = _net_debit(transactions) if transactions else None
        found.append(Orphan(order, debit, _orphan_note(order, unsettled)))
    found.sort(key=lambda o: (o.order.created_at is None, o.order.created_at, o.order.order_id))
    return found


def _unsettled_by_key(rows: Sequence[RowRecord]) -> dict[tuple[str, ...], RowRecord]:
    return {row_match_key(r): r for r in rows if r.state in UNSETTLED_STATES}


def _orphan_note(order: ProviderOrder, unsettled: Mapping[tuple[str, ...], RowRecord]) -> str:
    key = match_key(
        order.product_code, order.face_value, order.recipient_email, order.recipient_name
    )
    row = unsettled.get(key)
    if row is not None:
        return (
            f"looks like row {row.source_row}, whose order is still unconfirmed ({row.state}): "
            "rerun the batch to settle it"
        )
    return "not placed by batcher: an order made outside batcher (a double order?)"


def _other_line(
    tx: WalletTransaction, inputs: ReconcileInputs, orphan_ids: set[str]
) -> WalletLine | None:
    """A transaction that is not one of the batch's orders' (None: outside every window)."""
    if tx.order_id and tx.order_id in orphan_ids:
        return WalletLine(ORPHAN, tx.currency, transaction=tx, note="see the Orphans sheet")
    if not _in_runs(inputs.runs, tx.timestamp):
        return None
    if tx.order_id and tx.order_id in inputs.other_batches:
        batch = inputs.other_batches[tx.order_id]
        return WalletLine(OTHER_BATCH, tx.currency, transaction=tx, note=f"batch {batch}")
    if tx.amount > 0:
        return WalletLine(CREDIT, tx.currency, transaction=tx, note=tx.transaction_type)
    note = f"order {tx.order_id} is unknown" if tx.order_id else "no order id"
    return WalletLine(NO_ORDER, tx.currency, transaction=tx, note=note)


def _line_sort_key(line: WalletLine) -> tuple[bool, datetime | str, str]:
    moment = line.timestamp
    return (moment is None, moment or "", line.order_id or "")


# The reports name the reconciliation's data from here; it lives in verdicts.py.
__all__ = [
    "ATTEMPT_CHARGED",
    "COST_DIFFERS",
    "CREDIT",
    "MATCHED",
    "MISMATCH",
    "NO_ORDER",
    "NO_TRANSACTION",
    "ORPHAN",
    "OTHER_BATCH",
    "RECONCILED",
    "REFUNDED_ATTEMPT",
    "OrderCheck",
    "ProviderData",
    "ReconcileInputs",
    "Reconciliation",
    "RunWindow",
    "WalletLine",
    "Window",
    "charged_currency",
    "ordered_rows",
    "reconcile",
    "span",
]
