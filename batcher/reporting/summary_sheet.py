"""The workbook's Summary sheet: verdict, the per-currency table, balance movement, row
counts, next steps, runs, and a native bar chart of spend by product per currency.

Built cell by cell with openpyxl (it is small); the row-heavy sheets are streamed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from openpyxl.cell.cell import Cell
from openpyxl.chart import BarChart, Reference
from openpyxl.styles import Alignment
from openpyxl.worksheet.worksheet import Worksheet

from batcher.reporting.cells import safe_cell
from batcher.reporting.reconcile import (
    IN_PROGRESS,
    MISMATCH,
    NOT_VERIFIED,
    RECONCILED,
    Reconciliation,
    span,
)
from batcher.reporting.report_model import ReportModel
from batcher.reporting.row_facts import Spend
from batcher.reporting.xlsx_stream import excel_datetime
from batcher.reporting.xlsx_style import (
    BAD_FILL,
    BOLD,
    DATETIME_FORMAT,
    GOOD_FILL,
    TITLE,
    UNKNOWN_FILL,
    WAIT_FILL,
    money_format,
    print_setup,
    style_header_row,
)

CURRENCY_HEADERS = (
    "Currency", "Orders", "Face value", "Cost (ledger)", "Wallet debits (provider)",
    "Discount / fee", "Balance before", "Balance after", "Difference", "Orphans",
    "Verdict", "Reason", "FX fees", "In flight (paid)", "Unexplained", "Paid from this wallet",
)  # fmt: skip
#: the per-currency table's money columns (1-based), each formatted in its currency
CURRENCY_MONEY_COLUMNS = (3, 4, 5, 6, 7, 8, 9, 13, 14, 15)
MOVEMENT_HEADERS = (
    "Currency", "Balance moved", "This batch's orders", "In flight", "Other batches",
    "Credits (top-ups, refunds)", "Other", "Unexplained",
)  # fmt: skip
STATE_HEADERS = ("State", "Rows")
PAID_HEADERS = ("Orders", "Count")
#: "Currency" is the paying wallet (Cost is in it); "Face value" is in "Card currency"
SPEND_HEADERS = ("Product", "Currency", "Orders", "Face value", "Cost", "Card currency")
NEXT_STEP_HEADERS = ("Rows", "Next step")
OUTSTANDING_HEADERS = ("Rows waiting", "Why")
RUN_HEADERS = ("Run", "Started (UTC)", "Finished (UTC)", "Exit code")


class _Cursor:
    """Writes the Summary top to bottom, one block at a time."""

    def __init__(self, sheet: Worksheet) -> None:
        self.sheet = sheet
        self.row = 1

    def put(self, values: Sequence[Any], *, formats: Mapping[int, str] | None = None) -> int:
        for col, value in enumerate(values, 1):
            if value is None:
                continue
            if isinstance(value, datetime):
                value = excel_datetime(value)
            cell = self.sheet.cell(row=self.row, column=col, value=safe_cell(value))
            if isinstance(value, datetime):
                cell.number_format = DATETIME_FORMAT
            if formats and col in formats:
                cell.number_format = formats[col]
        self.row += 1
        return self.row - 1

    def header(self, values: Sequence[str]) -> int:
        row = self.put(values)
        style_header_row(self.sheet, len(values), row)
        return row

    def title(self, text: str) -> None:
        self.sheet.cell(row=self.row, column=1, value=safe_cell(text)).font = BOLD
        self.row += 1

    def gap(self) -> None:
        self.row += 1


def write_summary(sheet: Worksheet, model: ReportModel) -> None:
    """Verdict and money first, then the charts, the rows, what to do, and the details."""
    cursor = _Cursor(sheet)
    rec = model.reconciliation
    title = safe_cell(f"Reconciliation: batch {model.batch}")
    sheet.cell(row=1, column=1, value=title).font = TITLE
    cursor.row = 2
    verdict_row = cursor.put(["Verdict", rec.verdict, rec.reason])
    _verdict_fill(sheet.cell(row=verdict_row, column=2), rec.verdict)
    sheet.merge_cells(start_row=verdict_row, start_column=3, end_row=verdict_row, end_column=12)
    width = sum(_SUMMARY_WIDTHS[c] for c in "CDEFGHIJKL")
    _wrap(sheet, verdict_row, 3, rec.reason, width)
    cursor.gap()
    _currency_table(cursor, rec)
    cursor.gap()
    spend = model.facts.spend_by_product()
    band_row, band = cursor.row, _Band.fit(spend)
    cursor.row += band.rows * band.count
    for block in (_movement_table, _state_counts, _outstanding, _next_steps, _about, _runs_table):
        block(cursor, model)
        cursor.gap()
    _add_charts(sheet, _spend_table(cursor, spend), band_row, band)
    for letter, width in _SUMMARY_WIDTHS.items():
        sheet.column_dimensions[letter].width = width
    sheet.freeze_panes = "A2"
    print_setup(sheet, pages_tall=0)


def _wrap(sheet: Worksheet, row: int, column: int, text: str, width: float) -> None:
    """Wrap a long text cell, and make its row tall enough: not every viewer auto-fits."""
    sheet.cell(row=row, column=column).alignment = Alignment(wrap_text=True, vertical="top")
    lines = max(1, -(-len(text) // max(1, int(width * 0.95))))
    current = sheet.row_dimensions[row].height or 15
    sheet.row_dimensions[row].height = max(current, 15 * lines)


def _verdict_fill(cell: Cell, verdict: str) -> None:
    fills = {RECONCILED: GOOD_FILL, IN_PROGRESS: WAIT_FILL, NOT_VERIFIED: UNKNOWN_FILL}
    cell.fill = fills.get(verdict, BAD_FILL)
    cell.font = BOLD


def _about(cursor: _Cursor, model: ReportModel) -> None:
    info, run, rec = model.info, model.latest_run, model.reconciliation
    whole = span([r.window for r in model.runs])
    evidence = {
        "transactions": "every order matched to the provider's orders and wallet transactions",
        "balances": "wallet balance movement per run (transactions not listed)",
        "unavailable": "none: the provider's data could not be read",
    }[rec.evidence]
    pairs: list[tuple[str, Any]] = [
        ("Batch", model.batch),
        ("Provider", info.get("provider", "")),
        ("Account", info.get("account_id", "")),
        ("Source file", Path(str(info.get("source_path", ""))).name),
        ("Source SHA-256", info.get("source_sha256", "")),
        ("Latest run", run.run_id if run else ""),
        ("Run started (UTC)", run.started_at if run else None),
        ("Run finished (UTC)", run.finished_at if run else None),
        ("Runs of this batch", len(model.runs)),
        ("Window start (UTC)", whole.start if whole else None),
        ("Window end (UTC)", whole.end if whole else None),
        ("Evidence", evidence),
        ("Report generated (UTC)", model.generated_at),
    ]
    for label, value in pairs:
        row = cursor.put([label, value])
        cursor.sheet.cell(row=row, column=1).font = BOLD


def _state_counts(cursor: _Cursor, model: ReportModel) -> None:
    rec = model.reconciliation
    cursor.title("Rows by state")
    cursor.header(STATE_HEADERS)
    for state, count in rec.state_counts.items():
        if count:
            cursor.put([state, count])
    total = sum(rec.state_counts.values())
    cursor.put(["Total", total])
    cursor.put(
        ["Rows in the sheet", rec.sheet_rows if rec.sheet_rows is not None else rec.rows_in_sheet]
    )
    row = cursor.put(["Adds up", "yes" if rec.counts_add_up else "NO"])
    _verdict_fill(
        cursor.sheet.cell(row=row, column=2), RECONCILED if rec.counts_add_up else MISMATCH
    )
    # A batch name reused over several sheets (a nightly job) has paid orders that are
    # not in today's sheet: they are counted here so the counts add up to everything paid.
    cursor.gap()
    cursor.title("Orders paid (every sheet of the batch)")
    cursor.header(PAID_HEADERS)
    today = rec.state_counts.get("succeeded", 0)
    cursor.put(["In today's sheet", today])
    cursor.put(["Ordered earlier, not in today's sheet", rec.earlier_orders])
    paid = today + rec.earlier_orders
    cursor.put(["Total paid", paid])
    orders = sum(c.orders for c in rec.currencies)
    row = cursor.put(["Adds up to Per currency", "yes" if paid == orders else "NO"])
    _verdict_fill(cursor.sheet.cell(row=row, column=2), RECONCILED if paid == orders else MISMATCH)


def _movement_table(cursor: _Cursor, model: ReportModel) -> None:
    """Each currency's balance movement over the runs, explained line by line."""
    rec = model.reconciliation
    moving = [c for c in rec.currencies if c.movement is not None]
    cursor.title("Balance movement over the runs (signed: money out is negative)")
    cursor.header(MOVEMENT_HEADERS)
    for c in moving:
        m = c.movement
        assert m is not None
        fmt = money_format(c.currency)
        row = cursor.put(
            [c.currency, m.moved, m.own, m.in_flight, m.other_batches, m.credits, m.other,
             m.unexplained],
            formats=dict.fromkeys(range(2, 9), fmt),
        )  # fmt: skip
        _verdict_fill(
            cursor.sheet.cell(row=row, column=8), RECONCILED if m.unexplained == 0 else MISMATCH
        )
    if not moving:
        cursor.put(["(the balances were not read at both ends of a run, or not listed)"])


def _outstanding(cursor: _Cursor, model: ReportModel) -> None:
    """Rows a rerun settles (not sent yet, or in flight): not failures, but not done."""
    _counts(
        cursor,
        "Outstanding (a rerun of the batch settles these; see the Outstanding sheet)",
        OUTSTANDING_HEADERS,
        model.failures.waiting(),
        "nothing outstanding",
    )


def _currency_table(cursor: _Cursor, rec: Reconciliation) -> None:
    cursor.title("Per currency")
    cursor.header(CURRENCY_HEADERS)
    for c in rec.currencies:
        fmt = money_format(c.currency)
        unexplained = c.movement.unexplained if c.movement is not None else None
        row = cursor.put(
            [
                c.currency, c.orders, c.face_value, c.cost, c.wallet_debits, c.discount,
                c.balances.before, c.balances.after, c.difference, c.orphans, c.verdict, c.reason,
                c.fx_fees, c.unsettled.in_flight_debits, unexplained, c.wallet_orders,
            ],
            formats=dict.fromkeys(CURRENCY_MONEY_COLUMNS, fmt),
        )  # fmt: skip
        _verdict_fill(cursor.sheet.cell(row=row, column=11), c.verdict)
        _wrap(cursor.sheet, row, 12, c.reason, _SUMMARY_WIDTHS["L"])
    if not rec.currencies:
        cursor.put(["(no orders)"])


def _next_steps(cursor: _Cursor, model: ReportModel) -> None:
    steps = model.failures.next_steps()
    _counts(
        cursor, "Next steps", NEXT_STEP_HEADERS, steps[:30], "nothing to do: no row needs action"
    )


def _counts(
    cursor: _Cursor,
    title: str,
    headers: Sequence[str],
    counts: Sequence[tuple[str, int]],
    nothing: str,
) -> None:
    """How many rows each reason or step covers; a zero line saying `nothing` if none."""
    cursor.title(title)
    cursor.header(headers)
    for text, count in counts:
        cursor.put([count, text])
    if not counts:
        cursor.put([0, nothing])


def _runs_table(cursor: _Cursor, model: ReportModel) -> None:
    cursor.title("Runs")
    cursor.header(RUN_HEADERS)
    for run in model.runs[-20:]:
        cursor.put([run.run_id, run.started_at, run.finished_at, run.exit_code])


def _spend_table(cursor: _Cursor, spend: Sequence[Spend]) -> dict[str, tuple[int, int]]:
    """The chart data, as a table; returns each currency's first and last row."""
    cursor.title("Spend by product")
    cursor.header(SPEND_HEADERS)
    rows: dict[str, tuple[int, int]] = {}
    for product, currency, n, face, cost, card in spend:
        fmt = money_format(currency)
        row = cursor.put(
            [product, currency, n, face, cost, card],
            formats={4: money_format(card), 5: fmt},
        )
        rows[currency] = (rows.get(currency, (row, row))[0], row)
    if not rows:
        cursor.put(["(no orders)"])
    return rows


#: the Summary's column widths, in characters; the band of charts is laid out on them
_SUMMARY_WIDTHS = {
    "A": 34, "B": 21, "C": 19, "D": 15, "E": 24, "F": 14,
    "G": 15, "H": 15, "I": 12, "J": 9, "K": 13, "L": 50, "M": 12, "N": 15, "O": 13,
}  # fmt: skip
#: the columns the charts span (the per-currency table's first twelve)
_CHART_COLUMNS = "ABCDEFGHIJKL"
_CHARTS_PER_BAND = 3
_CM_PER_CHAR = 0.19  # a column one character wide, in centimetres
_CM_PER_ROW = 0.53  # a row of the default height, in centimetres


@dataclass(frozen=True)
class _Band:
    """The charts sit in bands of three under the per-currency table."""

    count: int  # how many bands
    height: float  # each chart's height, in cm: tall enough to label every product
    rows: int  # the sheet rows one band covers

    @classmethod
    def fit(cls, spend: Sequence[Spend]) -> _Band:
        per_currency = Counter(currency for _, currency, *_ in spend)
        most = max(per_currency.values(), default=0)
        height = min(18.0, max(6.0, 3.0 + 0.62 * most))
        count = -(-len(per_currency) // _CHARTS_PER_BAND)
        return cls(count, height, int(height / _CM_PER_ROW) + 2)


def _chart_slots() -> list[tuple[str, float]]:
    """Where each chart of a band starts (column letter) and how wide it is (cm)."""
    letters = list(_CHART_COLUMNS)
    starts, total = [], 0.0
    for letter in letters:
        starts.append(total)
        total += _SUMMARY_WIDTHS[letter]
    slots: list[tuple[str, float]] = []
    for k in range(_CHARTS_PER_BAND):
        i = next(j for j, start in enumerate(starts) if start >= k * total / _CHARTS_PER_BAND)
        slots.append((letters[i], starts[i]))
    placed = []
    for k, (letter, start) in enumerate(slots):
        end = slots[k + 1][1] if k + 1 < len(slots) else total
        placed.append((letter, (end - start) * _CM_PER_CHAR - 0.4))
    return placed


def _add_charts(
    sheet: Worksheet, rows: Mapping[str, tuple[int, int]], band_row: int, band: _Band
) -> None:
    """One bar chart of spend by product per currency, three to a band."""
    slots = _chart_slots()
    for i, currency in enumerate(sorted(rows)):
        letter, width = slots[i % _CHARTS_PER_BAND]
        anchor = f"{letter}{band_row + band.rows * (i // _CHARTS_PER_BAND)}"
        _add_chart(sheet, currency, rows[currency], anchor, (width, band.height))


def _add_chart(
    sheet: Worksheet,
    currency: str,
    rows: tuple[int, int],
    anchor: str,
    size: tuple[float, float],
) -> None:
    chart = BarChart()
    chart.type = "bar"
    chart.style = 10
    chart.title = f"Spend by product ({currency})"
    chart.y_axis.title = f"Cost ({currency})"
    chart.y_axis.numFmt = money_format(currency)
    chart.y_axis.majorGridlines = None
    chart.x_axis.delete = False
    chart.y_axis.delete = False
    chart.legend = None
    first, last = rows
    chart.add_data(Reference(sheet, min_col=5, min_row=first, max_row=last), titles_from_data=False)
    chart.set_categories(Reference(sheet, min_col=1, min_row=first, max_row=last))
    chart.width, chart.height = size
    sheet.add_chart(chart, anchor)
