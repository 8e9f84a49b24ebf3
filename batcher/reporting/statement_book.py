"""statement.xlsx: the month-end statement finance files (see `reporting.statement`).

Sheets: Summary (the verdict and each wallet's tie-out, opening to closing),
Spend (per currency, product and cost centre), Wallet (every transaction of the
period, classified) and Orders (every order the batches placed in the period).
Money cells are numbers in their own currency's format; text goes through `safe_cell`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from openpyxl import Workbook
from openpyxl.styles import Font, PatternFill
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.worksheet import Worksheet

from batcher.core.files import atomic_write
from batcher.ledger.store import parse_ts
from batcher.reporting.cells import safe_cell
from batcher.reporting.statement import Statement
from batcher.reporting.verdicts import RECONCILED, charged_currency
from batcher.reporting.xlsx_stream import excel_datetime
from batcher.reporting.xlsx_style import DATETIME_FORMAT, money_format

WALLET_HEADERS = (
    "Currency", "Opening balance", "Top-ups", "Batcher orders (net debits)", "of which FX fees",
    "Other debits (not batcher)", "Other credits", "Closing balance", "Opening + lines",
    "Orders", "Ledger cost", "Difference", "Balance checkpoints", "Verdict", "Reason",
)  # fmt: skip
_WALLET_MONEY = (2, 3, 4, 5, 6, 7, 8, 9, 11, 12)
SPEND_HEADERS = (
    "Currency", "Product", "Cost centre", "Orders", "Face value", "Card currency", "Cost",
)  # fmt: skip
LINE_HEADERS = ("Time (UTC)", "Type", "Currency", "Amount", "Kind", "Batch", "Order id",
                "Transaction id", "Description")  # fmt: skip
ORDER_HEADERS = ("Batch", "Source row", "Reference", "Product", "Cost centre", "Face value",
                 "Currency", "Cost", "Cost currency", "Order id", "Succeeded (UTC)")  # fmt: skip

_BOLD = Font(bold=True)
_TITLE = Font(bold=True, size=14)
_HEADER_FILL = PatternFill("solid", fgColor="DDEBF7")
_GOOD = PatternFill("solid", fgColor="C6EFCE")
_BAD = PatternFill("solid", fgColor="FFC7CE")


def write_statement(path: Path, statement: Statement, generated_at: datetime) -> Path:
    workbook = Workbook()
    summary = workbook.active
    assert summary is not None
    summary.title = "Summary"
    _summary(summary, statement, generated_at)
    _spend(workbook.create_sheet("Spend"), statement)
    _lines(workbook.create_sheet("Wallet"), statement)
    _orders(workbook.create_sheet("Orders"), statement)
    with atomic_write(path) as tmp:
        workbook.save(tmp)
    return path


def _put(sheet: Worksheet, row: int, values: Sequence[Any], formats: dict[int, str]) -> None:
    for col, value in enumerate(values, 1):
        if value is None:
            continue
        if isinstance(value, datetime):
            value = excel_datetime(value)
        cell = sheet.cell(row=row, column=col, value=safe_cell(value))
        if isinstance(value, datetime):
            cell.number_format = DATETIME_FORMAT
        if col in formats:
            cell.number_format = formats[col]


def _header(sheet: Worksheet, row: int, headers: Sequence[str]) -> None:
    _put(sheet, row, headers, {})
    for col in range(1, len(headers) + 1):
        cell = sheet.cell(row=row, column=col)
        cell.font, cell.fill = _BOLD, _HEADER_FILL


def _summary(sheet: Worksheet, st: Statement, generated_at: datetime) -> None:
    last_day = (st.period.end - timedelta(days=1)).date()
    sheet.cell(row=1, column=1, value=safe_cell(
        f"Statement {st.period.start.date().isoformat()} to {last_day.isoformat()}"
    )).font = _TITLE  # fmt: skip
    bad = [w.currency for w in st.wallets if w.verdict != RECONCILED]
    reason = (
        "every wallet ties out to the provider's transactions to the cent"
        if not bad
        else "difference in " + ", ".join(bad) + " (see the Reason column)"
    )
    _put(sheet, 2, ["Verdict", st.verdict, reason], {})
    sheet.cell(row=2, column=2).fill = _GOOD if st.verdict == RECONCILED else _BAD
    sheet.cell(row=2, column=2).font = _BOLD
    _put(sheet, 3, ["Batches", len(st.batches), ", ".join(st.batches)], {})
    _put(sheet, 4, ["Generated (UTC)", generated_at], {})
    _header(sheet, 6, WALLET_HEADERS)
    for i, w in enumerate(st.wallets, 7):
        fmt = money_format(w.currency)
        why = "; ".join(w.checkpoint_errors) or (
            f"ledger cost equals the {w.orders} order(s)' wallet debits; "
            f"{w.checkpoints} balance checkpoint(s) agree"
            if w.verdict == RECONCILED
            else "ledger cost differs from the matched wallet debits"
        )
        values = [
            w.currency, w.opening, w.top_ups, w.order_debits, w.fx_fees, w.other_debits,
            w.other_credits, w.closing, w.tied_balance, w.orders, w.ledger_cost, w.difference,
            w.checkpoints, w.verdict, why,
        ]  # fmt: skip
        _put(sheet, i, values, dict.fromkeys(_WALLET_MONEY, fmt))
        sheet.cell(row=i, column=14).fill = _GOOD if w.verdict == RECONCILED else _BAD
    for col, width in enumerate((16, 17, 14, 18, 12, 16, 14, 17, 17, 8, 14, 12, 12, 13, 60), 1):
        sheet.column_dimensions[get_column_letter(col)].width = width
    sheet.freeze_panes = "A2"


def _table(
    sheet: Worksheet, headers: Sequence[str], rows: list[tuple[list[Any], dict[int, str]]]
) -> None:
    _header(sheet, 1, headers)
    for i, (values, formats) in enumerate(rows, 2):
        _put(sheet, i, values, formats)
    for col, header in enumerate(headers, 1):
        sheet.column_dimensions[get_column_letter(col)].width = max(12, len(header) + 2)
    sheet.freeze_panes = "A2"
    sheet.auto_filter.ref = f"A1:{get_column_letter(len(headers))}{max(1, len(rows) + 1)}"


def _spend(sheet: Worksheet, st: Statement) -> None:
    rows = [
        (
            [s.currency, s.product, s.cost_centre, s.orders, s.face_value, s.card_currency, s.cost],
            {5: money_format(s.card_currency), 7: money_format(s.currency)},
        )
        for s in st.spend
    ]
    _table(sheet, SPEND_HEADERS, rows)


def _lines(sheet: Worksheet, st: Statement) -> None:
    rows = []
    for line in st.lines:
        tx = line.transaction
        rows.append(
            (
                [
                    tx.timestamp,
                    tx.transaction_type,
                    tx.currency,
                    tx.amount,
                    line.kind,
                    line.batch,
                    tx.order_id,
                    tx.transaction_id,
                    tx.description,
                ],
                {4: money_format(tx.currency)},
            )
        )
    _table(sheet, LINE_HEADERS, rows)


def _orders(sheet: Worksheet, st: Statement) -> None:
    rows = []
    for o in st.orders:
        r = o.row
        paid_in = charged_currency(r)
        rows.append(
            (
                [
                    o.batch,
                    r.source_row,
                    r.reference or "",
                    r.fields.get("product_code", ""),
                    o.cost_centre,
                    r.face_value,
                    r.currency,
                    r.cost,
                    paid_in,
                    r.order_id,
                    parse_ts(r.succeeded_at),
                ],
                {6: money_format(r.currency), 8: money_format(paid_in)},
            )
        )
    _table(sheet, ORDER_HEADERS, rows)
