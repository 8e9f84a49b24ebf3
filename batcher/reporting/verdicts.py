"""What reconciliation reads and answers: run windows, provider listings, order checks,
wallet lines and the verdicts per currency and per batch (plain data)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Final, Literal

from batcher.core.models import WalletTransaction
from batcher.ledger.records import SettledRow
from batcher.ledger.store import RowRecord, parse_ts
from batcher.providers.base import ProviderOrder

RECONCILED: Final = "RECONCILED"
IN_PROGRESS: Final = "IN PROGRESS"
NOT_VERIFIED: Final = "NOT VERIFIED"
MISMATCH: Final = "MISMATCH"
ZERO = Decimal(0)

#: RECONCILED: every order and debit matched to the cent. IN PROGRESS: nothing
#: unexplained, but some orders are still in flight (a rerun settles them).
#: NOT VERIFIED: the provider could not be read. MISMATCH: a real, unexplained difference.
Verdict = Literal["RECONCILED", "IN PROGRESS", "NOT VERIFIED", "MISMATCH"]
#: worst first: a batch takes the worst verdict of its currencies
VERDICT_ORDER: Final = (MISMATCH, NOT_VERIFIED, IN_PROGRESS, RECONCILED)
Evidence = Literal["transactions", "balances", "unavailable"]

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
#: the debit of an order the batch sent but has not yet confirmed (matched to its row)
IN_FLIGHT = "in flight"
FLAGGED_STATUSES = frozenset({COST_DIFFERS, NO_TRANSACTION, NO_ORDER, ORPHAN, ATTEMPT_CHARGED})
NO_TRANSACTION_PROBLEM = "no wallet transaction"
#: statuses whose transactions are the batch's own money (summed as its wallet debits)
OWN_STATUSES = frozenset({MATCHED, COST_DIFFERS, REFUNDED_ATTEMPT, ATTEMPT_CHARGED})
#: transaction types that are FX fees (shown in a column of their own)
FX_FEE_TYPES = frozenset({"fx_fee"})


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
    #: the rows a report shows (in the sheet, then orders no longer in it), in that
    #: order; iterable more than once (`BatchRows` reads them a page at a time)
    rows: Iterable[RowRecord]
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
    #: the order's row: a `SettledRow` when read light for matching (no cells decoded)
    row: RowRecord | SettledRow | None = None
    ledger_cost: Decimal | None = None
    difference: Decimal | None = None  # wallet debit - ledger cost, for the order
    note: str = ""
    #: the rows a request-level transaction settles (`row` is None then)
    rows: tuple[RowRecord | SettledRow, ...] = ()

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
class InFlight:
    """A provider order the batch sent but has not confirmed yet: never an orphan."""

    order: ProviderOrder
    row: RowRecord
    debit: Decimal | None


@dataclass(frozen=True)
class Movement:
    """A currency's balance movement over the batch's runs, explained line by line.

    Every figure is signed as the wallet sees it (money out negative). `moved` is
    the sum over runs of balance after - balance before; the parts are the wallet
    transactions in those runs' windows, by whose they are. `unexplained` is what
    is left; only a non-zero one is a mismatch.
    """

    moved: Decimal
    own: Decimal  # this batch's confirmed orders and earlier attempts
    in_flight: Decimal  # this batch's orders still in flight
    other_batches: Decimal  # other batches in this ledger
    credits: Decimal  # top-ups and other credits
    other: Decimal  # orphans and debits that match no order

    @property
    def unexplained(self) -> Decimal:
        explained = self.own + self.in_flight + self.other_batches + self.credits + self.other
        return self.moved - explained


@dataclass(frozen=True)
class BalanceSpan:
    """A wallet's balance at the start of the batch's first run and at the end of its last.

    Either is None when no run read it.
    """

    before: Decimal | None = None
    after: Decimal | None = None


@dataclass(frozen=True)
class Unsettled:
    """A currency's rows the batch has not settled yet: a rerun of the batch settles them."""

    in_flight: int = 0  # rows sent and not yet confirmed
    in_flight_debits: Decimal = ZERO  # what the wallet already paid for them
    unsent: int = 0  # rows not sent yet (pending or planned)

    def __bool__(self) -> bool:
        return bool(self.in_flight or self.unsent or self.in_flight_debits)


@dataclass(frozen=True)
class CurrencyReconciliation:
    currency: str
    orders: int
    face_value: Decimal
    cost: Decimal  # what the ledger says the wallet was charged
    wallet_debits: Decimal | None  # what the provider's transactions (or balances) say
    discount: Decimal  # face value - cost: positive a discount, negative a fee
    balances: BalanceSpan
    orphans: int
    orphan_value: Decimal
    verdict: Verdict
    reason: str
    unsettled: Unsettled = Unsettled()  # what of this currency is still in flight or unsent
    fx_fees: Decimal = ZERO  # FX fee debits in this wallet, part of `wallet_debits`
    movement: Movement | None = None  # None: the balances were not read at both ends
    #: orders this currency's wallet paid for (cross-currency cards of other currencies too)
    wallet_orders: int = 0

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
    in_flight: Sequence[InFlight] = ()
    #: the batch's orders from earlier sheets, no longer in today's (a reused batch name)
    earlier_orders: int = 0

    @property
    def counts_add_up(self) -> bool:
        counted = sum(self.state_counts.values())
        return counted == self.rows_in_sheet and (
            self.sheet_rows is None or counted == self.sheet_rows
        )

    @property
    def verdict(self) -> Verdict:
        if not self.counts_add_up:
            return MISMATCH
        if self.provider_error:
            return NOT_VERIFIED
        found = {c.verdict for c in self.currencies}
        return next((v for v in VERDICT_ORDER if v in found), RECONCILED)

    @property
    def reason(self) -> str:
        if not self.counts_add_up:
            return (
                f"the row counts ({sum(self.state_counts.values())}) do not add up to the "
                f"rows in the sheet ({self.sheet_rows if self.sheet_rows is not None else '?'})"
            )
        if self.provider_error:
            return (
                f"the provider's data could not be read ({self.provider_error}), so nothing "
                "was verified; retry `batcher report BATCH` once the provider answers"
            )
        bad = [c.currency for c in self.currencies if c.verdict == MISMATCH]
        if bad:
            return "unexplained difference in " + ", ".join(bad) + " (see Per currency)"
        waiting = sum(c.unsettled.in_flight for c in self.currencies)
        unsent = sum(c.unsettled.unsent for c in self.currencies)
        if waiting or unsent or any(c.verdict == IN_PROGRESS for c in self.currencies):
            parts = []
            if waiting:
                parts.append(f"{waiting} order(s) still in flight, matched to their order requests")
            if unsent:
                parts.append(f"{unsent} row(s) not sent yet")
            parts.append("what was ordered matches; a rerun of the batch settles the rest")
            return "; ".join(parts)
        if any(c.verdict == NOT_VERIFIED for c in self.currencies):
            return "some currencies could not be verified (see Per currency)"
        return "every currency reconciles to the cent"


def span(windows: Sequence[RunWindow]) -> Window | None:
    """From the first run's start to the last run's end; None without runs."""
    if not windows:
        return None
    return Window(min(w.window.start for w in windows), max(w.window.end for w in windows))


def ordered_rows(rows: Iterable[RowRecord]) -> list[RowRecord]:
    """The batch's orders: rows that succeeded here, in the sheet or no longer in it."""
    return [r for r in rows if r.state == "succeeded" and r.order_id]


def charged_currency(row: RowRecord | SettledRow) -> str:
    return row.cost_currency or row.currency
