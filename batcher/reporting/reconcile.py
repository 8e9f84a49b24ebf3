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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Final, Literal

from batcher.core.keys import MatchKey, match_key
from batcher.core.models import WalletTransaction
from batcher.core.money import format_money
from batcher.core.states import UNSETTLED_STATES
from batcher.ledger.store import RowRecord, count_states, parse_ts
from batcher.providers.base import ProviderOrder

RECONCILED: Final = "RECONCILED"
MISMATCH: Final = "MISMATCH"
ZERO = Decimal(0)

Verdict = Literal["RECONCILED", "MISMATCH"]
Evidence = Literal["transactions", "balances", "unavailable"]
#: rows whose order may exist at the provider although the ledger has no order id yet

# Wallet line statuses. Flagged ones make their currency MISMATCH.
MATCHED = "matched"
COST_DIFFERS = "cost differs"
NO_TRANSACTION = "order has no wallet transaction"
NO_ORDER = "debit matches no order"
ORPHAN = "orphan order"
OTHER_BATCH = "another batch"
CREDIT = "credit"
REFUNDED_ATTEMPT = "earlier attempt, refunded"
ATTEMPT_CHARGED = "attempt charged, no order in the ledger"
FLAGGED_STATUSES = frozenset({COST_DIFFERS, NO_TRANSACTION, NO_ORDER, ORPHAN, ATTEMPT_CHARGED})
NO_TRANSACTION_PROBLEM = "no wallet transaction"
#: statuses whose transactions are the batch's own money (summed as its wallet debits)
OWN_STATUSES = frozenset({MATCHED, COST_DIFFERS, REFUNDED_ATTEMPT, ATTEMPT_CHARGED})


@dataclass(frozen=True)
class Window:
    """A closed time interval, in aware UTC datetimes."""

    start: datetime
    end: datetime

    def contains(self, moment: datetime | None) -> bool:
        """A moment the provider did not give is taken as inside: it cannot be ruled out."""
        return moment is None or self.start <= moment <= self.end


@dataclass(frozen=True)
class RunWindow:
    """One run of the batch: its window and the balances read at its start and end.

    `after` is None when the run did not read the balances again at its end. An
    `idle` run sent, polled and looked up nothing, so the batch's orders cannot
    have moved money during it.
    """

    run_id: str
    window: Window
    before: Mapping[str, Decimal] | None = None
    after: Mapping[str, Decimal] | None = None
    idle: bool = False


@dataclass(frozen=True)
class ProviderData:
    """What the provider listed for the batch's time span (with a margin)."""

    orders: Sequence[ProviderOrder]
    transactions: Sequence[WalletTransaction]


@dataclass(frozen=True)
class ReconcileInputs:
    rows: Sequence[RowRecord]  # every ledger row of the batch, in the sheet or not
    runs: Sequence[RunWindow]
    provider: ProviderData | None = None  # None: the listings were not fetched
    sheet_rows: int | None = None  # rows in the source sheet, when known
    other_batches: Mapping[str, str] = field(default_factory=dict)  # order id -> batch
    provider_error: str | None = None  # why the provider's data is missing
    #: the batch's idempotency keys (chunk keys) of every attempt, beyond the rows' own
    attempt_keys: frozenset[str] = frozenset()
    #: the batch's order request ids of every attempt, beyond the rows' own
    request_ids: frozenset[str] = frozenset()


@dataclass(frozen=True)
class OrderCheck:
    """One of the batch's orders, as the provider and the wallet see it."""

    row_key: str
    listed: bool  # the provider listed the order
    debit: Decimal | None  # net wallet debit for the order (purchases less refunds)
    debit_currency: str | None
    problems: tuple[str, ...] = ()
    #: set when the debit was matched for the row's whole order request (its share shown)
    request_id: str | None = None


@dataclass(frozen=True)
class WalletLine:
    """A wallet transaction in the window, or an order with no transaction at all."""

    status: str
    currency: str
    transaction: WalletTransaction | None = None
    row: RowRecord | None = None
    ledger_cost: Decimal | None = None
    difference: Decimal | None = None  # wallet debit - ledger cost, for the order
    note: str = ""
    #: the rows a request-level transaction settles (`row` is None then)
    rows: tuple[RowRecord, ...] = ()

    @property
    def flagged(self) -> bool:
        return self.status in FLAGGED_STATUSES

    @property
    def own(self) -> bool:
        """The transaction is the batch's own money: one of its orders or attempts."""
        return self.status in OWN_STATUSES and self.transaction is not None

    @property
    def order_id(self) -> str | None:
        if self.transaction is not None and self.transaction.order_id:
            return self.transaction.order_id
        return self.row.order_id if self.row is not None else None

    @property
    def timestamp(self) -> datetime | None:
        if self.transaction is not None:
            return self.transaction.timestamp
        return parse_ts(self.row.succeeded_at) if self.row is not None else None


@dataclass(frozen=True)
class Orphan:
    order: ProviderOrder
    debit: Decimal | None
    note: str


@dataclass(frozen=True)
class CurrencyReconciliation:
    currency: str
    orders: int
    face_value: Decimal
    cost: Decimal  # what the ledger says the wallet was charged
    wallet_debits: Decimal | None  # what the provider's transactions (or balances) say
    discount: Decimal  # face value - cost: positive a discount, negative a fee
    balance_before: Decimal | None
    balance_after: Decimal | None
    orphans: int
    orphan_value: Decimal
    verdict: Verdict
    reason: str

    @property
    def difference(self) -> Decimal | None:
        """Ledger cost minus wallet debits: zero when they agree to the cent."""
        return None if self.wallet_debits is None else self.cost - self.wallet_debits


@dataclass(frozen=True)
class Reconciliation:
    evidence: Evidence
    state_counts: Mapping[str, int]
    rows_in_sheet: int
    sheet_rows: int | None
    currencies: Sequence[CurrencyReconciliation]
    checks: Mapping[str, OrderCheck]  # row key -> check, for the batch's orders
    wallet_lines: Sequence[WalletLine]
    orphans: Sequence[Orphan]
    provider_error: str | None = None

    @property
    def counts_add_up(self) -> bool:
        counted = sum(self.state_counts.values())
        return counted == self.rows_in_sheet and (
            self.sheet_rows is None or counted == self.sheet_rows
        )

    @property
    def verdict(self) -> Verdict:
        if self.provider_error or not self.counts_add_up:
            return MISMATCH
        if any(c.verdict == MISMATCH for c in self.currencies):
            return MISMATCH
        return RECONCILED

    @property
    def reason(self) -> str:
        if self.provider_error:
            return f"the provider's data could not be read: {self.provider_error}"
        if not self.counts_add_up:
            return (
                f"the row counts ({sum(self.state_counts.values())}) do not add up to the "
                f"rows in the sheet ({self.sheet_rows if self.sheet_rows is not None else '?'})"
            )
        bad = [c.currency for c in self.currencies if c.verdict == MISMATCH]
        if bad:
            return "mismatch in " + ", ".join(bad)
        return "every currency reconciles to the cent"


# ---------------------------------------------------------------------------
# Entry points.


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
        checks, lines, orphans = _match(inputs, ordered)
    currencies = [
        _currency(currency, inputs, ordered, checks, lines, orphans, evidence)
        for currency in _currencies(inputs.rows, lines, orphans)
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


# ---------------------------------------------------------------------------
# Small helpers shared with the reports.


def span(windows: Sequence[RunWindow]) -> Window | None:
    """From the first run's start to the last run's end; None without runs."""
    if not windows:
        return None
    return Window(min(w.window.start for w in windows), max(w.window.end for w in windows))


def ordered_rows(rows: Iterable[RowRecord]) -> list[RowRecord]:
    """The batch's orders: rows that succeeded here, in the sheet or no longer in it."""
    return [r for r in rows if r.state == "succeeded" and r.order_id]


def charged_currency(row: RowRecord) -> str:
    return row.cost_currency or row.currency


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


def _match(
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


# ---------------------------------------------------------------------------
# Per-currency totals and verdicts.


def _currencies(
    rows: Sequence[RowRecord], lines: Sequence[WalletLine], orphans: Sequence[Orphan]
) -> list[str]:
    found = {r.currency for r in rows if r.state != "invalid" and r.currency}
    found |= {charged_currency(r) for r in ordered_rows(rows)}
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
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def money(self, amount: Decimal) -> str:
        return format_money(amount, self.currency)


def _currency(
    currency: str,
    inputs: ReconcileInputs,
    ordered: Sequence[RowRecord],
    checks: Mapping[str, OrderCheck],
    lines: Sequence[WalletLine],
    orphans: Sequence[Orphan],
    evidence: Evidence,
) -> CurrencyReconciliation:
    tally = _Tally(currency)
    _tally_ledger(tally, ordered)
    mine = [o for o in orphans if o.order.currency == currency]
    if evidence == "transactions":
        _tally_transactions(tally, ordered, checks, lines)
        _tally_orphans(tally, mine)
        _tally_balance_movement(tally, inputs)
    elif evidence == "balances":
        _tally_balances_only(tally, inputs.runs)
    else:
        tally.problems.append("the provider's data could not be read, so nothing was verified")
    _tally_unsettled(tally, inputs.rows)
    before, after = _first_before(inputs.runs, currency), _last_after(inputs.runs, currency)
    return CurrencyReconciliation(
        currency=currency,
        orders=tally.orders,
        face_value=tally.face,
        cost=tally.cost,
        wallet_debits=tally.debits,
        discount=tally.discount,
        balance_before=before,
        balance_after=after,
        orphans=len(mine),
        orphan_value=sum((o.order.face_value for o in mine), ZERO),
        verdict=MISMATCH if tally.problems else RECONCILED,
        reason=_reason(tally, evidence),
    )


def _tally_ledger(tally: _Tally, ordered: Sequence[RowRecord]) -> None:
    missing_cost = 0
    paid_elsewhere: dict[str, int] = defaultdict(int)
    for row in ordered:
        if row.currency == tally.currency:
            tally.orders += 1
            tally.face += row.face_value
            if charged_currency(row) != tally.currency:
                paid_elsewhere[charged_currency(row)] += 1
        if charged_currency(row) != tally.currency:
            continue
        tally.charged += 1
        if row.cost is None:
            missing_cost += 1
            continue
        tally.cost += row.cost
        if row.currency == tally.currency:
            tally.discount += row.face_value - row.cost
    if missing_cost:
        tally.problems.append(f"{missing_cost} order(s) have no cost in the ledger")
    for wallet, count in sorted(paid_elsewhere.items()):
        tally.notes.append(f"{count} order(s) paid from the {wallet} wallet (no discount shown)")


def _tally_transactions(
    tally: _Tally,
    ordered: Sequence[RowRecord],
    checks: Mapping[str, OrderCheck],
    lines: Sequence[WalletLine],
) -> None:
    mine = [r for r in ordered if charged_currency(r) == tally.currency]
    tally.debits = sum(
        (
            -line.transaction.amount
            for line in lines
            if line.own and line.transaction is not None and line.currency == tally.currency
        ),
        ZERO,
    )
    if tally.debits != tally.cost:
        tally.problems.append(
            f"ledger cost {tally.money(tally.cost)} ≠ wallet debits {tally.money(tally.debits)}"
            f" (difference {tally.money(tally.cost - tally.debits)})"
        )
    _count_problem(tally, mine, checks, lambda c: not c.listed, "not listed by the provider")
    _count_problem(
        tally, mine, checks, lambda c: NO_TRANSACTION_PROBLEM in c.problems,
        "have no wallet transaction",
    )  # fmt: skip
    _count_problem(
        tally, mine, checks,
        lambda c: any(p.startswith("wallet debit") for p in c.problems),
        "were charged differently from the ledger's cost",
    )  # fmt: skip
    _count_problem(
        tally, mine, checks,
        lambda c: any(p.startswith("the provider has") for p in c.problems),
        "differ from the provider's record (currency or face value)",
    )  # fmt: skip
    kept = [x for x in lines if x.status == ATTEMPT_CHARGED and x.currency == tally.currency]
    if kept:
        value = sum((-x.transaction.amount for x in kept if x.transaction), ZERO)
        tally.problems.append(
            f"{len({x.order_id for x in kept})} order(s) of failed or unconfirmed attempts kept "
            f"{tally.money(value)} (see the Wallet sheet)"
        )
    stray = [x for x in lines if x.status == NO_ORDER and x.currency == tally.currency]
    if stray:
        value = sum((-x.transaction.amount for x in stray if x.transaction), ZERO)
        tally.problems.append(
            f"{len(stray)} wallet debit(s) worth {tally.money(value)} match no order"
        )


def _count_problem(
    tally: _Tally,
    rows: Sequence[RowRecord],
    checks: Mapping[str, OrderCheck],
    test: Callable[[OrderCheck], bool],
    text: str,
) -> None:
    count = sum(1 for r in rows if r.row_key in checks and test(checks[r.row_key]))
    if count:
        tally.problems.append(f"{count} order(s) {text}")


def _tally_orphans(tally: _Tally, orphans: Sequence[Orphan]) -> None:
    if not orphans:
        return
    value = sum((o.order.face_value for o in orphans), ZERO)
    tally.problems.append(
        f"{len(orphans)} orphan order(s) worth {tally.money(value)} at the provider are not in "
        "the ledger (see Orphans)"
    )


def _tally_balance_movement(tally: _Tally, inputs: ReconcileInputs) -> None:
    """Each run's balance change must equal the sum of the transactions in its window."""
    assert inputs.provider is not None
    for run in inputs.runs:
        if run.before is None or run.after is None:
            continue
        if tally.currency not in run.before or tally.currency not in run.after:
            continue
        moved = run.after[tally.currency] - run.before[tally.currency]
        explained = sum(
            (
                tx.amount
                for tx in inputs.provider.transactions
                if tx.currency == tally.currency and tx.timestamp is not None
                and run.window.contains(tx.timestamp)
            ),
            ZERO,
        )  # fmt: skip
        if moved != explained:
            tally.problems.append(
                f"in run {run.run_id} the balance moved by {tally.money(moved)} but the wallet "
                f"transactions account for {tally.money(explained)}"
            )


def _tally_balances_only(tally: _Tally, runs: Sequence[RunWindow]) -> None:
    moved = ZERO
    for run in runs:
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
    if moved != tally.cost:
        tally.problems.append(
            f"ledger cost {tally.money(tally.cost)} ≠ wallet balance movement "
            f"{tally.money(moved)} (difference {tally.money(tally.cost - moved)}); run "
            "`batcher report` to match every transaction and find the cause"
        )


def _tally_unsettled(tally: _Tally, rows: Sequence[RowRecord]) -> None:
    count = sum(1 for r in rows if r.state in UNSETTLED_STATES and r.currency == tally.currency)
    if count:
        tally.notes.append(f"{count} row(s) still unconfirmed: rerun the batch to settle them")


def _reason(tally: _Tally, evidence: Evidence) -> str:
    if tally.problems:
        return "; ".join(tally.problems + tally.notes)
    if evidence == "balances":
        text = (
            f"ledger cost {tally.money(tally.cost)} equals the wallet's balance movement over "
            f"{tally.charged} order(s); run `batcher report` for transaction-level matching"
        )
    else:
        text = (
            f"ledger cost {tally.money(tally.cost)} equals the wallet debits for "
            f"{tally.charged} order(s); no orphans"
        )
    return "; ".join([text, *tally.notes])


def _first_before(runs: Sequence[RunWindow], currency: str) -> Decimal | None:
    for run in sorted(runs, key=lambda r: r.window.start):
        if run.before is not None and currency in run.before:
            return run.before[currency]
    return None


def _last_after(runs: Sequence[RunWindow], currency: str) -> Decimal | None:
    for run in sorted(runs, key=lambda r: r.window.start, reverse=True):
        if run.after is not None and currency in run.after:
            return run.after[currency]
    return None
