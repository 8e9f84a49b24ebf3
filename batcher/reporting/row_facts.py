"""What the end of a run and the reports need from every row, summed in one pass (pure).

The exit code, summary.json, the Summary sheet and the reconciliation's ledger leg
need counts and Decimal totals over the batch's rows, not the rows: `RowFacts`
is fed the rows in report order (the sheet's rows in sheet order, then the orders
of rows no longer in it) and keeps only those sums, the few rows still in flight
(matched to provider orders by reconciliation) and the keys of the rows that need
action. Its memory grows with the currencies, products and failures, not the batch.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from batcher.core.states import HELD_STATES, IN_FLIGHT_STATES, UNFINISHED_STATES, UNSETTLED_STATES
from batcher.ledger.records import SettledRow
from batcher.ledger.store import RowRecord, count_states
from batcher.reporting.failures import FailureTally
from batcher.reporting.outputs import CurrencyTotals
from batcher.reporting.row_source import BatchRows
from batcher.reporting.verdicts import ZERO, charged_currency

#: (product, paying wallet, orders, face value, cost, card currency)
Spend = tuple[str, str, int, Decimal, Decimal, str]


@dataclass
class CurrencyRows:
    """One currency's figures from the ledger's side (reconciliation's `_Tally` reads them)."""

    orders: int = 0  # orders with a face value in this currency
    charged: int = 0  # orders paid from this currency's wallet
    face: Decimal = ZERO
    cost: Decimal = ZERO
    discount: Decimal = ZERO
    missing_cost: int = 0  # orders paid from this wallet with no cost in the ledger
    paid_elsewhere: dict[str, int] = field(default_factory=dict)  # wallet -> orders
    in_flight: int = 0  # rows sent and not yet confirmed
    unsent: int = 0  # rows in the sheet not sent yet
    held: int = 0  # rows in the sheet held for a person
    flying_charged: int = 0  # rows in flight paid from this wallet
    flying_at_most: Decimal = ZERO  # what they may cost at most (estimate, else face value)


@dataclass
class RowFacts:
    """Counts and sums over a batch's rows; `add` each row once, in report order."""

    rows: int = 0  # every row a report shows
    rows_in_sheet: int = 0
    state_counts: dict[str, int] = field(default_factory=lambda: count_states(()))
    ordered: int = 0  # the batch's orders (succeeded with an order id)
    earlier_orders: int = 0  # of them, orders whose row left the sheet
    conflicts: int = 0  # rows in the sheet the sheet changed after they were sent
    #: error codes of the failed rows in the sheet, in order of first appearance
    failed_reasons: Counter[str] = field(default_factory=Counter)
    #: summary.json's totals: the rows in the sheet and the earlier sheets' orders
    totals: CurrencyTotals = field(default_factory=CurrencyTotals)
    by_currency: defaultdict[str, CurrencyRows] = field(
        default_factory=lambda: defaultdict(CurrencyRows)
    )
    currencies: set[str] = field(default_factory=set)  # with orders or valid rows
    style_currencies: set[str] = field(default_factory=set)  # every currency a row names
    #: (product, paying wallet, card currency) -> [orders, face value, cost]
    spend: dict[tuple[str, str, str], list[Any]] = field(default_factory=dict)
    #: rows not settled yet (planned or in flight): few, matched to provider orders
    unsettled: list[RowRecord] = field(default_factory=list)
    failures: FailureTally = field(default_factory=FailureTally)
    #: pass-through headers in the order the rows first name them: every row's, the sheet's
    passthrough_seen: dict[str, None] = field(default_factory=dict)
    sheet_passthrough: dict[str, None] = field(default_factory=dict)

    @classmethod
    def of(cls, rows: Iterable[RowRecord]) -> RowFacts:
        facts = cls()
        # A batch's settled rows are read light: only what is summed here.
        for row in rows.for_sums() if isinstance(rows, BatchRows) else rows:
            facts.add(row)
        return facts

    def add(self, row: RowRecord | SettledRow) -> None:
        if type(row) is SettledRow:
            # settled without a question: never in flight, unsent, held or failing
            self._count_settled(row, row.product_code)
            return
        assert isinstance(row, RowRecord)
        if row.state == "succeeded" and not row.conflict:
            # a whole record settled without a question sums as its `SettledRow` would
            # (as `_add_whole` sums it: no failure, nothing in flight): nearly every row
            self._count_settled(row, row.fields.get("product_code", ""))
            return
        self._add_whole(row)

    def _add_whole(self, row: RowRecord) -> None:
        """`add` for any whole record, whatever its state."""
        state, currency = row.state, row.currency
        ordered = state == "succeeded" and bool(row.order_id)
        self._count(row, row.fields.get("product_code", "") if ordered else "")
        mine = self.by_currency[currency]
        if state in IN_FLIGHT_STATES:
            mine.in_flight += 1
            wallet = self.by_currency[charged_currency(row)]
            wallet.flying_charged += 1
            wallet.flying_at_most += row.est_cost or row.face_value
        elif row.in_sheet and state in UNFINISHED_STATES:
            mine.unsent += 1
        elif row.in_sheet and state in HELD_STATES:
            mine.held += 1
        if state in UNSETTLED_STATES:
            self.unsettled.append(row)
        self.failures.add(row)

    def _count(self, row: RowRecord | SettledRow, product: str) -> None:
        """What every row adds, whole or light: its headers, currencies, sheet counts,
        totals and, ordered, its order (`product`: its product code)."""
        self.rows += 1
        for header in row.passthrough:
            self.passthrough_seen.setdefault(header, None)
        state, currency = row.state, row.currency
        ordered = state == "succeeded" and bool(row.order_id)
        if currency:
            self.style_currencies.add(currency)
        if row.cost_currency:
            self.style_currencies.add(row.cost_currency)
        if state != "invalid" and currency:
            self.currencies.add(currency)
        if row.in_sheet:
            self._add_in_sheet(row)
        if row.in_sheet or ordered:
            self.totals.add(row)
        if ordered:
            self._add_order(row, product)
        self.by_currency[currency]  # every row's currency has its entry, in this order

    def _count_settled(self, row: RowRecord | SettledRow, product: str) -> None:
        """`_count(row, product)` for a row succeeded without a conflict (light or
        whole; `product`: its product code), in fewer steps: nearly every row of a large
        batch is one."""
        self.rows += 1
        headers = row.passthrough
        for header in headers:
            self.passthrough_seen.setdefault(header, None)
        card, paid_in = row.currency, row.cost_currency
        if card:
            self.style_currencies.add(card)
        if paid_in:
            self.style_currencies.add(paid_in)
        if card:
            self.currencies.add(card)
        if row.in_sheet:
            self.rows_in_sheet += 1
            self.state_counts["succeeded"] = self.state_counts.get("succeeded", 0) + 1
            for header in headers:
                self.sheet_passthrough.setdefault(header, None)
            self.totals.add(row)
            if row.order_id:
                self._add_order(row, product)
        elif row.order_id:
            self.totals.add(row)
            self._add_order(row, product)
        self.by_currency[card]  # every row's currency has its entry, in this order

    def _add_in_sheet(self, row: RowRecord | SettledRow) -> None:
        self.rows_in_sheet += 1
        self.state_counts[row.state] = self.state_counts.get(row.state, 0) + 1
        for header in row.passthrough:
            self.sheet_passthrough.setdefault(header, None)
        if row.conflict:
            self.conflicts += 1
        if row.state == "failed":
            self.failed_reasons[row.error_code or "refused"] += 1

    def _add_order(self, row: RowRecord | SettledRow, product: str) -> None:
        self.ordered += 1
        if not row.in_sheet:
            self.earlier_orders += 1
        card, wallet = row.currency, row.cost_currency or row.currency  # charged_currency
        self.currencies.add(wallet)
        mine = self.by_currency[card]
        mine.orders += 1
        mine.face += row.face_value
        if wallet != card:
            mine.paid_elsewhere[wallet] = mine.paid_elsewhere.get(wallet, 0) + 1
        paying = self.by_currency[wallet]
        paying.charged += 1
        if row.cost is None:
            paying.missing_cost += 1
        else:
            paying.cost += row.cost
            if wallet == card:
                paying.discount += row.face_value - row.cost
        key = (product, wallet, card)
        entry = self.spend.get(key)
        if entry is None:
            entry = self.spend[key] = [0, ZERO, ZERO]
        entry[0] += 1
        entry[1] += row.face_value
        entry[2] += row.cost or ZERO

    def currency(self, currency: str) -> CurrencyRows:
        return self.by_currency.get(currency) or CurrencyRows()

    def passthrough(self, info: Mapping[str, Any] | None = None) -> list[str]:
        """As `passthrough_headers(rows, info)`: the sheet's order, then the rows'."""
        info = info or {}
        mapped = set((info.get("sheet_columns") or {}).values())
        seen: dict[str, None] = {}
        for header in info.get("sheet_headers") or []:
            if header not in mapped and header in self.passthrough_seen:
                seen[header] = None
        for header in self.passthrough_seen:
            seen.setdefault(header, None)
        return list(seen)

    def spend_by_product(self) -> list[Spend]:
        """(product, paying wallet, orders, face value, cost, card currency) of the batch's
        orders: the cost in the wallet that paid, the face value in the card's own currency."""
        return [
            (product, wallet, n, face, cost, card)
            for (product, wallet, card), (n, face, cost) in sorted(
                self.spend.items(),
                key=lambda item: (item[0][1], -item[1][2], item[0][0], item[0][2]),
            )
        ]
