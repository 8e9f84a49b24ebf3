"""Stream many rows into worksheets of a workbook openpyxl has already saved.

openpyxl builds the workbook: styles, column widths, frozen panes, filters,
charts and every header row. Without lxml it serialises about 20,000 rows a
second, too slow for a 100,000-row report, so the row-heavy sheets are saved by
openpyxl with their header only, and this module then writes their data rows
straight into the package as SpreadsheetML.

Cells are typed by their Python value:

- `str`: an inline string, passed through `safe_cell` (never a formula) and
  stripped of characters XML cannot carry;
- `int`, `Decimal`: a number (`Decimal` is written exactly, never via float);
- `datetime`: a real Excel date-time (naive, in UTC) with the date style;
- `Styled(value, style_id)`: a number or date with a style of its own, such as a
  currency format;
- `None`: no cell.

Style ids come from `register_style`, called before openpyxl saves the workbook.
"""

from __future__ import annotations

import os
import re
import shutil
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple
from xml.sax.saxutils import escape

from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE, Cell
from openpyxl.utils import get_column_letter
from openpyxl.utils.datetime import to_excel
from openpyxl.workbook import Workbook
from openpyxl.worksheet.worksheet import Worksheet

from batcher.core.files import atomic_write
from batcher.reporting.cells import leads_plainly, safe_cell

MAX_CELL_CHARS = 32_767  # Excel's limit for one cell's text
_ROWS_PER_WRITE = 2_000
#: money cells whose XML a sheet's writer keeps, to write again as they recur
_KEPT_MONEY = 1 << 16
_DIMENSION = re.compile(r'<dimension ref="[^"]*"\s*/>')
_SHEET_DATA_END = "</sheetData>"
#: characters XML cannot carry, or must escape
_NEEDS_CARE = re.compile(r"[&<>\x00-\x08\x0b\x0c\x0e-\x1f]")
#: Most text cells: an ASCII letter or digit first (never a formula, no leading space),
#: then nothing XML must escape, no control character, and no space at the end
#: (`\s` is `str.isspace`). Such text is written as it is, unless it is too long.
_PLAIN_TEXT = re.compile(r"[A-Za-z0-9](?:[^&<>\x00-\x1f]*[^&<>\x00-\x1f\s])?")
#: The same after any first character that `_plain_first` allows: `••••-1234`, `£5`.
_PLAIN_TAIL = re.compile(r"(?:[^&<>\x00-\x1f]*[^&<>\x00-\x1f\s])?")
#: first character -> whether text starting with it may take the plain shortcut
_PLAIN_FIRST: dict[str, bool] = {}


def _plain_first(first: str) -> bool:
    """A first character after which plain text is written as it is: visible and no
    formula trigger (`leads_plainly`), nothing XML must escape, no control, no space."""
    found = _PLAIN_FIRST.get(first)
    if found is None:
        found = _PLAIN_FIRST[first] = (
            first not in "&<>" and first >= " " and not first.isspace() and leads_plainly(first)
        )
    return found


class Styled(NamedTuple):
    """A number or date cell with its own style (from `register_style`)."""

    value: Decimal | int | datetime
    style: int


def register_style(workbook: Workbook, number_format: str) -> int:
    """Add a cell style with this number format to the workbook; return its id."""
    worksheet = workbook.worksheets[0]
    probe = Cell(worksheet, row=1, column=1)  # never attached to the sheet
    probe.number_format = number_format
    return probe.style_id


def excel_datetime(moment: datetime) -> datetime:
    """Excel has no time zones: an aware datetime becomes naive UTC; a naive one is UTC."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


@dataclass(frozen=True)
class StreamedSheet:
    """Data rows for one worksheet, written after its header (row 1)."""

    worksheet: Worksheet
    rows: Iterable[Sequence[Any]]
    row_count: int  # how many rows `rows` yields: the sheet's dimension says so up front
    columns: int


def prepare(worksheet: Worksheet, headers: Sequence[str], row_count: int) -> None:
    """The header row, and a filter over it and the rows that will be streamed in."""
    worksheet.append([safe_cell(h) for h in headers])
    last = get_column_letter(max(1, len(headers)))
    worksheet.auto_filter.ref = f"A1:{last}{row_count + 1}"


def inject(
    path: Path, workbook: Workbook, sheets: Sequence[StreamedSheet], date_style: int
) -> None:
    """Rewrite the saved package at `path` with the streamed rows in place, atomically."""
    targets = {_part_name(workbook, s.worksheet): s for s in sheets}
    with (
        atomic_write(path) as tmp,
        zipfile.ZipFile(path) as source,
        zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as target,
    ):
        missing = set(targets) - set(source.namelist())
        if missing:
            raise RuntimeError(f"openpyxl did not write {sorted(missing)}")
        for item in source.infolist():
            sheet = targets.get(item.filename)
            if sheet is None:
                target.writestr(item, source.read(item.filename))
                continue
            frame = source.read(item.filename).decode("utf-8")
            _write_sheet(target, item.filename, frame, sheet, date_style)


def _part_name(workbook: Workbook, worksheet: Worksheet) -> str:
    """openpyxl saves the n-th worksheet as xl/worksheets/sheet{n}.xml."""
    return f"xl/worksheets/sheet{workbook.worksheets.index(worksheet) + 1}.xml"


def _write_sheet(
    target: zipfile.ZipFile, name: str, frame: str, sheet: StreamedSheet, date_style: int
) -> None:
    if frame.count(_SHEET_DATA_END) != 1:
        raise RuntimeError(f"{name}: unexpected worksheet layout from openpyxl")
    head, tail = frame.split(_SHEET_DATA_END)
    last = f"{get_column_letter(max(sheet.columns, 1))}{sheet.row_count + 1}"
    head = _DIMENSION.sub(f'<dimension ref="A1:{last}"/>', head, count=1)
    writer = _RowWriter(sheet.columns, date_style)
    with target.open(name, "w") as out:
        out.write(head.encode("utf-8"))
        buffer: list[str] = []
        for row in sheet.rows:
            buffer.append(writer.row(row))
            if len(buffer) >= _ROWS_PER_WRITE:
                out.write("".join(buffer).encode("utf-8"))
                buffer.clear()
        out.write("".join(buffer).encode("utf-8"))
        out.write((_SHEET_DATA_END + tail).encode("utf-8"))
    if writer.last_row != sheet.row_count + 1:
        raise RuntimeError(
            f"{name}: {writer.last_row - 1} rows written, {sheet.row_count} expected"
        )


class _RowWriter:
    """SpreadsheetML for one row at a time, from row 2 on."""

    def __init__(self, columns: int, date_style: int) -> None:
        self.letters = [get_column_letter(i + 1) for i in range(max(columns, 1))]
        self.date_style = date_style
        self.last_row = 1
        # Each cell's opening up to its row number: `<c r="B` + "17" + `" ...`.
        self._openings = [f'<c r="{letter}' for letter in self.letters]
        #: id of a money cell -> (the cell, its XML after the row number)
        self._money: dict[int, tuple[Styled, str]] = {}

    def row(self, values: Sequence[Any]) -> str:
        """The row's XML. The common cells (plain text, money, dates) are written
        inline: 3.3 million cells at 100k rows. The rest go through `cell`; the
        result is the same either way (a hypothesis test holds them together)."""
        self.last_row += 1
        number = str(self.last_row)
        if len(values) > len(self.letters):
            raise IndexError(f"row {number} has {len(values)} cells, the sheet {len(self.letters)}")
        cells = [f'<row r="{number}">']
        add, plain, tail = cells.append, _PLAIN_TEXT.fullmatch, _PLAIN_TAIL.fullmatch
        money = self._money
        for opening, value in zip(self._openings, values, strict=False):
            kind = type(value)
            if kind is str:
                if not value:
                    continue
                if len(value) <= MAX_CELL_CHARS and (
                    plain(value) or (_plain_first(value[0]) and tail(value, 1))
                ):
                    add(f'{opening}{number}" t="inlineStr"><is><t>{value}</t></is></c>')
                    continue
            elif value is None:
                continue
            elif kind is int:
                add(f'{opening}{number}"><v>{value}</v></c>')
                continue
            elif kind is Styled:
                # The workbook shares one Styled per amount: its XML is made once. The
                # cell is kept beside its text, so its id is not reused while kept.
                kept = money.get(id(value))
                if kept is not None and kept[0] is value:
                    add(f"{opening}{number}{kept[1]}")
                    continue
                inner = value.value
                if type(inner) is Decimal and inner.is_finite():
                    text = f'" s="{value.style}"><v>{inner:f}</v></c>'
                    if len(money) >= _KEPT_MONEY:
                        money.clear()
                    money[id(value)] = (value, text)
                    add(f"{opening}{number}{text}")
                    continue
            elif kind is datetime:
                add(f'{opening}{number}" s="{self.date_style}"><v>{_serial(value)}</v></c>')
                continue
            add(self.cell(opening[6:] + number, value))  # opening[6:]: the column letters
        cells.append("</row>")
        return "".join(cells)

    def cell(self, ref: str, value: Any) -> str:
        kind = type(value)
        if kind is str:
            return _text_cell(ref, value)
        if kind is Styled:
            return _styled_cell(ref, value.value, value.style)
        if kind is bool:
            return f'<c r="{ref}" t="b"><v>{int(value)}</v></c>'
        if kind is int or kind is Decimal:
            return f'<c r="{ref}"><v>{_number(value)}</v></c>'
        if kind is datetime:
            return _styled_cell(ref, value, self.date_style)
        return _text_cell(ref, str(value))


def _text_cell(ref: str, value: str) -> str:
    text = safe_cell(value)
    if len(text) > MAX_CELL_CHARS:
        text = text[: MAX_CELL_CHARS - 1] + "…"
    if _NEEDS_CARE.search(text):
        text = escape(ILLEGAL_CHARACTERS_RE.sub("", text))
    space = ' xml:space="preserve"' if text[:1].isspace() or text[-1:].isspace() else ""
    return f'<c r="{ref}" t="inlineStr"><is><t{space}>{text}</t></is></c>'


def _styled_cell(ref: str, value: Decimal | int | datetime, style: int) -> str:
    if isinstance(value, datetime):
        return f'<c r="{ref}" s="{style}"><v>{_serial(value)}</v></c>'
    return f'<c r="{ref}" s="{style}"><v>{_number(value)}</v></c>'


@lru_cache(maxsize=1 << 14)
def _serial(moment: datetime) -> str:
    """Excel's serial for a moment; the rows of one chunk share their timestamps."""
    return repr(to_excel(excel_datetime(moment)))


def _number(value: Decimal | int) -> str:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"cannot write {value} as a number")
        return format(value, "f")
    return str(value)


def copy_or_link(source: Path, target: Path) -> None:
    """Archive a finished file: a hard link when possible (cheap), else a copy."""
    if target.exists() or target.is_symlink():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
