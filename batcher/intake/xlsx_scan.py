"""One streaming pass over a worksheet's XML before calamine reads it.

It bounds what calamine would allocate (the declared `<dimension>`, and the
rows, columns and cells actually present, since the dimension may be missing
or lie) and collects what calamine does not tell: hidden rows and columns,
formulas with no cached value, error cells (#DIV/0!, #N/A...) and merged
ranges. The XML is matched with byte patterns block by block, never parsed
into a tree, so a million-row sheet costs about a second here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from batcher.core.errors import InputFileError
from batcher.intake.cellrefs import column_index
from batcher.intake.xlsx_limits import IntakeLimits, limit_error

_DIMENSION = re.compile(rb'<(?:\w+:)?dimension\s+ref="(?:[A-Z]+\d+:)?([A-Z]+)(\d+)"')
_ROW_NUMBER = re.compile(rb'<(?:\w+:)?row\s+r="(\d+)"')
_CELL_COLUMN = re.compile(rb'<(?:\w+:)?c\s[^>]*?\br="([A-Z]+)\d+"')
_ROW_START = re.compile(rb"<(?:\w+:)?row[\s>]")
_CELL_START = re.compile(rb"<(?:\w+:)?c[\s>/]")
_HIDDEN_ROW = re.compile(rb'<(?:\w+:)?row\s+r="(\d+)"[^>]*?\bhidden="(?:1|true)"')
_COL = re.compile(rb"<(?:\w+:)?col\s[^>]*>")
_ATTRIBUTE = re.compile(rb'(\w+)="([^"]*)"')
_FORMULA_NO_VALUE = re.compile(
    rb'<(?:\w+:)?c\s+r="([A-Z]+)(\d+)"[^>]*>\s*<(?:\w+:)?f\b[^>]*?(?:/>|>([^<]*)</(?:\w+:)?f>)\s*'
    rb"(?:<(?:\w+:)?v\s*/>)?\s*</(?:\w+:)?c>"
)
_ERROR_CELL = re.compile(
    rb'<(?:\w+:)?c\s+r="([A-Z]+)(\d+)"[^>]*\bt="e"[^>]*>\s*'
    rb"(?:<(?:\w+:)?f\b[^>]*?(?:/>|>([^<]*)</(?:\w+:)?f>))?\s*<(?:\w+:)?v>([^<]*)</(?:\w+:)?v>"
)
_MERGE_REF = re.compile(rb'<(?:\w+:)?mergeCell\s+ref="([A-Z]+)(\d+)(?::([A-Z]+)(\d+))?"')


@dataclass
class WorksheetScan:
    """What the pass found; positions are 1-based rows and 0-based columns."""

    hidden_rows: set[int] = field(default_factory=set)
    hidden_columns: set[int] = field(default_factory=set)
    # (row, column) -> (code, text): 'formula_not_calculated' with the formula,
    # or 'formula_error' with the error value (and its formula, when there is one)
    bad_cells: dict[tuple[int, int], tuple[str, str]] = field(default_factory=dict)
    merged: list[tuple[int, int, int, int]] = field(default_factory=list)
    max_row: int = 0
    max_column: int = 0  # 1-based: the count of columns up to the last one used
    cells: int = 0


def scan_worksheet(
    path: Path, label: str, blocks: Iterable[bytes], limits: IntakeLimits
) -> WorksheetScan:
    """Stream the worksheet XML; refuse as soon as it passes a limit."""
    scan = WorksheetScan()
    dimension_seen = False
    tail = b""
    for chunk in blocks:
        buffer = tail + chunk
        cut = buffer.rfind(b">") + 1  # whole tags only; the rest waits for the next chunk
        block, tail = buffer[:cut], buffer[cut:]
        if not dimension_seen and (found := _DIMENSION.search(block)):
            dimension_seen = True
            _check_extent(path, label, int(found[2]), column_index(found[1].decode()) + 1, limits)
        _scan_block(block, scan)
        _check_extent(path, label, scan.max_row, scan.max_column, limits, used=True)
        if scan.cells > limits.max_cells:
            raise limit_error(
                path, f"[{label}] holds over {scan.cells:,} cells", "max_cells", limits.max_cells
            )
    scan.merged = sorted(set(scan.merged))
    return scan


def _scan_block(block: bytes, scan: WorksheetScan) -> None:
    rows = _ROW_NUMBER.findall(block)
    if rows:
        scan.max_row = max(scan.max_row, *map(int, rows))
    cells = block.count(b"<c ") + block.count(b"<c>")
    if b":c " in block or b":c>" in block:  # a namespace prefix: count the slow way
        cells = len(_CELL_START.findall(block))
    scan.cells += cells
    columns = _CELL_COLUMN.findall(block)
    if columns:
        widest = max(columns, key=lambda letters: (len(letters), letters))
        scan.max_column = max(scan.max_column, column_index(widest.decode()) + 1)
    if len(columns) < cells:
        # Cells without a position follow the one before them: bound the
        # width by the most cells any row of this block holds.
        per_row = (len(_CELL_START.findall(part)) for part in _ROW_START.split(block))
        scan.max_column = max(scan.max_column, *per_row)
    if b'hidden="' in block:
        scan.hidden_rows.update(int(r) for r in _HIDDEN_ROW.findall(block))
        scan.hidden_columns.update(_hidden_columns(block))
    if b"<f" in block or b":f" in block:
        for letters, row, formula in _FORMULA_NO_VALUE.findall(block):
            position = (int(row), column_index(letters.decode()))
            scan.bad_cells[position] = ("formula_not_calculated", _text(formula))
    if b't="e"' in block:
        for letters, row, formula, value in _ERROR_CELL.findall(block):
            shown = _text(value) + (f" (from ={_text(formula)})" if formula else "")
            scan.bad_cells[(int(row), column_index(letters.decode()))] = ("formula_error", shown)
    if b"mergeCell" in block:
        for c1, r1, c2, r2 in _MERGE_REF.findall(block):
            first, last = column_index(c1.decode()), column_index((c2 or c1).decode())
            scan.merged.append((int(r1), first, int(r2 or r1), last))


def _hidden_columns(block: bytes) -> Iterable[int]:
    for element in _COL.findall(block):
        attributes = dict(_ATTRIBUTE.findall(element))
        low, high = attributes.get(b"min", b"1"), attributes.get(b"max", b"1")
        if attributes.get(b"hidden") in (b"1", b"true") and low.isdigit() and high.isdigit():
            first = int(low)
            yield from range(first - 1, min(int(high), first + 16_384))


def _text(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace")
    return text.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">").replace(
        "&quot;", '"'
    )  # fmt: skip


def _check_extent(
    path: Path, label: str, rows: int, columns: int, limits: IntakeLimits, *, used: bool = False
) -> None:
    where = f"[{label}] {'uses' if used else 'declares'}"
    if rows > limits.max_rows:
        raise limit_error(path, f"{where} row {rows:,}", "max_rows", limits.max_rows)
    if columns > limits.max_columns:
        raise limit_error(path, f"{where} column {columns:,}", "max_columns", limits.max_columns)
    if rows * columns > limits.max_cells:
        raise limit_error(
            path,
            f"{where} a range of {rows:,} rows x {columns:,} columns",
            "max_cells",
            limits.max_cells,
        )


def worksheet_missing(path: Path, label: str) -> InputFileError:
    return InputFileError(
        f"{path.name} [{label}]: the worksheet's data is missing from the file",
        hint="open it in Excel and save it again as .xlsx",
    )
