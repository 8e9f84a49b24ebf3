"""Read a recipients sheet (CSV or XLSX) into a polars frame of text cells.

Every cell is read as text, so leading zeros and long references survive, and
money never passes through a float. Each data row keeps `source_row`, the row
number the user sees in Excel:

- XLSX: the worksheet row number itself (a title row above the header, blank
  rows and merged cells do not shift it).
- CSV: the record number, counting the header and every line above it, blank
  lines included, which is the row Excel shows when it opens the file. A quoted
  field that contains a newline is still one record (one Excel row), so from
  that record on the row number is smaller than the text editor's line number.

Headers are matched to canonical fields through a small alias table
(case-, space- and punctuation-insensitive) or an explicit `--map FIELD=HEADER`.
Every other column is a pass-through column: kept with its header text and in
its original order, for the reports.

Problems that make the whole file unreadable raise `InputFileError` with the
file's name and how to fix it. Problems with single cells that only reading can
see (merged cells, rows with too many values) are returned as `SheetIssue`s for
validation to report with the other row errors.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from batcher.core.errors import InputFileError, UsageError
from batcher.core.fields import BASE_REQUIRED, CANONICAL_FIELDS, DERIVED_FIELDS, SOURCE_ROW
from batcher.intake.aliases import HEADER_ALIASES, normalise_header
from batcher.intake.csvfile import detect_delimiter, read_csv_grid
from batcher.intake.files import (
    CSV_EXTENSIONS,
    XLSX_EXTENSIONS,
    content_kind,
    ole_error,
    raise_not_a_workbook,
    read_all,
    read_head,
)
from batcher.intake.grid import build_sheet
from batcher.intake.hashing import FileDigest
from batcher.intake.header import check_mapping
from batcher.intake.sheet import Sheet, SheetIssue, SheetSource
from batcher.intake.xlsx_limits import IntakeLimits

# Callers import the reading API from here; the pieces live in the modules above.
__all__ = [
    "BASE_REQUIRED",
    "CANONICAL_FIELDS",
    "CSV_EXTENSIONS",
    "DERIVED_FIELDS",
    "HEADER_ALIASES",
    "SOURCE_ROW",
    "XLSX_EXTENSIONS",
    "FileDigest",
    "IntakeLimits",
    "Sheet",
    "SheetIssue",
    "detect_delimiter",
    "normalise_header",
    "read_sheet",
]


def read_sheet(
    path: str | Path,
    *,
    sheet: str | None = None,
    mapping: Mapping[str, str] | None = None,
    required: Iterable[str] = BASE_REQUIRED,
    limits: IntakeLimits | None = None,
    skip_hidden: bool = False,
) -> Sheet:
    """Read a CSV or XLSX sheet of recipients into text cells with canonical columns.

    `sheet` picks an XLSX worksheet by name (default: the first visible one).
    `mapping` is `{field: header}` from `--map`, overriding the alias table.
    `limits` bounds what an XLSX may make calamine allocate (see `IntakeLimits`).
    `skip_hidden` leaves out an XLSX's hidden rows and columns; by default they
    are read and each is reported in `Sheet.warnings`.
    Raises InputFileError for a file that cannot be read as a recipients sheet,
    and UsageError for a `mapping` that names an unknown field.
    """
    path = Path(path)
    required_set = frozenset(required)
    field_overrides = check_mapping(mapping or {})
    suffix = path.suffix.lower()
    head = read_head(path)
    kind = content_kind(head)
    if suffix in XLSX_EXTENSIONS:
        if kind != "zip":
            raise_not_a_workbook(path, kind)
        if sheet is not None and not sheet.strip():
            raise UsageError("--sheet needs a worksheet name")
        from batcher.intake.xlsx import read_xlsx_grid  # its XML parser: only for workbooks

        data = read_all(path)
        grid, sheet_name = read_xlsx_grid(
            path, data, sheet, field_overrides, limits or IntakeLimits(), skip_hidden=skip_hidden
        )
        source = SheetSource(path, FileDigest.of_bytes(data), "xlsx", sheet_name=sheet_name)
        return build_sheet(grid, source, mapping=field_overrides, required=required_set)
    if suffix in CSV_EXTENSIONS:
        if kind == "zip":
            raise InputFileError(
                f"{path.name} is an Excel workbook saved with a {suffix} name",
                hint=f"rename it to {path.stem}.xlsx, or save it from Excel as CSV UTF-8",
            )
        if kind == "ole":
            raise ole_error(path)
        if sheet is not None:
            raise UsageError(f"--sheet only applies to .xlsx files; {path.name} is a CSV file")
        grid, csv_input, digest = read_csv_grid(path, head, field_overrides)
        source = SheetSource(
            path, digest, "csv", encoding=csv_input.encoding, delimiter=csv_input.delimiter
        )
        return build_sheet(grid, source, mapping=field_overrides, required=required_set)
    if suffix == ".xls" or kind == "ole":
        raise ole_error(path)
    supported = ", ".join(sorted(CSV_EXTENSIONS | XLSX_EXTENSIONS))
    raise InputFileError(
        f"{path.name}: unsupported file type {suffix or '(no extension)'}",
        hint=f"save the sheet as .xlsx or .csv (supported: {supported})",
    )
