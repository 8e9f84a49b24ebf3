"""Reading an XLSX worksheet with calamine (fastexcel): sheet choice, limits, numbers as shown."""

from __future__ import annotations

import contextlib
import io
import re
import zipfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, Literal
from xml.etree import ElementTree

import polars as pl

from batcher.core.errors import InputFileError
from batcher.intake.cellrefs import column_index, column_letter
from batcher.intake.grid import Grid
from batcher.intake.header import HEADER_SEARCH_ROWS, find_header
from batcher.intake.xlsx_issues import XlsxFacts, hidden_column_warnings
from batcher.intake.xlsx_limits import IntakeLimits, check_archive, inflate
from batcher.intake.xlsx_scan import (
    WorksheetScan,
    scan_details,
    scan_worksheet,
    worksheet_missing,
)


@dataclass(frozen=True)
class _WorksheetEntry:
    name: str
    state: str  # visible | hidden | veryHidden
    part: str  # zip member holding the worksheet XML


def read_xlsx_grid(
    path: Path,
    data: bytes,
    wanted: str | None,
    mapping: Mapping[str, str],
    limits: IntakeLimits,
    *,
    skip_hidden: bool = False,
) -> tuple[Grid, str]:
    """The chosen worksheet's cells under its header, after the workbook passed `limits`."""
    import fastexcel  # lazy: only XLSX reads pay for it

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        check_archive(path, archive, limits)
        entries = _workbook_sheets(archive)
    except (zipfile.BadZipFile, KeyError, ElementTree.ParseError):
        raise InputFileError(
            f"{path.name} is damaged or is not an Excel workbook",
            hint="open it in Excel and save it again as .xlsx",
        ) from None
    entry = _choose_worksheet(path, entries, wanted)
    # Every limit is checked before calamine allocates anything; what the scan collects
    # besides (hidden cells, formulas, errors, numbers to keep) is read while calamine
    # parses, which it does without the GIL.
    scan = _scan_parts(path, data, archive, entry, limits, details=False)
    try:
        floats: pl.DataFrame | None = None
        with ThreadPoolExecutor(max_workers=1) as pool:
            text_load = pool.submit(_load_view, data, entry.name, "string")
            _rescan_details(path, data, archive, entry, scan, limits)
            if scan.exact_numbers_incomplete:  # the float view, beside the string view
                floats = _load_view(data, entry.name, "float")[1]
            text_view, text = text_load.result()
        if floats is not None:
            numbers = floats
        else:
            positions = [c.absolute_index for c in text_view.available_columns()]
            found = _numbers_from_text(text, positions, scan.exact_numbers)
            numbers = found if found is not None else _load_view(data, entry.name, "float")[1]
    except fastexcel.FastExcelError as exc:
        raise InputFileError(
            f"{path.name} [{entry.name}]: cannot read the worksheet ({str(exc).splitlines()[0]})",
            hint="open it in Excel and save it again as .xlsx",
        ) from None
    letters = [column_letter(c.absolute_index) for c in text_view.available_columns()]
    cells = _excel_cells(text, numbers)
    if skip_hidden and scan.hidden_columns:
        shown = [
            i for i, letter in enumerate(letters) if column_index(letter) not in scan.hidden_columns
        ]
        cells = cells.select(cells.columns[i] for i in shown)
        letters = [letters[i] for i in shown]
    if cells.height == 0 or cells.width == 0:
        raise InputFileError(
            f"{path.name} [{entry.name}] is empty",
            hint="put the header in the first row and one recipient per row below it",
        )
    head = cells.head(HEADER_SEARCH_ROWS).rows()
    header_index = find_header(head, mapping)
    header_cells, keep = _trim_trailing_blank_columns(list(head[header_index]), cells)
    data_frame = cells.slice(header_index + 1).select(keep)
    data_frame.columns = [f"c{i}" for i in range(len(keep))]
    kept_letters = letters[: len(keep)]
    headers = [c or "" for c in header_cells]
    facts = XlsxFacts(
        merged=scan.merged,
        hidden_rows=frozenset(scan.hidden_rows),
        bad_cells=scan.bad_cells,
        skip_hidden=skip_hidden,
        warnings=hidden_column_warnings(
            kept_letters, headers, scan.hidden_columns, header_index + 1
        ),
    )
    grid = Grid(
        header_cells=headers,
        data=data_frame,
        first_data_row=header_index + 2,
        header_row=header_index + 1,
        column_letters=kept_letters,
        xlsx=facts,
        sheet_names=tuple(e.name for e in entries),
    )
    return grid, entry.name


def _load_view(
    data: bytes, sheet: str, dtypes: Literal["string", "float"]
) -> tuple[Any, pl.DataFrame]:
    """The worksheet's cells, every column as `dtypes`: the sheet view and its frame."""
    import fastexcel

    view = fastexcel.read_excel(data).load_sheet(sheet, header_row=None, skip_rows=0, dtypes=dtypes)
    return view, view.to_polars()


# A stored number as Excel writes it (Python's float() also takes '1_0', 'nan', ' 1').
_STORED_NUMBER = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_PLAIN_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]*[1-9])?")


def _numbers_from_text(
    text: pl.DataFrame,
    column_positions: Sequence[int],
    exact_numbers: Mapping[tuple[int, int], str],
) -> pl.DataFrame | None:
    """What calamine's float view holds, from its string view and the scan's stored numbers.

    The float view is the string view parsed as numbers, except where calamine's
    text of a number is rounded to 9 decimals: those cells are the scan's
    `exact_numbers`, parsed from the worksheet's own text. Where a stored number
    and the string view disagree (the cell is not where the scan put it), None:
    the caller parses the float view instead.
    """
    columns = {
        position: name for position, name in zip(column_positions, text.columns, strict=True)
    }
    fixes: dict[str, tuple[list[int], list[float]]] = {}
    for (row, column), stored in exact_numbers.items():
        name = columns.get(column)
        if name is None or not 1 <= row <= text.height or not _STORED_NUMBER.fullmatch(stored):
            return None
        value = float(stored)
        shown = text[name][row - 1]
        if shown is not None and _PLAIN_NUMBER.fullmatch(shown) and shown != _calamine_text(value):
            return None
        rows, values = fixes.setdefault(name, ([], []))
        rows.append(row - 1)
        values.append(value)
    numbers = []
    for name in text.columns:
        floats = text[name].cast(pl.Float64, strict=False)
        if name in fixes:
            rows, values = fixes[name]
            floats = floats.scatter(rows, values)
        numbers.append(floats)
    return pl.DataFrame(numbers)


def _calamine_text(value: float) -> str:
    """calamine's string view of a number: 9 decimals, trailing zeros cut."""
    text = format(value, ".9f")
    return text.rstrip("0").rstrip(".") if "." in text else text


# Parts calamine inflates besides the worksheet; sizes are checked as they inflate.
_SHARED_PARTS = ("xl/sharedStrings.xml", "xl/styles.xml", "xl/workbook.xml")


def _scan_parts(
    path: Path,
    data: bytes,
    archive: zipfile.ZipFile,
    entry: _WorksheetEntry,
    limits: IntakeLimits,
    *,
    details: bool = True,
) -> WorksheetScan:
    """Inflate what calamine will read, within the byte budget, scanning the worksheet
    (its extent only, without `details`: `_rescan_details` reads the rest)."""
    budget = limits.max_uncompressed_bytes
    for name in _SHARED_PARTS:
        with contextlib.suppress(KeyError):
            member = archive.getinfo(name)
            for chunk in inflate(path, data, member, budget, limits):
                budget -= len(chunk)
    try:
        member = archive.getinfo(entry.part)
    except KeyError:
        raise worksheet_missing(path, entry.name) from None
    blocks = inflate(path, data, member, budget, limits)
    return scan_worksheet(path, entry.name, blocks, limits, details=details)


def _rescan_details(
    path: Path,
    data: bytes,
    archive: zipfile.ZipFile,
    entry: _WorksheetEntry,
    scan: WorksheetScan,
    limits: IntakeLimits,
) -> None:
    """The worksheet inflated again (it passed the byte budget already), for `scan_details`."""
    member = archive.getinfo(entry.part)
    scan_details(inflate(path, data, member, limits.max_uncompressed_bytes, limits), scan)


def _workbook_sheets(archive: zipfile.ZipFile) -> list[_WorksheetEntry]:
    """Worksheets in workbook order, with their visibility and XML part."""
    rel_ns = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
    workbook = ElementTree.fromstring(archive.read("xl/workbook.xml"))
    rels = ElementTree.fromstring(archive.read("xl/_rels/workbook.xml.rels"))
    targets = {rel.get("Id"): rel.get("Target", "") for rel in rels}
    entries: list[_WorksheetEntry] = []
    for element in workbook.iter():
        if not element.tag.endswith("}sheet"):
            continue
        target = targets.get(element.get(f"{{{rel_ns}}}id"), "")
        part = target.lstrip("/") if target.startswith("/") else f"xl/{target}"
        entries.append(
            _WorksheetEntry(
                name=element.get("name", ""), state=element.get("state", "visible"), part=part
            )
        )
    return entries


def _choose_worksheet(
    path: Path, entries: Sequence[_WorksheetEntry], wanted: str | None
) -> _WorksheetEntry:
    """`--sheet NAME` (exact, then case-insensitive), else the first visible sheet.

    Hidden sheets are skipped by default because people hide lookup tables and
    old versions there; naming one explicitly with --sheet still reads it.
    """
    names = ", ".join(repr(e.name) for e in entries)
    if wanted is not None:
        for entry in entries:
            if entry.name == wanted:
                return entry
        for entry in entries:
            if entry.name.casefold() == wanted.strip().casefold():
                return entry
        raise InputFileError(f"{path.name} has no sheet {wanted!r}", hint=f"sheets: {names}")
    for entry in entries:
        if entry.state == "visible":
            return entry
    raise InputFileError(
        f"{path.name} has no visible sheet", hint=f"name one with --sheet (sheets: {names})"
    )


def _excel_cells(text: pl.DataFrame, numbers: pl.DataFrame) -> pl.DataFrame:
    """One String column per worksheet column: numbers as Excel shows them, text as typed.

    `numbers` is the sheet as floats: calamine's float view, or the same built by
    `_numbers_from_text`. calamine's text rendering of a number keeps at most 9
    decimals (1e-10 becomes '0'), so numeric cells are re-rendered from their float. The float
    view also parses numeric-looking text, so a cell counts as numeric only when
    its text looks like a plain number with at most 15 significant digits:
    '007' keeps its zeros and a 20-digit reference typed as text keeps every digit.
    """
    plain_number = r"^-?(0|[1-9][0-9]*)(\.[0-9]*[1-9])?$"
    # More than 15 significant digits cannot be a number Excel shows: it is text
    # such as a long reference, which must keep every digit.
    significant = (
        pl.col("t").str.replace_all(r"[-.]", "").str.strip_chars_start("0").str.len_bytes()
    )
    columns: list[pl.Series] = []
    for name in text.columns:
        shown = text[name]
        floats = numbers[name] if name in numbers.columns else None
        if floats is None or floats.null_count() == len(floats):
            columns.append(shown)
            continue
        distinct = floats.drop_nulls().unique().to_list()
        rendered = pl.Series([excel_number_text(v) for v in distinct], dtype=pl.String)
        as_text = floats.replace_strict(pl.Series(distinct), rendered, default=None)
        looks_numeric = pl.col("t").str.contains(plain_number) & (significant <= 15)
        use_number = pl.col("f").is_not_null() & looks_numeric.fill_null(False)
        merged = pl.DataFrame({"t": shown, "f": floats, "n": as_text}).select(
            pl.when(use_number).then(pl.col("n")).otherwise(pl.col("t")).alias(name)
        )
        columns.append(merged.to_series())
    return pl.DataFrame(columns)


def excel_number_text(value: float) -> str:
    """The decimal Excel shows for a numeric cell.

    Shortest round-trip text (`repr`), so 49.99 stays 49.99, cut to Excel's 15
    significant digits, so a formula's 0.30000000000000004 reads as 0.3, the
    value the user sees. Integers have no '.0'; no exponent is ever used.
    """
    shortest = repr(value)
    if "e" not in shortest and "n" not in shortest:  # no exponent, not inf or nan
        # Most cells: 15 significant digits or fewer, so the text is repr's
        # without its '.0' (repr has no other trailing zeros).
        significant = shortest.lstrip("-").replace(".", "").lstrip("0")
        if len(significant) <= 15:
            text = shortest.removesuffix(".0")
            return "0" if text == "-0" else text
    number = Decimal(shortest)
    if not number.is_finite():
        return shortest
    if len(number.as_tuple().digits) > 15:
        number = number.quantize(Decimal(1).scaleb(number.adjusted() - 14), rounding=ROUND_HALF_UP)
    text = format(number.normalize(), "f")
    return "0" if text in {"-0", "0"} else text


def _trim_trailing_blank_columns(
    header: list[str | None], cells: pl.DataFrame
) -> tuple[list[str | None], list[str]]:
    """Drop columns with no header and no data (stray formatting widens the used range)."""
    keep = list(cells.columns)
    while keep and not (header[len(keep) - 1] or "").strip():
        if cells[keep[-1]].null_count() != cells.height:
            break
        keep.pop()
    return header[: len(keep)], keep
