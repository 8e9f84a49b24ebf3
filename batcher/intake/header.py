"""Finding the header row and matching its cells to canonical fields (aliases or `--map`)."""

from __future__ import annotations

import difflib
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
    mapped = {normalise_header(h) for h in mapping.values()}
    first_non_empty: int | None = None
    for index, row in enumerate(rows[:HEADER_SEARCH_ROWS]):
        cells = [c.strip() for c in row if c and c.strip()]
        if not cells:
            continue
        if first_non_empty is None:
            first_non_empty = index
        hits = sum(1 for c in cells if field_for_header(c)[0] or normalise_header(c) in mapped)
        if hits >= _MIN_HEADER_MATCHES:
            return index
    return first_non_empty if first_non_empty is not None else 0


def unique_names(headers: Sequence[str], letters: Sequence[str]) -> list[str]:
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


def assign_fields(
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
        field_name, currency = field_for_header(header)
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


def missing_columns_error(
    missing: Sequence[str], headers: Sequence[str], unassigned: Sequence[str], path: Path
) -> InputFileError:
    parts: list[str] = []
    for name in missing:
        close = closest_headers(name, unassigned)
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


def clean_header(cell: str | None) -> str:
    # A BOM can survive a double-encoded export; it is never part of a header.
    return (cell or "").replace("\ufeff", "").strip()
