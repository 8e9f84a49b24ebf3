"""The month-end statement: every batch's orders in a period, tied out to the wallet.

Pure: the caller reads the ledger and the provider (`services.statement`). For
each wallet currency:

- **closing** balance = today's balance less every transaction after the period;
- **opening** balance = closing less every transaction in the period;
- the period's transactions, each classified: top-up, batcher order (matched to
  a ledger order by order id, transaction id or order request id), FX fee, refund,
  or other (not placed by batcher);
- the tie-out: the ledger's cost of the period's orders equals the wallet
  debits matched to them, to the cent; and every balance a run read in the
  period (a checkpoint) equals today's balance less the transactions since,
  which proves the transaction list complete. A difference is shown, never hidden.

Spend is broken down per currency, product and cost centre, from the ledger.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from batcher.core.models import WalletTransaction
from batcher.core.money import format_money
from batcher.ledger.store import RowRecord, parse_ts
from batcher.reporting.verdicts import (
    FX_FEE_TYPES,
    MISMATCH,
    RECONCILED,
    ZERO,
    Window,
    charged_currency,
)

#: a pass-through header that holds the cost centre ("Cost centre", "cost_center", ...)
COST_CENTRE_HEADER = re.compile(r"^\s*cost[\s_-]*cent(re|er)\s*$", re.IGNORECASE)
NO_COST_CENTRE = "(none)"

TOP_UP, ORDER, FX_FEE, REFUND, OTHER_DEBIT, OTHER_CREDIT = (
    "top-up", "batcher order", "FX fee", "refund", "other debit (not batcher)", "other credit",
)  # fmt: skip
_TOP_UP_TYPES = frozenset({"funding", "top_up", "topup", "deposit", "credit"})
_REFUND_TYPES = frozenset({"refund"})


@dataclass(frozen=True)
class StatementOrder:
    """One order a batch placed in the period, as the ledger holds it."""

    batch: str
    row: RowRecord
    cost_centre: str


@dataclass(frozen=True)
class Checkpoint:
    """A balance a run read at a known moment (its start): a fixed point to tie out to."""

    run_id: str
    moment: datetime
    currency: str
    balance: Decimal


@dataclass(frozen=True)
class StatementLine:
    """One wallet transaction of the period, classified."""

    transaction: WalletTransaction
    kind: str
    batch: str = ""  # the batch whose order it pays, when it is batcher's


@dataclass(frozen=True)
class WalletTieOut:
    currency: str
    opening: Decimal
    top_ups: Decimal  # credits that are top-ups
    order_debits: Decimal  # net debits for batcher's orders (orders and their FX fees, refunds)
    fx_fees: Decimal  # the FX-fee part of `order_debits`
    other_debits: Decimal  # debits batcher did not place
    other_credits: Decimal  # credits that are neither top-ups nor refunds of batcher orders
    closing: Decimal
    ledger_cost: Decimal  # the ledger's cost of the period's orders paid from this wallet
    orders: int  # orders paid from this wallet in the period
    checkpoints: int = 0  # balances read by runs in the period
    checkpoint_errors: tuple[str, ...] = ()  # those the transactions do not explain

    @property
    def tied_balance(self) -> Decimal:
        """opening + every line; equal to `closing` when nothing is missing."""
        return (
            self.opening + self.top_ups - self.order_debits - self.other_debits + self.other_credits
        )

    @property
    def difference(self) -> Decimal:
        """Ledger cost minus the wallet debits matched to the orders: zero to the cent."""
        return self.ledger_cost - self.order_debits

    @property
    def verdict(self) -> str:
        agrees = self.difference == 0 and self.tied_balance == self.closing
        return RECONCILED if agrees and not self.checkpoint_errors else MISMATCH


@dataclass(frozen=True)
class SpendLine:
    currency: str  # the paying wallet
    product: str
    cost_centre: str
    orders: int
    face_value: Decimal
    card_currency: str
    cost: Decimal


@dataclass(frozen=True)
class Statement:
    period: Window
    batches: Sequence[str]
    wallets: Sequence[WalletTieOut]
    spend: Sequence[SpendLine]
    lines: Sequence[StatementLine]
    orders: Sequence[StatementOrder]

    @property
    def verdict(self) -> str:
        if any(w.verdict != RECONCILED for w in self.wallets):
            return MISMATCH
        return RECONCILED


def cost_centre_of(row: RowRecord) -> str:
    for header, value in row.passthrough.items():
        if COST_CENTRE_HEADER.match(header):
            return value.strip() or NO_COST_CENTRE
    return NO_COST_CENTRE


def period_orders(
    period: Window, rows_by_batch: Mapping[str, Sequence[RowRecord]]
) -> list[StatementOrder]:
    """The orders that succeeded in the period, every sheet of every batch."""
    found = []
    for batch, rows in sorted(rows_by_batch.items()):
        for row in rows:
            if row.state != "succeeded" or not row.order_id:
                continue
            moment = parse_ts(row.succeeded_at)
            if moment is None or not (period.start <= moment < period.end):
                continue
            found.append(StatementOrder(batch, row, cost_centre_of(row)))
    return found


def build_statement(
    period: Window,
    rows_by_batch: Mapping[str, Sequence[RowRecord]],
    transactions: Sequence[WalletTransaction],
    balances_now: Mapping[str, Decimal],
    checkpoints: Sequence[Checkpoint] = (),
) -> Statement:
    """`transactions`: every wallet transaction from the period's start until now;
    `checkpoints`: balances runs read in the period, each checked against them."""
    orders = period_orders(period, rows_by_batch)
    owner: dict[str, str] = {}
    for order in orders:
        for key in (order.row.order_id, order.row.transaction_id, order.row.order_request_id):
            if key:
                owner[key] = order.batch
    lines: list[StatementLine] = []
    after: dict[str, Decimal] = {}
    for tx in transactions:
        moment = tx.timestamp
        if moment is not None and moment >= period.end:
            after[tx.currency] = after.get(tx.currency, ZERO) + tx.amount
            continue
        if moment is not None and moment < period.start:
            continue
        lines.append(_classify(tx, owner))
    lines.sort(key=_line_key)
    currencies = sorted(
        set(balances_now)
        | {line.transaction.currency for line in lines}
        | {charged_currency(o.row) for o in orders}
    )
    wallets = [
        _checked(_tie_out(c, lines, orders, balances_now, after), transactions, balances_now,
                 [p for p in checkpoints if p.currency == c and period.contains(p.moment)])
        for c in currencies
    ]  # fmt: skip
    return Statement(
        period=period,
        batches=sorted({o.batch for o in orders}),
        wallets=wallets,
        spend=_spend(orders),
        lines=lines,
        orders=orders,
    )


def _classify(tx: WalletTransaction, owner: Mapping[str, str]) -> StatementLine:
    batch = owner.get(tx.order_id or "") or owner.get(tx.transaction_id or "") or ""
    kind_text = tx.transaction_type.lower()
    if batch:
        if kind_text in FX_FEE_TYPES:
            return StatementLine(tx, FX_FEE, batch)
        if kind_text in _REFUND_TYPES:
            return StatementLine(tx, REFUND, batch)
        return StatementLine(tx, ORDER, batch)
    if tx.amount > 0:
        return StatementLine(tx, TOP_UP if kind_text in _TOP_UP_TYPES else OTHER_CREDIT)
    return StatementLine(tx, OTHER_DEBIT)


def _line_key(line: StatementLine) -> tuple[bool, datetime | str, str]:
    moment = line.transaction.timestamp
    return (moment is None, moment or "", line.transaction.transaction_id or "")


def _tie_out(
    currency: str,
    lines: Sequence[StatementLine],
    orders: Sequence[StatementOrder],
    balances_now: Mapping[str, Decimal],
    after: Mapping[str, Decimal],
) -> WalletTieOut:
    mine = [line for line in lines if line.transaction.currency == currency]

    def total(*kinds: str) -> Decimal:
        return sum((x.transaction.amount for x in mine if x.kind in kinds), ZERO)

    closing = balances_now.get(currency, ZERO) - after.get(currency, ZERO)
    moved = sum((x.transaction.amount for x in mine), ZERO)
    paid = [o for o in orders if charged_currency(o.row) == currency]
    return WalletTieOut(
        currency=currency,
        opening=closing - moved,
        top_ups=total(TOP_UP),
        order_debits=-total(ORDER, FX_FEE, REFUND),
        fx_fees=-total(FX_FEE),
        other_debits=-total(OTHER_DEBIT),
        other_credits=total(OTHER_CREDIT),
        closing=closing,
        ledger_cost=sum((o.row.cost or ZERO for o in paid), ZERO),
        orders=len(paid),
    )


def _checked(
    wallet: WalletTieOut,
    transactions: Sequence[WalletTransaction],
    balances_now: Mapping[str, Decimal],
    checkpoints: Sequence[Checkpoint],
) -> WalletTieOut:
    """Each balance a run read must equal today's balance less every transaction since."""
    errors = []
    now = balances_now.get(wallet.currency, ZERO)
    for point in checkpoints:
        since = sum(
            (
                tx.amount
                for tx in transactions
                if tx.currency == wallet.currency and tx.timestamp is not None
                and tx.timestamp > point.moment
            ),
            ZERO,
        )  # fmt: skip
        derived = now - since
        if derived != point.balance:
            errors.append(
                f"run {point.run_id} read {format_money(point.balance, wallet.currency)} at "
                f"{point.moment:%Y-%m-%d %H:%M:%S}Z; the transactions give "
                f"{format_money(derived, wallet.currency)}"
            )
    return dataclasses.replace(
        wallet, checkpoints=len(checkpoints), checkpoint_errors=tuple(errors)
    )


def _spend(orders: Sequence[StatementOrder]) -> list[SpendLine]:
    totals: dict[tuple[str, str, str, str], list[Decimal]] = {}
    for o in orders:
        key = (charged_currency(o.row), o.row.fields.get("product_code", ""), o.cost_centre,
               o.row.currency)  # fmt: skip
        entry = totals.setdefault(key, [ZERO, ZERO, ZERO])
        entry[0] += 1
        entry[1] += o.row.face_value
        entry[2] += o.row.cost or ZERO
    return [
        SpendLine(wallet, product, centre, int(n), face, card, cost)
        for (wallet, product, centre, card), (n, face, cost) in sorted(totals.items())
    ]
