"""The look shared by the report workbooks: date and money formats, header rows, printing."""

from __future__ import annotations

from openpyxl.styles import Alignment, Font, PatternFill
from openpyxl.worksheet.worksheet import Worksheet

from batcher.core.money import CURRENCY_SYMBOLS, minor_units

DATETIME_FORMAT = "yyyy-mm-dd hh:mm:ss"

BOLD = Font(bold=True)
TITLE = Font(bold=True, size=14)
HEADER_FILL = PatternFill("solid", fgColor="DDEBF7")
GOOD_FILL = PatternFill("solid", fgColor="C6EFCE")
BAD_FILL = PatternFill("solid", fgColor="FFC7CE")
WAIT_FILL = PatternFill("solid", fgColor="FFEB9C")
UNKNOWN_FILL = PatternFill("solid", fgColor="D9D9D9")


def money_format(currency: str) -> str:
    """An Excel number format for the currency: '"£"#,##0.00', '"¥"#,##0', '#,##0.000 "KWD"'."""
    places = minor_units(currency)
    body = "#,##0" + ("." + "0" * places if places else "")
    symbol = CURRENCY_SYMBOLS.get(currency.upper(), "")
    if len(symbol) == 1:
        return f'"{symbol}"{body}'
    return f'{body} "{currency.upper()}"'


def print_setup(sheet: Worksheet, *, pages_tall: int) -> None:
    """Landscape, one page wide (0 pages tall: as many as it takes)."""
    sheet.page_setup.orientation = "landscape"
    sheet.page_setup.paperSize = sheet.PAPERSIZE_A4
    sheet.sheet_properties.pageSetUpPr.fitToPage = True
    sheet.page_setup.fitToWidth = 1
    sheet.page_setup.fitToHeight = pages_tall


def style_header_row(sheet: Worksheet, columns: int, row: int = 1) -> None:
    for col in range(1, columns + 1):
        cell = sheet.cell(row=row, column=col)
        cell.font = BOLD
        cell.fill = HEADER_FILL
        cell.alignment = Alignment(vertical="top", wrap_text=False)
