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

import codecs
import contextlib
import csv
import difflib
import hashlib
import io
import itertools
import os
import re
import sys
import threading
import unicodedata
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Literal
from xml.etree import ElementTree

import polars as pl

from batcher.core.errors import InputFileError, UsageError
from batcher.core.fields import BASE_REQUIRED, CANONICAL_FIELDS, DERIVED_FIELDS, SOURCE_ROW
from batcher.intake.frames import row_numbers_like

# ---------------------------------------------------------------------------
# Canonical fields and header aliases.

_ALIASES: dict[str, tuple[str, ...]] = {
    "reference": (
        "reference", "ref", "orderref", "orderreference", "referenceid", "refno",
        "referencenumber", "externalreference", "externalref", "externalid",
        "clientreference", "yourreference", "customerreference",
    ),
    "recipient_email": (
        "recipientemail", "email", "emailaddress", "recipientemailaddress", "mail",
        "emailid",
    ),
    "recipient_name": (
        "recipientname", "name", "recipient", "fullname", "recipientfullname",
        "employeename", "displayname",
    ),
    "product_code": (
        "productcode", "product", "sku", "code", "productid", "productsku", "giftcard",
        "giftcardcode", "cardcode", "card",
    ),
    "merchant": ("merchant", "merchantname", "retailer", "store", "vendor"),
    "amount": (
        "amount", "value", "valuepurchased", "facevalue", "denomination", "giftvalue",
        "giftamount", "cardvalue", "cardamount",
    ),
    "currency": ("currency", "currencycode", "ccy", "cur"),
    "country": ("country", "countrycode", "recipientcountry", "countryiso"),
    "message": ("message", "giftmessage", "personalmessage", "msg", "greeting"),
    "payment_currency": ("paymentcurrency", "walletcurrency", "paywith", "paymentccy"),
}  # fmt: skip

#: normalised header text -> canonical field
HEADER_ALIASES: dict[str, str] = {
    alias: name for name, aliases in _ALIASES.items() for alias in aliases
}

# "Amount (GBP)", "Value [€]": an amount header that names its currency.
_AMOUNT_WITH_CURRENCY = re.compile(
    r"^(?P<base>.*?)\s*[\(\[]\s*(?P<ccy>[A-Za-z]{3}|[£€$¥])\s*[\)\]]\s*$"
)
_SYMBOL_CODES = {"£": "GBP", "€": "EUR", "¥": "JPY", "$": "USD"}

_HEADER_SEARCH_ROWS = 10  # a title block above the header is rarely taller than this
_MIN_HEADER_MATCHES = 2
_CSV_SPARE_COLUMNS = 8  # extra fields a CSV row may carry before we give up on the file
_SNIFF_BYTES = 64 * 1024

CSV_EXTENSIONS = frozenset({".csv", ".tsv", ".txt"})
XLSX_EXTENSIONS = frozenset({".xlsx", ".xlsm"})

_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ZIP_MAGIC = b"PK\x03\x04"


def normalise_header(text: str) -> str:
    """Lower-case letters and digits only: 'E-mail Address ' -> 'emailaddress'."""
    folded = unicodedata.normalize("NFKD", text).casefold()
    return "".join(ch for ch in folded if ch.isalnum() and not unicodedata.combining(ch))


# ---------------------------------------------------------------------------
# What reading returns.


@dataclass(frozen=True)
class SheetIssue:
    """A cell problem only the reader can see (merged cells, surplus CSV values).

    Validation reports these with the other row errors, so the row is invalid.
    """

    source_row: int
    column: str  # the user's header text, or a description when there is none
    code: str
    message: str
    hint: str = ""
    field: str = ""  # canonical field, when the cell belongs to one
    value: str = ""


@dataclass(frozen=True)
class Sheet:
    """A sheet read into text cells, with everything needed to explain it back.

    `frame` columns: `source_row` (Int64), then every canonical field in
    `CANONICAL_FIELDS` order (String; all-null when the sheet has no such
    column), then the pass-through columns under their header text (String).
    Cells are exactly as read: validation trims and normalises them.
    """

    frame: pl.DataFrame
    path: Path
    digest: FileDigest = field(repr=False, compare=False)  # see `sha256`
    file_format: Literal["csv", "xlsx"]
    sheet_name: str | None  # XLSX worksheet name
    encoding: str | None  # CSV encoding detected
    delimiter: str | None  # CSV delimiter detected
    decimal_comma: bool  # amounts use a decimal comma (a ';' CSV)
    header_row: int  # the header's row number as the user sees it
    headers: tuple[str, ...]  # header text of every column, in file order
    columns: dict[str, str]  # canonical field -> the user's header text
    passthrough: tuple[str, ...]  # pass-through column names in `frame`, in file order
    required: frozenset[str]
    implied_currency: str | None = None  # from a header such as "Amount (GBP)"
    issues: tuple[SheetIssue, ...] = ()
    blank_rows: int = 0  # wholly empty rows between data rows, ignored

    @property
    def sha256(self) -> str:
        """sha256 of the file's bytes (waits for the background hash, if still running)."""
        return self.digest.hexdigest()

    @property
    def row_count(self) -> int:
        return self.frame.height

    def header_for(self, field_name: str) -> str:
        """The user's header for a field, for messages; the field name when absent."""
        return self.columns.get(field_name, field_name)

    @property
    def label(self) -> str:
        """'recipients.xlsx' or 'recipients.xlsx [Sheet2]' for messages."""
        if self.sheet_name:
            return f"{self.path.name} [{self.sheet_name}]"
        return self.path.name


# Hashing a large CSV costs about half as much as parsing it. It runs on a
# background thread at the lowest CPU priority, so it soaks up the cores that
# parsing and validation leave idle instead of taking them from polars.
_LOWEST_PRIORITY = 19


def _lower_thread_priority() -> None:
    # Linux sets `nice` per thread, by thread id. Elsewhere that id could name
    # another process, so the hash simply competes there.
    if sys.platform.startswith("linux"):
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _LOWEST_PRIORITY)


_HASHING = ThreadPoolExecutor(
    max_workers=2, thread_name_prefix="batcher-sha256", initializer=_lower_thread_priority
)


class FileDigest:
    """The sha256 of a file's bytes: known already, or being computed on a background thread."""

    def __init__(self, value: str | None = None, pending: Future[str] | None = None) -> None:
        self._value = value
        self._pending = pending

    @classmethod
    def of_bytes(cls, data: bytes) -> FileDigest:
        return cls(value=hashlib.sha256(data).hexdigest())

    @classmethod
    def of_file(cls, path: Path) -> FileDigest:
        """Start hashing `path`; a file that changes meanwhile makes `hexdigest` raise."""
        identity = _file_identity(path)

        def compute() -> str:
            value = _file_sha256(path)
            if _file_identity(path) != identity:
                raise _changed_while_reading(path)
            return value

        return cls(pending=_HASHING.submit(compute))

    def hexdigest(self) -> str:
        if self._value is None:
            assert self._pending is not None
            self._value = self._pending.result()
        return self._value


def _changed_while_reading(path: Path) -> InputFileError:
    return InputFileError(
        f"{path.name} changed while batcher was reading it",
        hint="wait until the export has finished, then run again",
    )


@dataclass
class _Grid:
    """Raw cells below the header, before columns are named."""

    header_cells: list[str]
    data: pl.DataFrame  # String columns c0..cN, one per header cell (CSV adds spares)
    first_data_row: int  # source row of data's first row
    header_row: int
    column_letters: list[str] = field(default_factory=list)  # XLSX only
    merged: list[tuple[int, int, int, int]] = field(default_factory=list)  # XLSX, 1-based


# ---------------------------------------------------------------------------
# Entry point.


def read_sheet(
    path: str | Path,
    *,
    sheet: str | None = None,
    mapping: Mapping[str, str] | None = None,
    required: Iterable[str] = BASE_REQUIRED,
) -> Sheet:
    """Read a CSV or XLSX sheet of recipients into text cells with canonical columns.

    `sheet` picks an XLSX worksheet by name (default: the first visible one).
    `mapping` is `{field: header}` from `--map`, overriding the alias table.
    Raises InputFileError for a file that cannot be read as a recipients sheet,
    and UsageError for a `mapping` that names an unknown field.
    """
    path = Path(path)
    required_set = frozenset(required)
    field_overrides = _check_mapping(mapping or {})
    suffix = path.suffix.lower()
    head = _read_head(path)
    kind = _content_kind(head)
    if suffix in XLSX_EXTENSIONS:
        if kind != "zip":
            _raise_not_a_workbook(path, kind)
        if sheet is not None and not sheet.strip():
            raise UsageError("--sheet needs a worksheet name")
        data = _read_all(path)
        grid, sheet_name = _read_xlsx(path, data, sheet, field_overrides)
        return _build_sheet(
            grid, path=path, digest=FileDigest.of_bytes(data), file_format="xlsx",
            sheet_name=sheet_name, encoding=None, delimiter=None, mapping=field_overrides,
            required=required_set,
        )  # fmt: skip
    if suffix in CSV_EXTENSIONS:
        if kind == "zip":
            raise InputFileError(
                f"{path.name} is an Excel workbook saved with a {suffix} name",
                hint=f"rename it to {path.stem}.xlsx, or save it from Excel as CSV UTF-8",
            )
        if kind == "ole":
            raise _ole_error(path)
        if sheet is not None:
            raise UsageError(f"--sheet only applies to .xlsx files; {path.name} is a CSV file")
        grid, csv_input, digest = _read_csv(path, head, field_overrides)
        return _build_sheet(
            grid, path=path, digest=digest, file_format="csv", sheet_name=None,
            encoding=csv_input.encoding, delimiter=csv_input.delimiter, mapping=field_overrides,
            required=required_set,
        )  # fmt: skip
    if suffix == ".xls" or kind == "ole":
        raise _ole_error(path)
    supported = ", ".join(sorted(CSV_EXTENSIONS | XLSX_EXTENSIONS))
    raise InputFileError(
        f"{path.name}: unsupported file type {suffix or '(no extension)'}",
        hint=f"save the sheet as .xlsx or .csv (supported: {supported})",
    )


def _check_mapping(mapping: Mapping[str, str]) -> dict[str, str]:
    checked: dict[str, str] = {}
    for name, header in mapping.items():
        key = name.strip().lower()
        if key not in CANONICAL_FIELDS:
            close = difflib.get_close_matches(key, CANONICAL_FIELDS, n=1)
            hint = (
                f"did you mean {close[0]}?" if close else "fields: " + ", ".join(CANONICAL_FIELDS)
            )
            raise UsageError(f"--map {name}={header}: unknown field {name!r}", hint=hint)
        if not header.strip():
            raise UsageError(f"--map {name}= needs a header after '='")
        checked[key] = header.strip()
    return checked


def _open_error(path: Path, exc: OSError) -> InputFileError:
    if isinstance(exc, FileNotFoundError):
        return InputFileError(f"{path}: no such file")
    if isinstance(exc, IsADirectoryError):
        return InputFileError(f"{path} is a folder, not a sheet")
    return InputFileError(f"{path}: cannot read the file ({exc.strerror})")


def _read_head(path: Path) -> bytes:
    """The first bytes of the file, for sniffing; refuses a missing or empty file."""
    try:
        with path.open("rb") as handle:
            head = handle.read(_SNIFF_BYTES)
            more = bool(handle.read(1))
    except OSError as exc:
        raise _open_error(path, exc) from None
    if not more and not head.strip(b" \t\r\n\x00\xef\xbb\xbf\xff\xfe"):
        raise InputFileError(
            f"{path.name} is empty",
            hint="export the sheet again; it needs a header row and at least one data row",
        )
    return head


def _read_all(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _open_error(path, exc) from None


def _content_kind(data: bytes) -> Literal["zip", "ole", "text"]:
    if data.startswith(_ZIP_MAGIC):
        return "zip"
    if data.startswith(_OLE_MAGIC):
        return "ole"
    return "text"


def _ole_error(path: Path) -> InputFileError:
    # Encrypted .xlsx files and legacy .xls workbooks are both OLE compound files.
    return InputFileError(
        f"{path.name} is a password-protected or legacy .xls workbook, which batcher cannot read",
        hint="open it in Excel, remove the password (File > Info > Protect Workbook) "
        "and save it as .xlsx (Excel Workbook)",
    )


def _raise_not_a_workbook(path: Path, kind: str) -> None:
    if kind == "ole":
        raise _ole_error(path)
    raise InputFileError(
        f"{path.name} is not an Excel workbook: it looks like a text or CSV file with an "
        f"{path.suffix} name",
        hint=f"rename it to {path.stem}.csv, or open it in Excel and save it as .xlsx",
    )


# ---------------------------------------------------------------------------
# Header detection and column naming (shared by CSV and XLSX).


def _field_for_header(text: str) -> tuple[str | None, str | None]:
    """The canonical field a header names, and a currency it implies ('Amount (GBP)')."""
    name = HEADER_ALIASES.get(normalise_header(text))
    if name:
        return name, None
    match = _AMOUNT_WITH_CURRENCY.match(text)
    if match and HEADER_ALIASES.get(normalise_header(match["base"])) == "amount":
        code = match["ccy"]
        return "amount", _SYMBOL_CODES.get(code, code.upper())
    return None, None


def _find_header(rows: Sequence[Sequence[str | None]], mapping: Mapping[str, str]) -> int:
    """Index of the header among the first rows: the first that names enough known columns.

    Falls back to the first non-empty row, so a sheet with unrecognised headers
    still reaches the missing-column error, which suggests the closest headers.
    """
    mapped = {normalise_header(h) for h in mapping.values()}
    first_non_empty: int | None = None
    for index, row in enumerate(rows[:_HEADER_SEARCH_ROWS]):
        cells = [c.strip() for c in row if c and c.strip()]
        if not cells:
            continue
        if first_non_empty is None:
            first_non_empty = index
        hits = sum(1 for c in cells if _field_for_header(c)[0] or normalise_header(c) in mapped)
        if hits >= _MIN_HEADER_MATCHES:
            return index
    return first_non_empty if first_non_empty is not None else 0


def _unique_names(headers: Sequence[str], letters: Sequence[str]) -> list[str]:
    """Column names for the frame: the header text, made unique and never blank."""
    names: list[str] = []
    seen: set[str] = {SOURCE_ROW, *CANONICAL_FIELDS, *DERIVED_FIELDS}
    for position, header in enumerate(headers):
        base = header or f"Column {letters[position] if position < len(letters) else position + 1}"
        name, counter = base, 2
        while name in seen:
            name, counter = f"{base} ({counter})", counter + 1
        seen.add(name)
        names.append(name)
    return names


def _assign_fields(
    headers: Sequence[str], mapping: Mapping[str, str], path: Path
) -> tuple[dict[str, int], str | None]:
    """Canonical field -> column position, and a currency implied by the amount header."""
    assigned: dict[str, int] = {}
    for name, wanted in mapping.items():
        assigned[name] = _find_mapped_column(headers, name, wanted, path)
    taken = set(assigned.values())
    implied: str | None = None
    for position, header in enumerate(headers):
        if position in taken or not header:
            continue
        field_name, currency = _field_for_header(header)
        if field_name is None or field_name in mapping:
            continue
        if field_name in assigned:
            other = headers[assigned[field_name]]
            raise InputFileError(
                f"{path.name}: columns {other!r} and {header!r} both look like {field_name}",
                hint=f"choose one with --map {field_name}={other!r}",
            )
        assigned[field_name] = position
        implied = currency or implied
    return assigned, implied


def _find_mapped_column(headers: Sequence[str], name: str, wanted: str, path: Path) -> int:
    for position, header in enumerate(headers):
        if header == wanted:
            return position
    target = normalise_header(wanted)
    for position, header in enumerate(headers):
        if normalise_header(header) == target:
            return position
    close = difflib.get_close_matches(wanted, [h for h in headers if h], n=3, cutoff=0.5)
    hint = "did you mean " + " or ".join(repr(c) for c in close) + "?" if close else ""
    raise InputFileError(
        f"{path.name}: --map {name}={wanted}: there is no column {wanted!r}; "
        f"headers are {', '.join(repr(h) for h in headers if h)}",
        hint=hint or None,
    )


def _closest_headers(name: str, headers: Sequence[str]) -> list[str]:
    """Headers that look most like a field, best first (for a missing-column error)."""
    aliases = _ALIASES[name]
    scored: list[tuple[float, str]] = []
    for header in headers:
        key = normalise_header(header)
        if not key:
            continue
        best = max(difflib.SequenceMatcher(None, key, alias).ratio() for alias in aliases)
        if best >= 0.6:
            scored.append((best, header))
    scored.sort(key=lambda pair: -pair[0])
    return [header for _, header in scored[:3]]


def _missing_columns_error(
    missing: Sequence[str], headers: Sequence[str], unassigned: Sequence[str], path: Path
) -> InputFileError:
    parts: list[str] = []
    for name in missing:
        close = _closest_headers(name, unassigned)
        if close:
            quoted = " or ".join(repr(c) for c in close)
            parts.append(f"{name} (closest header: {quoted}; use --map {name}={close[0]!r})")
        else:
            parts.append(name)
    listed = ", ".join(repr(h) for h in headers if h) or "none"
    noun = "column" if len(missing) == 1 else "columns"
    return InputFileError(
        f"{path.name}: missing required {noun} {'; '.join(parts)}. Headers found: {listed}",
        hint="rename the column, or tell batcher which one it is with --map FIELD=HEADER",
    )


def _build_sheet(
    grid: _Grid,
    *,
    path: Path,
    digest: FileDigest,
    file_format: Literal["csv", "xlsx"],
    sheet_name: str | None,
    encoding: str | None,
    delimiter: str | None,
    mapping: Mapping[str, str],
    required: frozenset[str],
) -> Sheet:
    headers = [_clean_header(h) for h in grid.header_cells]
    assigned, implied = _assign_fields(headers, mapping, path)
    missing = [n for n in CANONICAL_FIELDS if n in required and n not in assigned]
    if implied and "currency" in missing:
        missing.remove("currency")  # "Amount (GBP)" names the currency of every row
    if missing:
        unassigned = [h for i, h in enumerate(headers) if i not in assigned.values()]
        raise _missing_columns_error(missing, headers, unassigned, path)

    names = _unique_names(headers, grid.column_letters)
    issues = _surplus_value_issues(grid.data, len(headers), grid.first_data_row)
    data = grid.data.with_columns(
        row_numbers_like(grid.data.to_series(0), grid.first_data_row, SOURCE_ROW)
    )
    data, blank_count = _drop_blank_rows(data)
    if data.height == 0:
        raise InputFileError(
            f"{path.name}{f' [{sheet_name}]' if sheet_name else ''} has a header row "
            f"(row {grid.header_row}) but no data rows",
            hint="add at least one recipient below the header",
        )
    frame, passthrough = _name_columns(data, names, assigned)
    frame = _undo_formula_guard(frame)
    columns = {name: headers[position] or names[position] for name, position in assigned.items()}
    merged_issues = _merged_cell_issues(grid, assigned, columns, frame[SOURCE_ROW])
    return Sheet(
        frame=frame,
        path=path,
        digest=digest,
        file_format=file_format,
        sheet_name=sheet_name,
        encoding=encoding,
        delimiter=delimiter,
        decimal_comma=delimiter == ";",
        header_row=grid.header_row,
        headers=tuple(headers),
        columns=columns,
        passthrough=tuple(passthrough),
        required=required,
        implied_currency=implied if "currency" not in assigned else None,
        issues=tuple(issues + merged_issues),
        blank_rows=blank_count,
    )


_GUARDED = "^'([=+\\-@\t\r])"


def _undo_formula_guard(frame: pl.DataFrame) -> pl.DataFrame:
    """Take back the `'` that batcher's reports put before `= + - @` (cells.safe_cell),
    so a fixed failed_rows.csv fed back in keeps the recipient's name as it was.
    Only columns that hold such a cell are touched: the common case costs one scan."""
    text = [c for c, dtype in frame.schema.items() if dtype == pl.String]
    if not text:
        return frame
    # Between "'" and "(" are exactly the texts that start with "'"; comparing
    # uses the prefix polars keeps beside each string, so it is cheaper than starts_with.
    flagged = frame.select(
        ((pl.col(c) >= pl.lit("'")) & (pl.col(c) < pl.lit("("))).any() for c in text
    ).row(0)
    guarded = [c for c, hit in zip(text, flagged, strict=True) if hit]
    if not guarded:
        return frame
    return frame.with_columns(pl.col(c).str.replace(_GUARDED, "$1") for c in guarded)


def _drop_blank_rows(data: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Rows with no value at all are not recipients; they keep nobody's row number."""
    blank = pl.all_horizontal(pl.col(c).is_null() for c in data.columns if c != SOURCE_ROW)
    count = int(data.select(blank.sum()).item())
    return (data.filter(~blank) if count else data), count


def _name_columns(
    data: pl.DataFrame, names: Sequence[str], assigned: Mapping[str, int]
) -> tuple[pl.DataFrame, list[str]]:
    """source_row, every canonical field (null when absent), then pass-through columns."""
    taken = set(assigned.values())
    selected: list[pl.Expr] = [pl.col(SOURCE_ROW)]
    for name in CANONICAL_FIELDS:
        if name in assigned:
            selected.append(pl.col(f"c{assigned[name]}").alias(name))
        else:
            selected.append(pl.lit(None, dtype=pl.String).alias(name))
    passthrough = [names[i] for i in range(len(names)) if i not in taken]
    selected += [pl.col(f"c{i}").alias(names[i]) for i in range(len(names)) if i not in taken]
    return data.select(selected), passthrough


def _clean_header(cell: str | None) -> str:
    # A BOM can survive a double-encoded export; it is never part of a header.
    return (cell or "").replace("\ufeff", "").strip()


def _surplus_value_issues(data: pl.DataFrame, width: int, first_row: int) -> list[SheetIssue]:
    """CSV rows with more values than the header: an unquoted delimiter in a value."""
    spares = list(data.columns[width:])
    if not spares:
        return []
    has_surplus = pl.any_horizontal(pl.col(c).is_not_null() for c in spares)
    rows = (
        data.with_row_index("_i")
        .filter(has_surplus)
        .select((pl.col("_i").cast(pl.Int64) + first_row).alias("row"))
    )
    return [
        SheetIssue(
            source_row=row,
            column="(whole row)",
            code="too_many_values",
            message=f"row has more values than the header has columns ({width})",
            hint="a value probably contains the delimiter; put that value in double quotes",
        )
        for row in rows["row"].to_list()
    ]


# ---------------------------------------------------------------------------
# CSV.

_DELIMITERS = ("\t", ";", ",")


@dataclass(frozen=True)
class _CsvInput:
    """What polars parses, and how: the file itself when it can, else re-encoded bytes."""

    source: Path | bytes
    encoding: str  # as detected, for people
    polars_encoding: str  # "utf8" or "windows-1252"
    delimiter: str = ","
    digest: FileDigest | None = None  # known already when the whole file had to be read


def _read_csv(
    path: Path, head: bytes, mapping: Mapping[str, str]
) -> tuple[_Grid, _CsvInput, FileDigest]:
    """Parse a CSV while a background thread hashes the file."""
    csv_input = _csv_input(path, head)
    if csv_input.digest is not None:
        grid, csv_input = _parse_csv_any_encoding(path, csv_input, mapping)
        return grid, csv_input, csv_input.digest or FileDigest.of_bytes(b"")
    before = _file_identity(path)
    digest = FileDigest.of_file(path)
    grid, csv_input = _parse_csv_any_encoding(path, csv_input, mapping)
    if _file_identity(path) != before:
        raise _changed_while_reading(path)
    return grid, csv_input, digest


def _parse_csv_any_encoding(
    path: Path, csv_input: _CsvInput, mapping: Mapping[str, str]
) -> tuple[_Grid, _CsvInput]:
    try:
        return _parse_csv(path, csv_input, mapping)
    except _NotUtf8:
        # The start was UTF-8 but a later byte is not: Excel's Windows "CSV" is cp1252.
        fallback = replace(csv_input, encoding="cp1252", polars_encoding="windows-1252")
        return _parse_csv(path, fallback, mapping)


def _file_identity(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


class _NotUtf8(Exception):
    pass


def _parse_csv(
    path: Path, csv_input: _CsvInput, mapping: Mapping[str, str]
) -> tuple[_Grid, _CsvInput]:
    sample, truncated = _sample_text(csv_input)
    delimiter = detect_delimiter(sample, truncated=truncated)
    csv_input = replace(csv_input, delimiter=delimiter)
    records = _sample_records(sample, delimiter, truncated=truncated)
    if not any(any(c.strip() for c in r) for r in records):
        raise InputFileError(
            f"{path.name} has no header row", hint="the first line must name the columns"
        )
    header_index = _find_header(records, mapping)
    header_cells = list(records[header_index])
    width = len(header_cells)
    try:
        frame = _polars_csv(csv_input, header_index + 1, width)
    except pl.exceptions.ComputeError as exc:
        if "more fields" not in str(exc):
            raise _csv_error(path, csv_input, width, exc) from None
        # Some rows carry surplus values. Read again with spare columns, so that
        # those rows are reported one by one instead of failing the whole file.
        try:
            frame = _polars_csv(csv_input, header_index + 1, width + _CSV_SPARE_COLUMNS)
        except pl.exceptions.ComputeError as again:
            raise _csv_error(path, csv_input, width, again) from None
    header_row = header_index + 1
    grid = _Grid(
        header_cells=header_cells,
        data=frame,
        first_data_row=header_row + 1,
        header_row=header_row,
    )
    return grid, csv_input


def _polars_csv(csv_input: _CsvInput, skip_rows: int, width: int) -> pl.DataFrame:
    """Every field as String; blank lines kept as all-null rows so row numbers hold."""
    return pl.read_csv(
        csv_input.source,
        has_header=False,
        separator=csv_input.delimiter,
        skip_rows=skip_rows,
        schema={f"c{i}": pl.String for i in range(width)},
        missing_columns="insert",
        encoding=csv_input.polars_encoding,
        raise_if_empty=False,
        quote_char='"',
    )


def _csv_error(
    path: Path, csv_input: _CsvInput, width: int, exc: Exception
) -> InputFileError | _NotUtf8:
    if "utf-8" in str(exc).lower() and csv_input.polars_encoding == "utf8":
        return _NotUtf8()
    return _csv_shape_error(path, csv_input, width, exc)


def _csv_input(path: Path, head: bytes) -> _CsvInput:
    """Decide how polars should read the file.

    UTF-8 (with or without BOM; polars drops the BOM) and cp1252 are parsed
    from the file itself. UTF-16 (Excel's "Unicode text") and bare-CR line
    ends are rewritten as UTF-8 bytes in memory first.
    """
    utf16 = _utf16_codec(head)
    if utf16 or _has_bare_cr_newlines(head):
        data = _read_all(path)
        payload = _utf16_to_utf8(data, utf16) if utf16 else data
        return _CsvInput(
            _normalise_newlines(payload), utf16 or "utf-8", "utf8", digest=FileDigest.of_bytes(data)
        )
    if head.startswith(codecs.BOM_UTF8):
        return _CsvInput(path, "utf-8-sig", "utf8")
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        decoder.decode(head, final=len(head) < _SNIFF_BYTES)
    except UnicodeDecodeError:
        return _CsvInput(path, "cp1252", "windows-1252")
    return _CsvInput(path, "utf-8", "utf8")


def _utf16_codec(head: bytes) -> str | None:
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"  # the codec reads the BOM and drops it
    return _guess_bomless_utf16(head)


def _utf16_to_utf8(data: bytes, codec: str) -> bytes:
    return data.decode(codec, errors="replace").encode("utf-8")


def _guess_bomless_utf16(sample: bytes) -> str | None:
    # ASCII text in UTF-16 has a NUL in every other byte.
    if len(sample) < 4 or sample.count(0) < len(sample) // 4:
        return None
    even_nuls = sample[0::2].count(0)
    odd_nuls = sample[1::2].count(0)
    return "utf-16-le" if odd_nuls > even_nuls else "utf-16-be"


def _has_bare_cr_newlines(head: bytes) -> bool:
    # Old Mac exports end lines with a bare CR, which polars does not split on.
    return b"\n" not in head and b"\r" in head


def _normalise_newlines(data: bytes) -> bytes:
    if _has_bare_cr_newlines(data[:_SNIFF_BYTES]):
        return data.replace(b"\r", b"\n")
    return data


def _sample_text(csv_input: _CsvInput) -> tuple[str, bool]:
    """The beginning of the file as text, and whether the file goes on beyond it."""
    if isinstance(csv_input.source, bytes):
        chunk, truncated = csv_input.source[:_SNIFF_BYTES], len(csv_input.source) > _SNIFF_BYTES
    else:
        with csv_input.source.open("rb") as handle:
            chunk = handle.read(_SNIFF_BYTES)
            truncated = bool(handle.read(1))
    if csv_input.polars_encoding == "windows-1252":
        text = chunk.decode("cp1252", errors="replace")
    else:
        text = codecs.getincrementaldecoder("utf-8")(errors="replace").decode(chunk)
    return text.removeprefix("\ufeff"), truncated


def detect_delimiter(sample: str, *, truncated: bool = False) -> str:
    """The delimiter among tab, ';' and ',' that splits the sample most consistently.

    Each candidate splits the first records (quotes respected, so quoted
    delimiters and newlines do not count). The winner is the one whose most
    common field count (at least 2) covers the most records, then the one with
    more fields. A ';' file with decimal commas ('50,00') splits consistently
    only on ';'. csv.Sniffer guesses from character frequencies and is often
    wrong on short or messy files.
    """
    best: tuple[float, int, int] | None = None
    chosen = ","
    for preference, delimiter in enumerate(reversed(_DELIMITERS)):
        parsed = _sample_records(sample, delimiter, truncated=truncated)
        records = [record for record in parsed if any(record)][:50]
        if not records:
            continue
        widths = [len(r) for r in records]
        width, count = max(
            ((w, widths.count(w)) for w in set(widths)), key=lambda pair: (pair[1], pair[0])
        )
        if width < 2:
            continue
        score = (count / len(records), width, preference)
        if best is None or score > best:
            best, chosen = score, delimiter
    return chosen


def _sample_records(sample: str, delimiter: str, *, truncated: bool) -> list[list[str]]:
    reader = csv.reader(io.StringIO(sample, newline=""), delimiter=delimiter, quotechar='"')
    try:
        records = list(itertools.islice(reader, 200))
    except csv.Error:
        records = []
    if truncated and records:
        records.pop()  # the sample may have cut the last record in half
    return records


def _csv_shape_error(
    path: Path, csv_input: _CsvInput, width: int, exc: Exception
) -> InputFileError:
    """Explain a CSV polars could not parse, naming the first record too wide to fit."""
    source = csv_input.source
    data = source if isinstance(source, bytes) else _read_all(source)
    codec = "cp1252" if csv_input.polars_encoding == "windows-1252" else "utf-8"
    text = data.decode(codec, errors="replace").removeprefix("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=csv_input.delimiter)
    name = {"\t": "tab", ";": "';'", ",": "','"}[csv_input.delimiter]
    try:
        for number, record in enumerate(reader, start=1):
            if len(record) > width + _CSV_SPARE_COLUMNS:
                return InputFileError(
                    f"{path.name}: row {number} has {len(record)} values but the header has "
                    f"{width} (delimiter {name})",
                    hint="check the quoting on that row: values that contain the delimiter "
                    "must be in double quotes",
                )
    except csv.Error as csv_exc:
        return InputFileError(
            f"{path.name}: not a readable CSV file ({csv_exc})",
            hint="open it in Excel and save it as CSV UTF-8",
        )
    return InputFileError(
        f"{path.name}: not a readable CSV file ({str(exc).splitlines()[0]})",
        hint="open it in Excel and save it as CSV UTF-8",
    )


# ---------------------------------------------------------------------------
# XLSX.


@dataclass(frozen=True)
class _WorksheetEntry:
    name: str
    state: str  # visible | hidden | veryHidden
    part: str  # zip member holding the worksheet XML


def _read_xlsx(
    path: Path, data: bytes, wanted: str | None, mapping: Mapping[str, str]
) -> tuple[_Grid, str]:
    import fastexcel  # lazy: only XLSX reads pay for it

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        entries = _workbook_sheets(archive)
    except (zipfile.BadZipFile, KeyError, ElementTree.ParseError):
        raise InputFileError(
            f"{path.name} is damaged or is not an Excel workbook",
            hint="open it in Excel and save it again as .xlsx",
        ) from None
    entry = _choose_worksheet(path, entries, wanted)
    try:
        reader = fastexcel.read_excel(data)
        text_view = reader.load_sheet(entry.name, header_row=None, skip_rows=0, dtypes="string")
        number_view = reader.load_sheet(entry.name, header_row=None, skip_rows=0, dtypes="float")
        text = text_view.to_polars()
        numbers = number_view.to_polars()
    except fastexcel.FastExcelError as exc:
        raise InputFileError(
            f"{path.name} [{entry.name}]: cannot read the worksheet ({str(exc).splitlines()[0]})",
            hint="open it in Excel and save it again as .xlsx",
        ) from None
    letters = [_column_letter(c.absolute_index) for c in text_view.available_columns()]
    cells = _excel_cells(text, numbers)
    if cells.height == 0 or cells.width == 0:
        raise InputFileError(
            f"{path.name} [{entry.name}] is empty",
            hint="put the header in the first row and one recipient per row below it",
        )
    head = cells.head(_HEADER_SEARCH_ROWS).rows()
    header_index = _find_header(head, mapping)
    header_cells, keep = _trim_trailing_blank_columns(list(head[header_index]), cells)
    data_frame = cells.slice(header_index + 1).select(keep)
    data_frame.columns = [f"c{i}" for i in range(len(keep))]
    merged = _merged_ranges(archive, entry.part)
    grid = _Grid(
        header_cells=[c or "" for c in header_cells],
        data=data_frame,
        first_data_row=header_index + 2,
        header_row=header_index + 1,
        column_letters=letters[: len(keep)],
        merged=merged,
    )
    return grid, entry.name


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

    The sheet is loaded twice from one parsed workbook: as text and as floats.
    calamine's text rendering of a number keeps at most 9 decimals (1e-10
    becomes '0'), so numeric cells are re-rendered from their float. The float
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
    number = Decimal(repr(value))
    if not number.is_finite():
        return repr(value)
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


def _column_letter(index: int) -> str:
    letters = ""
    index += 1
    while index:
        index, remainder = divmod(index - 1, 26)
        letters = chr(65 + remainder) + letters
    return letters


def _column_index(letters: str) -> int:
    value = 0
    for char in letters:
        value = value * 26 + ord(char) - 64
    return value - 1


_MERGE_REF = re.compile(rb'<(?:\w+:)?mergeCell\s+ref="([A-Z]+)(\d+)(?::([A-Z]+)(\d+))?"')


def _merged_ranges(archive: zipfile.ZipFile, part: str) -> list[tuple[int, int, int, int]]:
    """Merged ranges of a worksheet as (first_row, first_col, last_row, last_col), 1-based rows.

    calamine keeps a merged value in the top-left cell only; the worksheet XML
    lists the ranges after the cell data, so the part is streamed, not parsed.
    """
    ranges: list[tuple[int, int, int, int]] = []
    try:
        stream = archive.open(part)
    except KeyError:
        return ranges
    with stream:
        tail = b""
        while chunk := stream.read(1 << 20):
            block = tail + chunk
            if b"mergeCell" in block:
                for match in _MERGE_REF.finditer(block):
                    c1, r1, c2, r2 = match.groups()
                    ranges.append(
                        (
                            int(r1),
                            _column_index(c1.decode()),
                            int(r2 or r1),
                            _column_index((c2 or c1).decode()),
                        )
                    )
                tail = b""
            else:
                tail = block[-64:]
    return sorted(set(ranges))


def _merged_cell_issues(
    grid: _Grid, assigned: Mapping[str, int], columns: Mapping[str, str], source_rows: pl.Series
) -> list[SheetIssue]:
    """Flag data cells of canonical columns hidden under a merge (only the top-left has a value).

    Batcher does not copy the merged value into the other rows: whether a merged
    amount or product was meant for every row is a guess, and guesses cost money.
    """
    if not grid.merged or not grid.column_letters:
        return []
    data_rows = set(source_rows.to_list())
    absolute = [_column_index(letter) for letter in grid.column_letters]
    field_at = {absolute[pos]: name for name, pos in assigned.items() if pos < len(absolute)}
    issues: list[SheetIssue] = []
    for first_row, first_col, last_row, last_col in grid.merged:
        top_left = f"{_column_letter(first_col)}{first_row}"
        span = f"{top_left}:{_column_letter(last_col)}{last_row}"
        for row in range(max(first_row, grid.first_data_row), last_row + 1):
            if row not in data_rows:
                continue
            for col in range(first_col, last_col + 1):
                name = field_at.get(col)
                if name is None or (row, col) == (first_row, first_col):
                    continue
                issues.append(
                    SheetIssue(
                        source_row=row,
                        column=columns[name],
                        code="merged_cell",
                        message=f"{_column_letter(col)}{row} is part of the merged cells {span}; "
                        f"only {top_left} holds a value",
                        hint="unmerge the cells and fill the value into every row",
                        field=name,
                    )
                )
    return issues
