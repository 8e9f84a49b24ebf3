"""The reconciliation workbook (and codes.xlsx): what finance opens in the morning.

Sheets: Summary (verdict, state counts, the per-currency table, next steps, runs,
and a native bar chart of spend by product per currency), Orders (one line per
input row, in source order, with the sheet's pass-through columns), Failures,
Wallet (each transaction matched to an order; flagged ones say why) and Orphans.

- Money cells are numbers (written exactly from Decimal), formatted per currency
  from its minor units: "£"#,##0.00, "€"#,##0.00, "¥"#,##0.
- Dates are real Excel date-times, in UTC (the headers say so).
- Headers are frozen and filtered; columns are sized from a sample of values.
- Every text cell goes through `safe_cell`; voucher codes appear only masked.

The Summary is built cell by cell with openpyxl; the row-heavy sheets are
streamed by `batcher.reporting.xlsx_stream` so 100,000 rows take seconds, not minutes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from openpyxl import Workbook
from openpyxl.cell.cell import Cell
from openpyxl.chart import BarChart, Reference
from openpyxl.styles import Alignment, Font, PatternFill
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.worksheet import Worksheet

from batcher.core.files import atomic_write
from batcher.core.money import CURRENCY_SYMBOLS, minor_units, quantum, round_money
from batcher.ledger.store import RowRecord, parse_ts
from batcher.providers.base import Redemption
from batcher.reporting.cells import safe_cell
from batcher.reporting.failures import Failure, next_steps
from batcher.reporting.reconcile import (
    MISMATCH,
    RECONCILED,
    OrderCheck,
    Reconciliation,
    RunWindow,
    WalletLine,
    charged_currency,
    ordered_rows,
    span,
)
from batcher.reporting.xlsx_stream import (
    StreamedSheet,
    Styled,
    excel_datetime,
    inject,
    prepare,
    register_style,
)

DATETIME_FORMAT = "yyyy-mm-dd hh:mm:ss"
MASK = "••••"
SUMMARY, ORDERS, FAILURES, WALLET, ORPHANS = "Summary", "Orders", "Failures", "Wallet", "Orphans"
CURRENCY_HEADERS = (
    "Currency", "Orders", "Face value", "Cost (ledger)", "Wallet debits (provider)",
    "Discount / fee", "Balance before", "Balance after", "Difference", "Orphans",
    "Verdict", "Reason",
)  # fmt: skip
STATE_HEADERS = ("State", "Rows")
SPEND_HEADERS = ("Product", "Currency", "Orders", "Face value", "Cost")
NEXT_STEP_HEADERS = ("Rows", "Next step")
RUN_HEADERS = ("Run", "Started (UTC)", "Finished (UTC)", "Exit code")
FAILURE_HEADERS = (
    "Source row", "Reference", "Recipient email", "Recipient name", "Product", "Face value",
    "Currency", "State", "Error code", "What went wrong", "Next step", "In failed_rows.csv",
    "Provider request id",
)  # fmt: skip
WALLET_HEADERS = (
    "Time (UTC)", "Type", "Currency", "Amount", "Order id", "Transaction id", "Description",
    "Source row", "Reference", "Ledger cost", "Difference", "Status", "Note",
)  # fmt: skip
ORPHAN_HEADERS = (
    "Created (UTC)", "Order id", "Product", "Currency", "Face value", "Wallet debit",
    "Recipient email", "Recipient name", "Status", "Transaction id", "Note",
)  # fmt: skip
CODES_HEADERS = (
    "Source row", "Reference", "Recipient email", "Recipient name", "Product", "Face value",
    "Currency", "Order id", "Voucher code", "Redemption URL",
)  # fmt: skip


_BOLD = Font(bold=True)
_TITLE = Font(bold=True, size=14)
_HEADER_FILL = PatternFill("solid", fgColor="DDEBF7")
_GOOD_FILL = PatternFill("solid", fgColor="C6EFCE")
_BAD_FILL = PatternFill("solid", fgColor="FFC7CE")


def money_format(currency: str) -> str:
    """An Excel number format for the currency: '"£"#,##0.00', '"¥"#,##0', '#,##0.000 "KWD"'."""
    places = minor_units(currency)
    body = "#,##0" + ("." + "0" * places if places else "")
    symbol = CURRENCY_SYMBOLS.get(currency.upper(), "")
    if len(symbol) == 1:
        return f'"{symbol}"{body}'
    return f'{body} "{currency.upper()}"'


def mask_code(last4: str | None) -> str:
    """What a report shows of a voucher code: enough to tell codes apart, never to redeem."""
    return f"{MASK}-{last4}" if last4 else ""


# ---------------------------------------------------------------------------
# What a report is made of.


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    started_at: datetime
    finished_at: datetime | None
    exit_code: int | None
    window: RunWindow
    available_after: Mapping[str, Decimal] | None


@dataclass
class ReportModel:
    batch: str
    info: Mapping[str, Any]
    runs: Sequence[RunInfo]
    rows: Sequence[RowRecord]  # in the sheet (source order), then orders no longer in it
    reconciliation: Reconciliation
    failures: Sequence[Failure]
    generated_at: datetime
    passthrough: Sequence[str] = field(default_factory=list)

    @property
    def latest_run(self) -> RunInfo | None:
        return self.runs[-1] if self.runs else None

    @property
    def checks(self) -> Mapping[str, OrderCheck]:
        return self.reconciliation.checks


# ---------------------------------------------------------------------------
# The workbook.


@dataclass
class _Styles:
    """Style ids for the streamed sheets, registered before openpyxl saves."""

    date: int
    money: dict[str, int]
    quanta: dict[str, Decimal] = field(default_factory=dict)

    def amount(self, value: Decimal | None, currency: str | None) -> Styled | None:
        """A money cell: the value rounded half-up to the currency's minor units."""
        if value is None or not currency:
            return None
        step = self.quanta.get(currency)
        if step is None:
            step = self.quanta[currency] = quantum(currency)
        return Styled(value.quantize(step, rounding=ROUND_HALF_UP), self.money_style(currency))

    def money_style(self, currency: str) -> int:
        return self.money.get(currency, self.money[""])


def write_workbook(path: Path, model: ReportModel) -> Path:
    """Write reconciliation.xlsx atomically (a temporary file, then a rename)."""
    workbook = Workbook()
    summary = workbook.active
    assert summary is not None
    summary.title = SUMMARY
    write_summary(summary, model)
    styles = _register_styles(workbook, model)
    streamed = [
        _orders_sheet(workbook, model, styles),
        _failures_sheet(workbook, model, styles),
        _wallet_sheet(workbook, model, styles),
        _orphans_sheet(workbook, model, styles),
    ]
    with atomic_write(path) as tmp:
        workbook.save(tmp)
        inject(tmp, workbook, streamed, styles.date)
    return path


def _register_styles(workbook: Workbook, model: ReportModel) -> _Styles:
    currencies = {r.currency for r in model.rows if r.currency}
    currencies |= {r.cost_currency for r in model.rows if r.cost_currency}
    currencies |= {line.currency for line in model.reconciliation.wallet_lines if line.currency}
    currencies |= {o.order.currency for o in model.reconciliation.orphans if o.order.currency}
    money = {c: register_style(workbook, money_format(c)) for c in sorted(currencies)}
    money[""] = register_style(workbook, "#,##0.00")  # a currency the provider did not name
    return _Styles(register_style(workbook, DATETIME_FORMAT), money)


def _streamed(
    workbook: Workbook,
    title: str,
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    widths: Sequence[float],
    freeze: str = "A2",
) -> StreamedSheet:
    sheet = workbook.create_sheet(title)
    prepare(sheet, headers, len(rows))
    _style_header_row(sheet, len(headers))
    sheet.freeze_panes = freeze
    for i, width in enumerate(widths, 1):
        sheet.column_dimensions[get_column_letter(i)].width = width
    _print_setup(sheet, pages_tall=0)
    sheet.print_title_rows = "1:1"
    return StreamedSheet(sheet, rows, len(rows), len(headers))


def _print_setup(sheet: Worksheet, *, pages_tall: int) -> None:
    """Landscape, one page wide (0 pages tall: as many as it takes)."""
    sheet.page_setup.orientation = "landscape"
    sheet.page_setup.paperSize = sheet.PAPERSIZE_A4
    sheet.sheet_properties.pageSetUpPr.fitToPage = True
    sheet.page_setup.fitToWidth = 1
    sheet.page_setup.fitToHeight = pages_tall


def _style_header_row(sheet: Worksheet, columns: int, row: int = 1) -> None:
    for col in range(1, columns + 1):
        cell = sheet.cell(row=row, column=col)
        cell.font = _BOLD
        cell.fill = _HEADER_FILL
        cell.alignment = Alignment(vertical="top", wrap_text=False)


def _widths(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], sample: int = 300
) -> list[float]:
    """Sensible column widths: the header and a sample of values, capped."""
    widths = [max(8, len(h) + 2) for h in headers]
    for row in rows[:sample]:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], _shown_length(value) + 2)
    return [min(w, 60) for w in widths]


def _shown_length(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, Styled):
        return 19 if isinstance(value.value, datetime) else len(f"{value.value:,}") + 2
    if isinstance(value, datetime):
        return 19
    return len(str(value))


def _ts(text: str | None) -> datetime | None:
    moment = parse_ts(text)
    return excel_datetime(moment) if moment else None


# ----- Orders


def order_headers(passthrough: Sequence[str]) -> list[str]:
    return [
        "Source row", "Reference", *passthrough, "Recipient email", "Recipient name",
        "Product", "Face value", "Currency", "Cost", "Cost currency", "State", "Order id",
        "Transaction id", "Order request id", "Idempotency key", "Attempts", "Voucher",
        "Last error", "Wallet debit", "Check", "Created (UTC)", "Updated (UTC)",
        "Succeeded (UTC)",
    ]  # fmt: skip


def order_line(row: RowRecord, model: ReportModel, styles: _Styles) -> list[Any]:
    f = row.fields
    check = model.checks.get(row.row_key)
    debit = styles.amount(check.debit, check.debit_currency) if check else None
    face = None if row.state == "invalid" else styles.amount(row.face_value, row.currency)
    return [
        row.source_row,
        row.reference or f.get("reference", ""),
        *(row.passthrough.get(h, "") for h in model.passthrough),
        f.get("recipient_email", ""),
        f.get("recipient_name", ""),
        f.get("product_code", ""),
        face,
        row.currency,
        styles.amount(row.cost, charged_currency(row)),
        row.cost_currency or "",
        row.state,
        row.order_id,
        row.transaction_id,
        row.order_request_id,
        row.chunk_key,
        row.attempt,
        mask_code(row.voucher_last4),
        _last_error(row),
        debit,
        _check_text(row, check, model),
        _ts(row.created_at),
        _ts(row.updated_at),
        _ts(row.succeeded_at),
    ]


def _last_error(row: RowRecord) -> str:
    parts = [p for p in (row.error_code, row.error_message) if p]
    text = ": ".join(parts)
    if row.conflict:
        text = f"{text}; {row.conflict}" if text else row.conflict
    return text


def _check_text(row: RowRecord, check: OrderCheck | None, model: ReportModel) -> str:
    prefix = "" if row.in_sheet else "no longer in the sheet; "
    if row.state != "succeeded" or not row.order_id:
        return prefix.rstrip("; ")
    if check is None:
        evidence = model.reconciliation.evidence
        return prefix + (
            "checked against the wallet balance only" if evidence == "balances" else "not checked"
        )
    return prefix + ("; ".join(check.problems) if check.problems else "OK")


def _orders_sheet(workbook: Workbook, model: ReportModel, styles: _Styles) -> StreamedSheet:
    headers = order_headers(model.passthrough)
    rows = [order_line(r, model, styles) for r in model.rows]
    return _streamed(workbook, ORDERS, headers, rows, _widths(headers, rows), freeze="B2")


# ----- Failures


def failure_line(failure: Failure, styles: _Styles) -> list[Any]:
    row, f = failure.row, failure.row.fields
    face = None if row.state == "invalid" else styles.amount(row.face_value, row.currency)
    return [
        row.source_row,
        row.reference or f.get("reference", ""),
        f.get("recipient_email", ""),
        f.get("recipient_name", ""),
        f.get("product_code", ""),
        face,
        row.currency,
        row.state,
        row.error_code or "",
        failure.reason,
        failure.next_step,
        "yes" if failure.refeed else "no",
        row.provider_request_id,
    ]


def _failures_sheet(workbook: Workbook, model: ReportModel, styles: _Styles) -> StreamedSheet:
    rows = [failure_line(f, styles) for f in model.failures]
    return _streamed(workbook, FAILURES, FAILURE_HEADERS, rows, _widths(FAILURE_HEADERS, rows))


# ----- Wallet


def _wallet_sheet(workbook: Workbook, model: ReportModel, styles: _Styles) -> StreamedSheet:
    rows = [_wallet_line(line, styles) for line in model.reconciliation.wallet_lines]
    if model.reconciliation.evidence != "transactions":
        rows = [[None] * 11 + ["not fetched", _not_fetched(model.reconciliation)]]
    return _streamed(workbook, WALLET, WALLET_HEADERS, rows, _widths(WALLET_HEADERS, rows))


def _not_fetched(rec: Reconciliation) -> str:
    if rec.provider_error:
        return f"the provider's transactions could not be read: {rec.provider_error}"
    return (
        "after a large run the transactions are not listed: the balances each run read "
        "stand in for them (see the Summary); run `batcher report BATCH` to list and match "
        "every one"
    )


def _wallet_line(line: WalletLine, styles: _Styles) -> list[Any]:
    tx, row = line.transaction, line.row
    return [
        excel_datetime(line.timestamp) if line.timestamp else None,
        tx.transaction_type if tx else "",
        line.currency,
        styles.amount(tx.amount, tx.currency) if tx else None,
        line.order_id,
        tx.transaction_id if tx else (row.transaction_id if row else None),
        tx.description if tx else "",
        row.source_row if row else None,
        (row.reference or "") if row else "",
        styles.amount(line.ledger_cost, line.currency),
        styles.amount(line.difference, line.currency),
        line.status,
        line.note,
    ]


# ----- Orphans


def _orphans_sheet(workbook: Workbook, model: ReportModel, styles: _Styles) -> StreamedSheet:
    rows = [
        [
            excel_datetime(o.order.created_at) if o.order.created_at else None,
            o.order.order_id,
            o.order.product_code,
            o.order.currency,
            styles.amount(o.order.face_value, o.order.currency),
            styles.amount(o.debit, o.order.currency),
            o.order.recipient_email,
            o.order.recipient_name,
            o.order.status,
            o.order.transaction_id,
            o.note,
        ]
        for o in model.reconciliation.orphans
    ]
    return _streamed(workbook, ORPHANS, ORPHAN_HEADERS, rows, _widths(ORPHAN_HEADERS, rows))


# ----- Summary


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
        _style_header_row(self.sheet, len(values), row)
        return row

    def title(self, text: str) -> None:
        self.sheet.cell(row=self.row, column=1, value=safe_cell(text)).font = _BOLD
        self.row += 1

    def gap(self) -> None:
        self.row += 1


def write_summary(sheet: Worksheet, model: ReportModel) -> None:
    """Verdict and money first, then the charts, the rows, what to do, and the details."""
    cursor = _Cursor(sheet)
    rec = model.reconciliation
    title = safe_cell(f"Reconciliation: batch {model.batch}")
    sheet.cell(row=1, column=1, value=title).font = _TITLE
    cursor.row = 2
    verdict_row = cursor.put(["Verdict", rec.verdict, rec.reason])
    _verdict_fill(sheet.cell(row=verdict_row, column=2), rec.verdict)
    sheet.merge_cells(start_row=verdict_row, start_column=3, end_row=verdict_row, end_column=12)
    width = sum(_SUMMARY_WIDTHS[c] for c in "CDEFGHIJKL")
    _wrap(sheet, verdict_row, 3, rec.reason, width)
    cursor.gap()
    _currency_table(cursor, rec)
    cursor.gap()
    spend = spend_by_product(model.rows)
    band_row, band = cursor.row, _Band.fit(spend)
    cursor.row += band.rows * band.count
    for block in (_state_counts, _next_steps, _about, _runs_table):
        block(cursor, model)
        cursor.gap()
    _add_charts(sheet, _spend_table(cursor, spend), band_row, band)
    for letter, width in _SUMMARY_WIDTHS.items():
        sheet.column_dimensions[letter].width = width
    sheet.freeze_panes = "A2"
    _print_setup(sheet, pages_tall=0)


def _wrap(sheet: Worksheet, row: int, column: int, text: str, width: float) -> None:
    """Wrap a long text cell, and make its row tall enough: not every viewer auto-fits."""
    sheet.cell(row=row, column=column).alignment = Alignment(wrap_text=True, vertical="top")
    lines = max(1, -(-len(text) // max(1, int(width * 0.95))))
    current = sheet.row_dimensions[row].height or 15
    sheet.row_dimensions[row].height = max(current, 15 * lines)


def _verdict_fill(cell: Cell, verdict: str) -> None:
    cell.fill = _GOOD_FILL if verdict == RECONCILED else _BAD_FILL
    cell.font = _BOLD


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
        cursor.sheet.cell(row=row, column=1).font = _BOLD


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


def _currency_table(cursor: _Cursor, rec: Reconciliation) -> None:
    cursor.title("Per currency")
    cursor.header(CURRENCY_HEADERS)
    for c in rec.currencies:
        fmt = money_format(c.currency)
        row = cursor.put(
            [
                c.currency, c.orders, c.face_value, c.cost, c.wallet_debits, c.discount,
                c.balance_before, c.balance_after, c.difference, c.orphans, c.verdict, c.reason,
            ],
            formats={col: fmt for col in (3, 4, 5, 6, 7, 8, 9)},
        )  # fmt: skip
        _verdict_fill(cursor.sheet.cell(row=row, column=11), c.verdict)
        _wrap(cursor.sheet, row, 12, c.reason, _SUMMARY_WIDTHS["L"])
    if not rec.currencies:
        cursor.put(["(no orders)"])


def _next_steps(cursor: _Cursor, model: ReportModel) -> None:
    cursor.title("Next steps")
    cursor.header(NEXT_STEP_HEADERS)
    steps = next_steps(model.failures)
    for action, count in steps[:30]:
        cursor.put([count, action])
    if not steps:
        cursor.put([0, "nothing to do: no row needs action"])


def _runs_table(cursor: _Cursor, model: ReportModel) -> None:
    cursor.title("Runs")
    cursor.header(RUN_HEADERS)
    for run in model.runs[-20:]:
        cursor.put([run.run_id, run.started_at, run.finished_at, run.exit_code])


def spend_by_product(rows: Sequence[RowRecord]) -> list[tuple[str, str, int, Decimal, Decimal]]:
    """(product, currency, orders, face value, cost) of the batch's orders, by currency."""
    totals: dict[tuple[str, str], list[Any]] = {}
    for row in ordered_rows(rows):
        key = (row.fields.get("product_code", ""), charged_currency(row))
        entry = totals.setdefault(key, [0, Decimal(0), Decimal(0)])
        entry[0] += 1
        entry[1] += row.face_value
        entry[2] += row.cost or Decimal(0)
    return [
        (product, currency, n, face, cost)
        for (product, currency), (n, face, cost) in sorted(
            totals.items(), key=lambda item: (item[0][1], -item[1][2], item[0][0])
        )
    ]


def _spend_table(
    cursor: _Cursor, spend: Sequence[tuple[str, str, int, Decimal, Decimal]]
) -> dict[str, tuple[int, int]]:
    """The chart data, as a table; returns each currency's first and last row."""
    cursor.title("Spend by product")
    cursor.header(SPEND_HEADERS)
    rows: dict[str, tuple[int, int]] = {}
    for product, currency, n, face, cost in spend:
        fmt = money_format(currency)
        row = cursor.put([product, currency, n, face, cost], formats={4: fmt, 5: fmt})
        rows[currency] = (rows.get(currency, (row, row))[0], row)
    if not rows:
        cursor.put(["(no orders)"])
    return rows


#: the Summary's column widths, in characters; the band of charts is laid out on them
_SUMMARY_WIDTHS = {
    "A": 26, "B": 21, "C": 19, "D": 15, "E": 24, "F": 14,
    "G": 15, "H": 15, "I": 12, "J": 9, "K": 13, "L": 50,
}  # fmt: skip
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
    def fit(cls, spend: Sequence[tuple[str, str, int, Decimal, Decimal]]) -> _Band:
        per_currency = Counter(currency for _, currency, *_ in spend)
        most = max(per_currency.values(), default=0)
        height = min(18.0, max(6.0, 3.0 + 0.62 * most))
        count = -(-len(per_currency) // _CHARTS_PER_BAND)
        return cls(count, height, int(height / _CM_PER_ROW) + 2)


def _chart_slots() -> list[tuple[str, float]]:
    """Where each chart of a band starts (column letter) and how wide it is (cm)."""
    letters = list(_SUMMARY_WIDTHS)
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


# ---------------------------------------------------------------------------
# codes.xlsx: live voucher codes, only on request.


def write_codes(path: Path, model: ReportModel, redemptions: Mapping[str, Redemption]) -> Path:
    """codes.xlsx with mode 0600 from the first byte, renamed into place."""
    workbook = Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.title = "Codes"
    sheet.append([safe_cell(h) for h in CODES_HEADERS])
    _style_header_row(sheet, len(CODES_HEADERS))
    sheet.freeze_panes = "A2"
    for row in _code_rows(model, redemptions):
        sheet.append([safe_cell(v) if isinstance(v, str) else v for v in row])
    sheet.auto_filter.ref = f"A1:{get_column_letter(len(CODES_HEADERS))}{sheet.max_row}"
    for i, width in enumerate((10, 16, 28, 22, 18, 12, 9, 26, 24, 50), 1):
        sheet.column_dimensions[get_column_letter(i)].width = width
    _save_private(workbook, path)
    return path


def _code_rows(model: ReportModel, redemptions: Mapping[str, Redemption]) -> Iterator[list[Any]]:
    for row in ordered_rows(model.rows):
        redemption = redemptions.get(row.order_id or "")
        f = row.fields
        face = round_money(row.face_value, row.currency)
        yield [
            row.source_row, row.reference or "", f.get("recipient_email", ""),
            f.get("recipient_name", ""), f.get("product_code", ""), face, row.currency,
            row.order_id, redemption.voucher_code if redemption else "not found at the provider",
            (redemption.redemption_url or "") if redemption else "",
        ]  # fmt: skip


def _save_private(workbook: Workbook, path: Path) -> None:
    with atomic_write(path, private=True) as tmp, tmp.open("wb") as fh:
        workbook.save(fh)
