"""Parsing a CSV with polars: the delimiter, the header among the first records, shape errors."""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import polars as pl

from batcher.core.errors import InputFileError
from batcher.intake.csvshape import csv_shape_error
from batcher.intake.decode import (
    CsvInput,
    NotUtf8,
    after_late_bad_byte,
    choose_csv_input,
    sample_text,
)
from batcher.intake.grid import Grid
from batcher.intake.hashing import FileDigest, changed_while_reading, file_identity
from batcher.intake.header import find_header

_CSV_SPARE_COLUMNS = 8  # extra fields a CSV row may carry before we give up on the file


_DELIMITERS = ("\t", ";", ",")


def read_csv_grid(
    path: Path, head: bytes, mapping: Mapping[str, str]
) -> tuple[Grid, CsvInput, FileDigest]:
    """Parse a CSV while a background thread hashes the file."""
    csv_input = choose_csv_input(path, head)
    if csv_input.digest is not None:
        grid, csv_input = _parse_csv_any_encoding(path, csv_input, mapping)
        return grid, csv_input, csv_input.digest or FileDigest.of_bytes(b"")
    before = file_identity(path)
    digest = FileDigest.of_file(path)
    grid, csv_input = _parse_csv_any_encoding(path, csv_input, mapping)
    if file_identity(path) != before:
        raise changed_while_reading(path)
    return grid, csv_input, digest


def _parse_csv_any_encoding(
    path: Path, csv_input: CsvInput, mapping: Mapping[str, str]
) -> tuple[Grid, CsvInput]:
    try:
        return _parse_csv(path, csv_input, mapping)
    except NotUtf8:
        # The start was UTF-8 but a later byte is not: cp1252, or a mixed file (refused).
        fallback = after_late_bad_byte(path, csv_input)
        if fallback is csv_input:
            raise InputFileError(
                f"{path.name}: not a readable CSV file (polars reports invalid UTF-8)",
                hint="open it in Excel and save it as CSV UTF-8",
            ) from None
        return _parse_csv(path, replace(fallback, delimiter=csv_input.delimiter), mapping)


def _parse_csv(
    path: Path, csv_input: CsvInput, mapping: Mapping[str, str]
) -> tuple[Grid, CsvInput]:
    sample, truncated = sample_text(csv_input)
    delimiter = detect_delimiter(sample, truncated=truncated)
    csv_input = replace(csv_input, delimiter=delimiter)
    records = _sample_records(sample, delimiter, truncated=truncated)
    if not any(any(c.strip() for c in r) for r in records):
        raise InputFileError(
            f"{path.name} has no header row", hint="the first line must name the columns"
        )
    header_index = find_header(records, mapping)
    header_cells = list(records[header_index])
    width = len(header_cells)
    try:
        frame = _polars_csv(csv_input, header_index + 1, width)
    except pl.exceptions.ComputeError as exc:
        if "more fields" not in str(exc):
            raise _csv_error(path, csv_input, header_cells, exc) from None
        # Some rows carry surplus values. Read again with spare columns, so that
        # those rows are reported one by one instead of failing the whole file.
        try:
            frame = _polars_csv(csv_input, header_index + 1, width + _CSV_SPARE_COLUMNS)
        except pl.exceptions.ComputeError as again:
            raise _csv_error(path, csv_input, header_cells, again) from None
    header_row = header_index + 1
    grid = Grid(
        header_cells=header_cells,
        data=frame,
        first_data_row=header_row + 1,
        header_row=header_row,
    )
    return grid, csv_input


def _polars_csv(csv_input: CsvInput, skip_rows: int, width: int) -> pl.DataFrame:
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
    path: Path, csv_input: CsvInput, header: Sequence[str], exc: Exception
) -> InputFileError | NotUtf8:
    if "utf-8" in str(exc).lower() and csv_input.polars_encoding == "utf8":
        return NotUtf8()
    return csv_shape_error(path, csv_input, header, _CSV_SPARE_COLUMNS, exc)


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
