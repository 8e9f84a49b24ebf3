"""Streaming passes over a worksheet's XML, the first before calamine reads it.

The first bounds what calamine would allocate (the declared `<dimension>`, and
the rows, columns and cells actually present, since the dimension may be missing
or lie). The second, while calamine parses, collects what calamine does not tell:
hidden rows and columns, formulas with no cached value, error cells (#DIV/0!,
#N/A...), numbers it may show rounded and merged ranges (`scan_worksheet` can also
do both in one pass). The XML is matched with byte patterns block by block, never
parsed into a tree, so a million-row sheet costs about a second here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from batcher.core.errors import InputFileError
from batcher.intake.cellrefs import column_index
from batcher.intake.xlsx_limits import IntakeLimits, limit_error

_DIMENSION = re.compile(rb'<(?:\w+:)?dimension\s+ref="(?:[A-Z]+\d+:)?([A-Z]+)(\d+)"')
_PREFIX = re.compile(rb"<(\w+:)?worksheet\b")
_ATTRIBUTE = re.compile(rb'(\w+)="([^"]*)"')
# Only cells in columns of two or more letters (AA onwards) are located: that
# is cheap, as narrow sheets have none. A single-letter column is at most Z, so
# what goes unlocated is at most 26 columns of `max_rows` rows, and the count of
# cells present (`max_cells`) bounds those too.

# A stored number calamine's string view shows exactly as Excel does: at most
# 15 significant digits and 9 decimals, no exponent, not negative zero. calamine
# renders a number with 9 decimals (trailing zeros cut), which is the number's
# shortest text whenever it has 9 decimals or fewer and 15 digits or fewer. Any
# other `<v>` of a numeric cell is kept by the scan (`WorksheetScan.exact_numbers`)
# so that the reader renders it from its stored text instead of a second parse.
_EXACT_AS_SHOWN = rb"(?:-?[1-9]\d{0,5}(?:\.\d{1,9})?|0(?:\.\d{1,9})?|-?[1-9]\d{6,14})"


class _Patterns:
    """The byte patterns for one namespace prefix ('' or e.g. 'x:'), each starting with a
    literal so that the regex engine skips ahead with a fast search."""

    def __init__(self, prefix: bytes) -> None:
        p = re.escape(prefix)
        self.row_open = b"<" + prefix + b'row r="'
        self.cell_open = b"<" + prefix + b"c "
        # a cell whose position is not its first attribute, or that has none: counted
        # with bytes.count, which is many times faster than a regex stopping at every cell
        self.cell_placed = b"<" + prefix + b"c r"
        self.cell_bare = b"<" + prefix + b"c>"
        self.far_row = re.compile(rb"<" + p + rb'row r="(\d{7,})"')
        self.wide_cell = re.compile(rb"<" + p + rb'c r="([A-Z]{2,})(\d+)"')
        self.row_start = re.compile(rb"<" + p + rb"row[\s>]")
        self.cell_start = re.compile(rb"<" + p + rb"c[\s>/]")
        self.hidden_row = re.compile(rb"<" + p + rb'row r="(\d+)"[^>]*?\bhidden="(?:1|true)"')
        self.col = re.compile(rb"<" + p + rb"col\s[^>]*>")
        self.formula = b"<" + prefix + b"f"
        self.formula_no_value = re.compile(
            rb"<"
            + p
            + rb'c r="([A-Z]+)(\d+)"[^>]*>\s*<'
            + p
            + rb"f\b[^>]*?(?:/>|>([^<]*)</"
            + p
            + rb"f>)\s*(?:<"
            + p
            + rb"v\s*/>)?\s*</"
            + p
            + rb"c>"
        )
        self.error_cell = re.compile(
            rb"<"
            + p
            + rb'c r="([A-Z]+)(\d+)"[^>]*\bt="e"[^>]*>\s*(?:<'
            + p
            + rb"f\b[^>]*?(?:/>|>([^<]*)</"
            + p
            + rb"f>))?\s*<"
            + p
            + rb"v>([^<]*)</"
            + p
            + rb"v>"
        )
        self.merge = re.compile(rb"<" + p + rb'mergeCell ref="([A-Z]+)(\d+)(?::([A-Z]+)(\d+))?"')
        self.value_open = b"<" + prefix + b"v>"
        self.cell_close = b"</" + prefix + b"c>"
        # A `<v>` whose text calamine's string view may not show exactly (see
        # `_EXACT_AS_SHOWN`); the negative lookahead rejects the usual value in a few bytes.
        self.inexact_value = re.compile(
            rb"<" + p + rb"v>(?!" + _EXACT_AS_SHOWN + rb"</" + p + rb"v>)([^<]*)</" + p + rb"v>"
        )
        # What few sheets hold, looked for by polars' regex (a vectorised search for
        # several literals at once): `in` walks the block once per needle, and slowly
        # for needles ending in a character as common as `>`. Literals only, ASCII
        # (the prefix is `\w+:` in a bytes pattern).
        self.rare_details = "|".join(
            ['hidden="', f"<{prefix.decode('ascii')}f", 't="e"', "mergeCell "]
        )


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
    # (row, column) -> the stored text of a numeric cell that calamine's string view
    # may show rounded (1e-10 as '0'); only such cells, so usually none
    exact_numbers: dict[tuple[int, int], str] = field(default_factory=dict)
    # a numeric cell whose stored text is kept but whose position the scan could not
    # tell (no `r`, or its tag in the previous block): the reader cannot use exact_numbers
    exact_numbers_incomplete: bool = False


def scan_worksheet(
    path: Path, label: str, blocks: Iterable[bytes], limits: IntakeLimits, *, details: bool = True
) -> WorksheetScan:
    """Stream the worksheet XML; refuse as soon as it passes a limit.

    Without `details`, only what the limits need (extent and cells): what calamine
    does not tell (`scan_details`) can then be read while calamine parses.
    """
    scan = WorksheetScan()
    dimension_seen = False
    for block, patterns in _whole_tags(blocks):
        if not dimension_seen:
            # The schema puts <dimension> before <sheetData>: once the data begins it is
            # not coming (searching 40 MiB of cells for it cost a third of the scan).
            data_at = block.find(b"sheetData")
            found = _DIMENSION.search(block, 0, len(block) if data_at < 0 else data_at)
            dimension_seen = found is not None or data_at >= 0
            if found is not None:
                rows, letters = int(found[2]), found[1].decode()
                _check_extent(path, label, rows, column_index(letters) + 1, limits)
        _scan_extent(block, scan, patterns)
        _check_extent(path, label, scan.max_row, scan.max_column, limits, used=True)
        if scan.cells > limits.max_cells:
            raise limit_error(
                path, f"[{label}] holds over {scan.cells:,} cells", "max_cells", limits.max_cells
            )
        if details:
            _scan_details(block, scan, patterns)
    scan.merged = sorted(set(scan.merged))
    return scan


def scan_details(blocks: Iterable[bytes], scan: WorksheetScan) -> None:
    """The rest of a `scan_worksheet(..., details=False)`, over the same XML again:
    hidden rows and columns, formulas without a value, error cells, numbers to keep
    and merged ranges. No limit is checked here: the first pass checked them all."""
    for block, patterns in _whole_tags(blocks):
        _scan_details(block, scan, patterns)
    scan.merged = sorted(set(scan.merged))


def _whole_tags(blocks: Iterable[bytes]) -> Iterator[tuple[bytes, _Patterns]]:
    """The XML in blocks that end at a tag's end, with the patterns for its prefix."""
    patterns: _Patterns | None = None
    tail = b""
    for chunk in blocks:
        buffer = tail + chunk
        cut = buffer.rfind(b">") + 1  # whole tags only; the rest waits for the next chunk
        block, tail = buffer[:cut], buffer[cut:]
        if patterns is None:
            root = _PREFIX.search(block)
            if root is None:
                continue  # the root element is still to come
            patterns = _Patterns(root[1] or b"")
        yield block, patterns


def _scan_extent(block: bytes, scan: WorksheetScan, p: _Patterns) -> None:
    """The rows, columns and cells the block uses: what the limits are checked on."""
    last_row = block.rfind(p.row_open)
    if last_row >= 0:
        digits = block[last_row + len(p.row_open) : block.find(b'"', last_row + len(p.row_open))]
        if digits.isdigit():
            scan.max_row = max(scan.max_row, int(digits))
    # Rows are in order in any file Excel writes; a far row out of order is
    # caught here when it is beyond Excel's limit, and by its cells when wide.
    for digits in p.far_row.findall(block):
        scan.max_row = max(scan.max_row, int(digits))
    cells = block.count(p.cell_open)
    scan.cells += cells
    for letters, row in p.wide_cell.findall(block):
        scan.max_column = max(scan.max_column, column_index(letters.decode()) + 1)
        scan.max_row = max(scan.max_row, int(row))
    if block.count(p.cell_placed) != cells or p.cell_bare in block:
        # Cells without a position follow the one before them (and `r` not
        # first escapes the patterns): bound the width by the most cells any
        # row holds, and count them all.
        per_row = [len(p.cell_start.findall(part)) for part in p.row_start.split(block)]
        scan.max_column = max(scan.max_column, *per_row)
        scan.cells += sum(per_row) - cells


def _scan_details(block: bytes, scan: WorksheetScan, p: _Patterns) -> None:
    """What calamine does not tell, in the block: no limit depends on it."""
    rare = _may_hold(block, p.rare_details)
    if rare and b'hidden="' in block:
        scan.hidden_rows.update(int(r) for r in p.hidden_row.findall(block))
        scan.hidden_columns.update(_hidden_columns(block, p))
    if rare and p.formula in block:
        for letters, row, formula in p.formula_no_value.findall(block):
            position = (int(row), column_index(letters.decode()))
            scan.bad_cells[position] = ("formula_not_calculated", _text(formula))
    if rare and b't="e"' in block:
        for letters, row, formula, value in p.error_cell.findall(block):
            shown = _text(value) + (f" (from ={_text(formula)})" if formula else "")
            scan.bad_cells[(int(row), column_index(letters.decode()))] = ("formula_error", shown)
    if p.value_open in block:
        _keep_inexact_numbers(block, scan, p)
    if rare and b"mergeCell " in block:
        for c1, r1, c2, r2 in p.merge.findall(block):
            first, last = column_index(c1.decode()), column_index((c2 or c1).decode())
            scan.merged.append((int(r1), first, int(r2 or r1), last))


def _may_hold(block: bytes, literals: str) -> bool:
    """False when none of the `|`-separated ASCII literals is in the block; True when one
    may be (the caller looks with `in`), and always for a block that is not UTF-8."""
    try:
        text = pl.Series([block], dtype=pl.Binary).cast(pl.String)
    except pl.exceptions.PolarsError:  # not UTF-8
        return True
    return text.str.contains(literals)[0] is not False


def _keep_inexact_numbers(block: bytes, scan: WorksheetScan, p: _Patterns) -> None:
    """Record the stored text of numeric cells whose value calamine may show rounded."""
    for value in p.inexact_value.finditer(block):
        start = block.rfind(p.cell_open, 0, value.start())
        bare = block.rfind(p.cell_bare, 0, value.start())
        tag_end = block.find(b">", start)
        if (
            start < 0
            or bare > start
            or block[tag_end - 1 : tag_end] == b"/"
            or block.rfind(p.cell_close, 0, value.start()) > start
            or p.cell_start.search(block, start + 1, value.start()) is not None
        ):
            # no position, or the cell's tag is in the previous block, or cells written
            # in a way the byte patterns do not follow: the position is not certain
            scan.exact_numbers_incomplete = True
            continue
        attributes = dict(_ATTRIBUTE.findall(block, start, tag_end))
        if attributes.get(b"t", b"n") != b"n":
            continue  # a string, boolean, date or error: calamine shows its text as stored
        place = _CELL_REF.fullmatch(attributes.get(b"r", b""))
        if place is None:
            scan.exact_numbers_incomplete = True
            continue
        position = (int(place[2]), column_index(place[1].decode()))
        scan.exact_numbers[position] = value[1].decode("ascii", errors="replace")


_CELL_REF = re.compile(rb"([A-Z]+)(\d+)")


def _hidden_columns(block: bytes, p: _Patterns) -> Iterable[int]:
    for element in p.col.findall(block):
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
