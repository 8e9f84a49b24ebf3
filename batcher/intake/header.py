"""Finding the header row and matching its cells to canonical fields (aliases or `--map`)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from batcher.core.errors import InputFileError, UsageError
from batcher.core.fields import CANONICAL_FIELDS, DERIVED_FIELDS, SOURCE_ROW
from batcher.intake.aliases import closest_headers, field_for_header, normalise_header

HEADER_SEARCH_ROWS = 10  # a title block above the header is rarely taller than this
_MIN_HEADER_MATCHES = 2


def check_mapping(mapping: Mapping[str, str]) -> dict[str, str]:
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


def find_header(rows: Sequence[Sequence[str | None]], mapping: Mapping[str, str]) -> int:
    """Index of the header among the first rows: the first that names enough known columns.

    Falls back to the first non-empty row, so a sheet with unrecognised headers
    still reaches the missing-column error, which suggests the closest headers.
    """
    first_non_empty: int | None = None
    for index, row in enumerate(rows[:HEADER_SEARCH_ROWS]):
        cells = [c.strip() for c in row if c and c.strip()]
        if not cells:
            continue
        if first_non_empty is None:
            first_non_empty = index
        if _hits(cells, mapping) >= _MIN_HEADER_MATCHES:
            return index
    return first_non_empty if first_non_empty is not None else 0


def _hits(cells: Sequence[str | None], mapping: Mapping[str, str]) -> int:
    """How many cells name a known column or a `--map`ped header."""
    mapped = {normalise_header(text) for h in mapping.values() if (text := mapped_header_text(h))}
    texts = [c.strip() for c in cells if c and c.strip()]
    return sum(1 for c in texts if field_for_header(c)[0] or normalise_header(c) in mapped)


#: Columns batcher writes beside the pass-through columns in its reports and
#: ledger exports (see reporting.outputs.ROWS_CSV_COLUMNS; a test keeps the two
#: in step). A user's column under one of these names is renamed
#: like a repeated header, so 'order_id' from the sheet never passes for batcher's.
BATCHER_COLUMNS: frozenset[str] = frozenset(
    {
        SOURCE_ROW, *CANONICAL_FIELDS, *DERIVED_FIELDS, "row_key", "state", "attempts",
        "idempotency_key", "order_id", "order_request_id", "transaction_id", "error_code",
        "error_message", "provider_request_id", "failure_kind", "conflict", "cost_currency",
    }
)  # fmt: skip


def unique_names(headers: Sequence[str], letters: Sequence[str]) -> list[str]:
    """Column names for the frame: the header text, made unique and never blank."""
    names: list[str] = []
    seen: set[str] = set(BATCHER_COLUMNS)
    for position, header in enumerate(headers):
        base = header or f"Column {letters[position] if position < len(letters) else position + 1}"
        name, counter = base, 2
        while name in seen:
            name, counter = f"{base} ({counter})", counter + 1
        seen.add(name)
        names.append(name)
    return names


def assign_fields(
    headers: Sequence[str], mapping: Mapping[str, str], path: Path, letters: Sequence[str]
) -> tuple[dict[str, int], str | None]:
    """Canonical field -> column position, and a currency implied by the amount header.

    `letters` are the columns' letters as Excel shows them, for `@C` in
    `--map` and for messages.
    """
    assigned: dict[str, int] = {}
    for name, wanted in mapping.items():
        position = _find_mapped_column(headers, letters, name, wanted, path)
        for other, taken_position in assigned.items():
            if taken_position == position:
                raise UsageError(
                    f"--map {other}={mapping[other]} and --map {name}={wanted} both name "
                    f"column {letters[position]} ({headers[position]!r})",
                    hint="map each field to its own column",
                )
        assigned[name] = position
    taken = set(assigned.values())
    implied: str | None = None
    for position, header in enumerate(headers):
        if position in taken or not header:
            continue
        field_name, currency = field_for_header(header)
        if field_name is None or field_name in mapping:
            continue
        if field_name in assigned:
            first = assigned[field_name]
            other = headers[first]
            choice = (
                f"--map {field_name}=@{letters[first]} or --map {field_name}=@{letters[position]}"
                if other == header
                else f"--map {field_name}={other!r}"
            )
            raise InputFileError(
                f"{path.name}: columns {letters[first]} ({other!r}) and {letters[position]} "
                f"({header!r}) both look like {field_name}",
                hint=f"choose one with {choice}",
            )
        assigned[field_name] = position
        implied = currency or implied
    return assigned, implied


# "--map recipient_email=@C" names a column by letter; "Email#2" the second
# column headed "Email". Either picks one of several identical headers.
_BY_LETTER = re.compile(r"^@([A-Za-z]{1,3})$")
_NTH = re.compile(r"^(?P<header>.+?)\s*#(?P<nth>[0-9]+)$")


def mapped_header_text(wanted: str) -> str | None:
    """The header text a `--map` value names (None for a column letter), for header search."""
    if _BY_LETTER.match(wanted):
        return None
    nth = _NTH.match(wanted)
    return nth["header"] if nth else wanted


def _find_mapped_column(
    headers: Sequence[str], letters: Sequence[str], name: str, wanted: str, path: Path
) -> int:
    by_letter = _BY_LETTER.match(wanted)
    if by_letter:
        letter = by_letter[1].upper()
        if letter not in letters:
            raise InputFileError(
                f"{path.name}: --map {name}={wanted}: there is no column {letter}; "
                f"columns are {letters[0]} to {letters[-1]}",
                hint="use the letter Excel shows above the column, e.g. @C",
            )
        return letters.index(letter)
    nth = _NTH.match(wanted)
    matches = _matching_columns(headers, wanted)
    if not matches and nth:
        matches = _matching_columns(headers, nth["header"])
        index = int(nth["nth"])
        if 1 <= index <= len(matches):
            return matches[index - 1]
        if matches:
            raise InputFileError(
                f"{path.name}: --map {name}={wanted}: there are only {len(matches)} columns "
                f"headed {headers[matches[0]]!r}",
                hint=_choices(name, headers, letters, matches),
            )
    if len(matches) == 1:
        return matches[0]
    if matches:
        where = ", ".join(letters[m] for m in matches)
        raise InputFileError(
            f"{path.name}: --map {name}={wanted}: {len(matches)} columns are headed "
            f"{headers[matches[0]]!r} ({where})",
            hint=_choices(name, headers, letters, matches),
        )
    close = difflib.get_close_matches(wanted, [h for h in headers if h], n=3, cutoff=0.5)
    hint = "did you mean " + " or ".join(repr(c) for c in close) + "?" if close else ""
    raise InputFileError(
        f"{path.name}: --map {name}={wanted}: there is no column {wanted!r}; "
        f"headers are {', '.join(repr(h) for h in headers if h)}",
        hint=hint or None,
    )


def _matching_columns(headers: Sequence[str], wanted: str) -> list[int]:
    """Positions headed exactly `wanted`, else those equal once normalised."""
    exact = [position for position, header in enumerate(headers) if header == wanted]
    if exact:
        return exact
    target = normalise_header(wanted)
    return [p for p, header in enumerate(headers) if target and normalise_header(header) == target]


def _choices(
    name: str, headers: Sequence[str], letters: Sequence[str], matches: Sequence[int]
) -> str:
    header = headers[matches[0]]
    options = [f"--map {name}=@{letters[m]}" for m in matches]
    return (
        f"name one column: {' or '.join(options)}, or --map {name}='{header}#2' "
        "for the second one headed so"
    )


def header_recognised(cells: Sequence[str], mapping: Mapping[str, str]) -> bool:
    """Whether a row names enough known columns to be the header (as `find_header` decides)."""
    return find_header([cells], mapping) == 0 and _hits(cells, mapping) >= _MIN_HEADER_MATCHES


_EXAMPLE_HEADERS = "Email, Product code, Amount, Currency"
_LOOKS_LIKE_DATA = re.compile(r"@|^[-+]?[0-9][0-9.,]*$")


def missing_columns_error(
    missing: Sequence[str],
    headers: Sequence[str],
    unassigned: Sequence[str],
    path: Path,
    *,
    recognised: bool,
    header_row: int,
    sheet: str | None = None,
    other_sheets: Sequence[str] = (),
) -> InputFileError:
    """Required columns are missing: say why (no header found? data in row 1?) and how to fix it."""
    where = f"{path.name} [{sheet}]" if sheet else path.name
    listed = ", ".join(repr(h) for h in headers if h) or "nothing"
    hints: list[str] = []
    if other_sheets:
        names = ", ".join(repr(n) for n in other_sheets)
        hints.append(
            f"if the recipients are on another sheet, choose it with --sheet NAME ({names})"
        )
    if not recognised and any(_LOOKS_LIKE_DATA.search(h) for h in headers if h):
        message = (
            f"{where}: no header row: row {header_row} holds data ({listed}), not column names"
        )
        hints.append(f"add a header row above the data naming the columns, e.g. {_EXAMPLE_HEADERS}")
    elif not recognised:
        message = (
            f"{where}: no header row found: batcher looks for it in the first "
            f"{HEADER_SEARCH_ROWS} rows only, and row {header_row} reads {listed}"
        )
        hints.append(
            f"put the header row (e.g. {_EXAMPLE_HEADERS}) within the first "
            f"{HEADER_SEARCH_ROWS} rows, deleting the rows above it, or add one"
        )
    else:
        parts: list[str] = []
        for name in missing:
            close = closest_headers(name, unassigned)
            if close:
                quoted = " or ".join(repr(c) for c in close)
                parts.append(f"{name} (closest header: {quoted}; use --map {name}={close[0]!r})")
            else:
                parts.append(name)
        noun = "column" if len(missing) == 1 else "columns"
        message = f"{where}: missing required {noun} {'; '.join(parts)}. Headers found: {listed}"
        hints.append("rename the column, or tell batcher which one it is with --map FIELD=HEADER")
        return InputFileError(message, hint="; ".join(hints))
    hints.append("or name the columns with --map FIELD=HEADER")
    return InputFileError(message, hint="; ".join(hints))


def clean_header(cell: str | None) -> str:
    # A BOM can survive a double-encoded export; it is never part of a header.
    return (cell or "").replace("\ufeff", "").strip()
