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

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from batcher.core.collector import collector_paused
from batcher.core.keys import MatchKey, match_key
from batcher.core.models import WalletTransaction
from batcher.core.money import format_money
from batcher.core.states import IN_FLIGHT_STATES, UNSETTLED_STATES
from batcher.ledger.records import SettledRow
from batcher.ledger.store import RowRecord
from batcher.providers.base import ProviderOrder
from batcher.reporting.row_facts import RowFacts
from batcher.reporting.row_source import BatchRows
from batcher.reporting.tally import ProblemCounts, currencies_in, currency_verdict, problem_kinds
from batcher.reporting.verdicts import (
    ATTEMPT_CHARGED,
    COST_DIFFERS,
    CREDIT,
    IN_FLIGHT,
    IN_PROGRESS,
    MATCHED,
    MISMATCH,
    NO_ORDER,
    NO_TRANSACTION,
    NO_TRANSACTION_PROBLEM,
    NOT_VERIFIED,
    ORPHAN,
    OTHER_BATCH,
    RECONCILED,
    REFUNDED_ATTEMPT,
    ZERO,
    Evidence,
    InFlight,
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

#: a row as matching reads it: whole, or light when it settled without a question
OrderRow = RowRecord | SettledRow


def reconcile(inputs: ReconcileInputs, facts: RowFacts | None = None) -> Reconciliation:
    """Reconcile one batch. Never raises on odd provider data: oddities become reasons.

    The rows are read through once, never all held at once: to match each order to
    the provider's listings, summing them (`RowFacts`) on the way unless the caller
    has `facts` already; without listings, only to sum them when needed."""
    return reconcile_and_sum(inputs, facts)[0]


def reconcile_and_sum(
    inputs: ReconcileInputs, facts: RowFacts | None = None
) -> tuple[Reconciliation, RowFacts]:
    """`reconcile`, and the rows' sums it used (summed here when `facts` is None)."""
    problems: ProblemCounts = {}
    if inputs.provider is None:
        facts = facts if facts is not None else RowFacts.of(inputs.rows)
        evidence: Evidence = "unavailable" if inputs.provider_error else "balances"
        checks: dict[str, OrderCheck] = {}
        lines: list[WalletLine] = []
        orphans: list[Orphan] = []
        in_flight: list[InFlight] = []
    else:
        evidence = "transactions"
        summing = facts is None
        facts = facts if facts is not None else RowFacts()
        with collector_paused():
            checks, lines, orphans, in_flight, problems = match_orders(inputs, facts, summing)
    currencies = [
        currency_verdict(currency, inputs, facts, problems, lines, orphans, evidence)
        for currency in currencies_in(facts, lines, orphans)
    ]
    reconciliation = Reconciliation(
        evidence=evidence,
        state_counts=dict(facts.state_counts),
        rows_in_sheet=facts.rows_in_sheet,
        sheet_rows=inputs.sheet_rows,
        currencies=currencies,
        checks=checks,
        wallet_lines=lines,
        orphans=orphans,
        provider_error=inputs.provider_error,
        in_flight=in_flight,
        earlier_orders=facts.earlier_orders,
    )
    return reconciliation, facts


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
    transactions: Sequence[WalletTransaction]  # all of them, as listed

    @classmethod
    def of(cls, data: ProviderData) -> _Index:
        by_order: dict[str, list[WalletTransaction]] = {}
        by_txid: dict[str, list[WalletTransaction]] = {}
        for tx in data.transactions:
            if tx.order_id:
                key, into = tx.order_id, by_order
            elif tx.transaction_id:
                key, into = tx.transaction_id, by_txid
            else:
                continue
            found = into.get(key)
            if found is None:
                into[key] = [tx]
            else:
                found.append(tx)
        return cls({o.order_id: o for o in data.orders}, by_order, by_txid, data.transactions)


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

    def placed(self, order: ProviderOrder) -> bool:
        """The batch placed this order: in this attempt or an earlier one."""
        if order.order_id in self.order_ids or order.order_id in self.requests:
            return True
        return order.reference is not None and (
            order.reference in self.keys or order.reference in self.requests
        )


class _OwnFound:
    """`_Own`, gathered a row at a time as the orders are matched."""

    def __init__(self) -> None:
        self.keys: set[str] = set()
        self.requests: set[str] = set()
        self.order_ids: set[str] = set()

    def own(self, inputs: ReconcileInputs) -> _Own:
        return _Own(
            frozenset(self.keys | set(inputs.attempt_keys)),
            frozenset(self.requests | set(inputs.request_ids)),
            frozenset(self.order_ids),
        )


def match_orders(
    inputs: ReconcileInputs, facts: RowFacts, summing: bool = False
) -> tuple[dict[str, OrderCheck], list[WalletLine], list[Orphan], list[InFlight], ProblemCounts]:
    assert inputs.provider is not None
    index = _Index.of(inputs.provider)
    checks = _Checks()
    lines: list[WalletLine] = []
    used: set[int] = set()
    unmatched: list[OrderRow] = []
    found = _OwnFound()
    keys, requests, order_ids = found.keys, found.requests, found.order_ids
    elsewhere = inputs.other_batches
    mine: set[str] = set()  # ids `other_batches` names that are this batch's own
    by_order, by_txid, orders = index.by_order, index.by_txid, index.orders
    # Settled rows come light (`SettledRow`): matching needs none of their cells.
    rows = inputs.rows.for_sums() if isinstance(inputs.rows, BatchRows) else inputs.rows
    for row in rows:  # one pass, a page at a time when read from the ledger
        if summing:
            facts.add(row)
        chunk_key, retry_group, request = row.chunk_key, row.retry_group, row.order_request_id
        if chunk_key:
            keys.add(chunk_key)
        if retry_group:
            keys.add(retry_group)
        if request:
            requests.add(request)
        order_id = row.order_id
        if elsewhere:
            for key in (order_id, request):
                if key and key in elsewhere:
                    mine.add(key)
        if row.state != "succeeded" or not order_id:
            continue
        order_ids.add(order_id)
        transactions = by_order.get(order_id) or by_txid.get(row.transaction_id or "")
        if not transactions:
            unmatched.append(row)
            continue
        listed = orders.get(order_id)
        if len(transactions) == 1:
            used.add(id(transactions[0]))
            matched = _matched(row, listed, transactions[0])
            if matched is not None:  # the common case: listed as it is, paid as recorded
                check, paid = matched
                checks.by_key[check.row_key] = check  # `checks.put`: no problem to count
                checks.problems[paid.currency]  # its wallet counts (the one that paid)
                lines.append(paid)
                continue
        else:
            used.update(id(tx) for tx in transactions)
        check = _check_order(row, listed, transactions)
        checks.put(row, check)
        lines.extend(_order_lines(row, check, transactions))
    # A transaction no row names may settle the rows' whole order request.
    by_request: dict[str, list[OrderRow]] = defaultdict(list)
    for row in unmatched:
        request = row.order_request_id
        settling = [tx for tx in index.by_order.get(request or "", []) if id(tx) not in used]
        if request and settling:
            by_request[request].append(row)
            continue
        check = _check_order(row, index.orders.get(row.order_id or ""), [])
        checks.put(row, check)
        lines.extend(_order_lines(row, check, []))
    for request, request_rows in by_request.items():
        transactions = [tx for tx in index.by_order[request] if id(tx) not in used]
        used.update(id(tx) for tx in transactions)
        request_checks, request_lines = _settle_request(request, request_rows, transactions, index)
        for row in request_rows:
            checks.put(row, request_checks[row.row_key])
        lines.extend(request_lines)
    if mine:  # the batch's own orders are never another batch's
        kept = {k: v for k, v in elsewhere.items() if k not in mine}
        inputs = dataclasses.replace(inputs, other_batches=kept)
    own = found.own(inputs)
    orphans, in_flight = _orphans(inputs, index, own, facts.unsettled)
    lines.extend(_attempt_lines(inputs, index, own, used, facts.unsettled))
    orphan_ids = {o.order.order_id for o in orphans}
    flying = {f.order.order_id: f for f in in_flight}
    for tx in index.transactions:
        if id(tx) not in used:
            line = _other_line(tx, inputs, orphan_ids, flying)
            if line is not None:
                lines.append(line)
    lines.sort(key=_line_sort_key)
    return checks.by_key, lines, orphans, in_flight, checks.problems


def _matched(
    row: OrderRow, listed: ProviderOrder | None, tx: WalletTransaction
) -> tuple[OrderCheck, WalletLine] | None:
    """An order's check and wallet line when nothing is wrong with it (listed with the
    ledger's currency and face value, one transaction that debits its cost from the
    wallet that pays); None otherwise (`_check_order` and `_order_lines` say what).
    The same check and line they give, in fewer steps: nearly every order is such."""
    cost = row.cost
    if listed is None or cost is None:
        return None
    currency = row.currency
    if listed.currency != currency or listed.face_value != row.face_value:
        return None
    debit = -(ZERO + tx.amount)  # `_net_debit` of the one transaction
    paid_in = tx.currency
    if debit != cost or paid_in != (row.cost_currency or currency):  # `charged_currency`
        return None
    # Made as the dataclasses' own __init__ would (frozen: a call per field), their
    # fields set at once: 100,000 of each at 100k rows (about 0.15 s less).
    check = _new_check(OrderCheck)
    check.__dict__.update(
        row_key=row.row_key, listed=True, debit=debit, debit_currency=paid_in, problems=(),
        request_id=None,
    )  # fmt: skip
    line = _new_line(WalletLine)
    line.__dict__.update(
        status=MATCHED, currency=paid_in, transaction=tx, row=row, ledger_cost=cost,
        difference=debit - cost, note="", rows=(),
    )  # fmt: skip
    return check, line


_new_check, _new_line = OrderCheck.__new__, WalletLine.__new__


class _Checks:
    """The orders' checks by row key, and their problems counted per paying wallet."""

    def __init__(self) -> None:
        self.by_key: dict[str, OrderCheck] = {}
        self.problems: defaultdict[str, Counter[str]] = defaultdict(Counter)

    def put(self, row: OrderRow, check: OrderCheck) -> None:
        self.by_key[row.row_key] = check
        counted = self.problems[charged_currency(row)]  # the wallet counts, problems or not
        if check.problems or not check.listed:  # most orders have none: nothing to count
            counted.update(problem_kinds(check.listed, check.problems))


def _listing_problems(row: OrderRow, listed: ProviderOrder | None) -> list[str]:
    if listed is None:
        return ["not listed by the provider in the window"]
    if listed.currency != row.currency or listed.face_value != row.face_value:
        return [
            f"the provider has {format_money(listed.face_value, listed.currency or row.currency)}"
            f" {listed.currency}, the ledger {format_money(row.face_value, row.currency)}"
        ]
    return []


def _check_order(
    row: OrderRow, listed: ProviderOrder | None, transactions: Sequence[WalletTransaction]
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
    rows: Sequence[OrderRow],
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
    row: OrderRow, check: OrderCheck, transactions: Sequence[WalletTransaction]
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
    inputs: ReconcileInputs,
    index: _Index,
    own: _Own,
    used: set[int],
    unsettled_rows: Sequence[RowRecord],
) -> list[WalletLine]:
    """The wallet side of the batch's orders no succeeded row holds (failed attempts).

    A failed attempt's charge and refund net to zero; anything else it kept is flagged.
    """
    assert inputs.provider is not None
    attempts = {
        o.order_id
        for o in index.orders.values()
        if o.order_id not in own.order_ids and own.placed(o)
    }
    groups: dict[str, list[WalletTransaction]] = defaultdict(list)
    for tx in inputs.provider.transactions:
        if id(tx) in used:
            continue
        if tx.order_id and (tx.order_id in attempts or tx.order_id in own.requests):
            groups[tx.order_id].append(tx)
        elif tx.reference and tx.reference in own.keys:
            groups[tx.order_id or tx.reference].append(tx)
    unsettled = _unsettled_by_attempt(unsettled_rows)
    lines: list[WalletLine] = []
    for key, transactions in groups.items():
        used.update(id(tx) for tx in transactions)
        net = _net_debit(transactions)
        currency = transactions[0].currency
        order = index.orders.get(key)
        row = unsettled.get(key) or unsettled.get(order.reference if order else None)
        if net == 0 and len({tx.currency for tx in transactions}) == 1:
            status, note = REFUNDED_ATTEMPT, f"order {key}: charged and refunded, nets to zero"
        elif row is not None and row.state in IN_FLIGHT_STATES:
            # The batch's own order, sent and not yet confirmed: money in flight, not lost.
            status = IN_FLIGHT
            note = (
                f"order {key} of row {row.source_row}, still in flight ({row.state}): "
                "a rerun of the batch settles it"
            )
        else:
            status = ATTEMPT_CHARGED
            note = f"order {key} of this batch kept {format_money(net, currency)}"
            if row is not None:
                note += (
                    f"; row {row.source_row} is still unconfirmed ({row.state}): rerun the "
                    "batch to settle it"
                )
            else:
                note += " but no succeeded row holds it"
        lines.extend(
            WalletLine(status, tx.currency, transaction=tx, note=note, row=row)
            for tx in transactions
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


def _orphans(
    inputs: ReconcileInputs, index: _Index, own: _Own, unsettled_rows: Sequence[RowRecord]
) -> tuple[list[Orphan], list[InFlight]]:
    """Provider orders no batch in the ledger placed, created (or charged) in a run window.

    An order that matches one of the batch's rows still in flight (same product,
    face value, email and name) is that row's order, created by its order request
    after the run stopped listening: it is in flight, never an orphan.
    """
    unsettled = _unsettled_by_key(unsettled_rows)
    found: list[Orphan] = []
    in_flight: list[InFlight] = []
    elsewhere = inputs.other_batches
    # The batch's own and other batches' orders set aside first, so only the rest (few,
    # usually none) are sorted, in the same order as sorting them all gave.
    held = own.order_ids  # most orders: `own.placed` at its first question
    candidates = [
        order
        for order in index.orders.values()
        if order.order_id not in held
        and not (own.placed(order) or order.order_id in elsewhere)
        and not (order.reference and order.reference in elsewhere)
    ]
    for order in sorted(candidates, key=_order_sort_key):
        transactions = index.by_order.get(order.order_id, [])
        debit = _net_debit(transactions) if transactions else None
        key = match_key(
            order.product_code, order.face_value, order.recipient_email, order.recipient_name
        )
        waiting = unsettled.get(key)
        if waiting:
            in_flight.append(InFlight(order, waiting.pop(0), debit))
            continue
        charged_in_window = any(_in_runs(inputs.runs, tx.timestamp) for tx in transactions)
        if not (_in_runs(inputs.runs, order.created_at) or charged_in_window):
            continue
        found.append(Orphan(order, debit, _orphan_note()))
    found.sort(key=lambda o: _order_sort_key(o.order))
    return found, in_flight


def _order_sort_key(order: ProviderOrder) -> tuple[bool, datetime | str, str]:
    return (order.created_at is None, order.created_at or "", order.order_id)


def _unsettled_by_key(rows: Sequence[RowRecord]) -> dict[tuple[str, ...], list[RowRecord]]:
    """The batch's rows in flight by match key (identical rows queue up in sheet order)."""
    found: dict[tuple[str, ...], list[RowRecord]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: r.source_row):
        if row.state in IN_FLIGHT_STATES:
            found[row_match_key(row)].append(row)
    return found


def _orphan_note() -> str:
    return "not placed by batcher: an order made outside batcher (a double order?)"


def _other_line(
    tx: WalletTransaction,
    inputs: ReconcileInputs,
    orphan_ids: set[str],
    in_flight: Mapping[str, InFlight],
) -> WalletLine | None:
    """A transaction that is not one of the batch's orders' (None: outside every window)."""
    flying = in_flight.get(tx.order_id or "")
    if flying is not None:
        note = (
            f"order of row {flying.row.source_row}, still in flight ({flying.row.state}): "
            "a rerun of the batch settles it"
        )
        return WalletLine(IN_FLIGHT, tx.currency, transaction=tx, row=flying.row, note=note)
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
    tx = line.transaction
    if tx is None:
        moment, order_id = line.timestamp, line.order_id
    else:  # `line.timestamp` and `line.order_id`, read directly: 100,000 lines are sorted
        moment = tx.timestamp
        order_id = tx.order_id or (line.row.order_id if line.row is not None else None)
    return (moment is None, moment or "", order_id or "")


# The reports name the reconciliation's data from here; it lives in verdicts.py.
__all__ = [
    "ATTEMPT_CHARGED",
    "COST_DIFFERS",
    "CREDIT",
    "IN_FLIGHT",
    "IN_PROGRESS",
    "MATCHED",
    "MISMATCH",
    "NOT_VERIFIED",
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
