"""Explaining a CSV that polars could not split into rows: which line, which column, what to fix.

Runs only after polars has refused the file, so it may read the whole text
in Python. It names, in this order: a stray or unclosed double quote, then a
record too wide to fit. polars's own message never reaches the user.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from batcher.core.errors import InputFileError
from batcher.intake.decode import CsvInput, text_codec
from batcher.intake.files import read_all

_QUOTE_HINT = (
    'put the whole value in double quotes and write a quote inside it twice ("Say ""hi"""), '
    "or remove the quote"
)
_DELIMITER_NAMES = {"\t": "tab", ";": "';'", ",": "','"}


def csv_shape_error(
    path: Path, csv_input: CsvInput, header: Sequence[str], spare: int, exc: Exception
) -> InputFileError:
    """The first quoting mistake or over-wide record in the file, as an error naming its line."""
    source = csv_input.source
    data = source if isinstance(source, bytes) else read_all(source)
    text = data.decode(text_codec(csv_input), errors="replace").removeprefix("\ufeff")
    quoting = _quote_error(path, text, csv_input.delimiter, header)
    if quoting is not None:
        return quoting
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=csv_input.delimiter)
    width = len(header)
    for record in reader:
        if len(record) > width + spare:
            return InputFileError(
                f"{path.name}: line {reader.line_num} has {len(record)} values but the header "
                f"has {width} (delimiter {_DELIMITER_NAMES[csv_input.delimiter]})",
                hint="check the quoting on that line: values that contain the delimiter "
                "must be in double quotes",
            )
    del exc  # polars's wording names its internals, not the user's file
    return InputFileError(
        f"{path.name}: batcher could not split the file into rows and columns",
        hint="open it in Excel and save it as CSV UTF-8",
    )


def _quote_error(
    path: Path, text: str, delimiter: str, header: Sequence[str]
) -> InputFileError | None:
    """A stray quote in an unquoted value, text after a closing quote, or a quote never closed."""
    lines = text.splitlines()
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    while True:
        start = reader.line_num + 1
        try:
            next(reader)
        except StopIteration:
            return None
        except csv.Error:
            problem = _line_quote_problem(
                lines[start - 1] if start <= len(lines) else "", delimiter
            )
            if problem is None:  # the quote opened on an earlier line of this record
                problem = ("unclosed", 0)
            return _quote_message(path, start, problem, header)
        if reader.line_num == start:  # one physical line: check it as written
            problem = _line_quote_problem(lines[start - 1], delimiter)
            if problem is not None and problem[0] != "unclosed":
                return _quote_message(path, start, problem, header)


def _line_quote_problem(line: str, delimiter: str) -> tuple[str, int] | None:
    """('stray' | 'after_close' | 'unclosed', field index) for the first bad quote on a line."""
    field_index, in_quotes, at_start, closed, i = 0, False, True, False, 0
    while i < len(line):
        char = line[i]
        if in_quotes:
            if char == '"':
                if line[i + 1 : i + 2] == '"':
                    i += 2
                    continue
                in_quotes, closed = False, True
        elif char == delimiter:
            field_index, at_start, closed = field_index + 1, True, False
            i += 1
            continue
        elif closed:
            return "after_close", field_index
        elif char == '"':
            if not at_start:
                return "stray", field_index
            in_quotes = True
        at_start = False
        i += 1
    return ("unclosed", field_index) if in_quotes else None


def _quote_message(
    path: Path, line: int, problem: tuple[str, int], header: Sequence[str]
) -> InputFileError:
    kind, index = problem
    column = repr(header[index]) if index < len(header) and header[index] else f"#{index + 1}"
    where = f"{path.name}: line {line}, column {column}"
    if kind == "unclosed":
        return InputFileError(
            f"{where}: a double quote opens a value that is never closed",
            hint="add the closing double quote at the end of the value, or remove the opening one",
        )
    what = "text after the closing double quote" if kind == "after_close" else (
        "a double quote in the middle of a value that does not start with one"
    )  # fmt: skip
    return InputFileError(f"{where}: {what}", hint=_QUOTE_HINT)
