"""What an XLSX worksheet says beyond its cell values, as row errors and warnings.

Merged cells and formulas with no usable value make a row invalid when they
sit in a column batcher uses; hidden rows and columns are read (and warned
about) unless the caller asks to skip them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import polars as pl

from batcher.core.fields import SOURCE_ROW
from batcher.intake.cellrefs import column_index, column_letter
from batcher.intake.sheet import SheetIssue

#: issue codes that explain a cell fully: other errors on that cell would only repeat them
#: ("Amount is empty" for a formula that shows #DIV/0!)
CELL_EXPLAINED = frozenset({"formula_error", "formula_not_calculated"})
_HIDDEN_HINT = (
    "unhide it in Excel to check it, or read with skip_hidden=True "
    "to leave hidden rows and columns out"
)


@dataclass
class XlsxFacts:
    """From the worksheet's XML (see `xlsx_scan`): positions are 1-based rows, 0-based columns."""

    merged: list[tuple[int, int, int, int]] = field(default_factory=list)
    hidden_rows: frozenset[int] = frozenset()
    bad_cells: dict[tuple[int, int], tuple[str, str]] = field(default_factory=dict)
    skip_hidden: bool = False
    warnings: list[SheetIssue] = field(default_factory=list)  # e.g. hidden columns


def hidden_rows(data: pl.DataFrame, facts: XlsxFacts) -> tuple[pl.DataFrame, list[SheetIssue]]:
    """Data rows hidden in Excel: dropped under `skip_hidden`, else kept with a warning each."""
    if not facts.hidden_rows:
        return data, []
    is_hidden = pl.col(SOURCE_ROW).is_in(
        pl.Series(sorted(facts.hidden_rows), dtype=pl.Int64).implode()
    )
    rows = data.filter(is_hidden)[SOURCE_ROW].to_list()
    if not rows:
        return data, []
    if facts.skip_hidden:
        listed = ", ".join(map(str, rows[:20])) + (", ..." if len(rows) > 20 else "")
        warning = SheetIssue(
            source_row=rows[0],
            column="(whole row)",
            code="hidden_rows_skipped",
            message=f"{len(rows)} hidden row(s) left out: {listed}",
            hint="unhide them in Excel if they should be ordered",
        )
        return data.filter(~is_hidden), [warning]
    return data, [
        SheetIssue(
            source_row=row,
            column="(whole row)",
            code="hidden_row",
            message=f"row {row} is hidden in Excel but will be ordered",
            hint=_HIDDEN_HINT,
        )
        for row in rows
    ]


def hidden_column_warnings(
    letters: Sequence[str], headers: Sequence[str], hidden: set[int], header_row: int
) -> list[SheetIssue]:
    """One warning per hidden column that is read."""
    return [
        SheetIssue(
            source_row=header_row,
            column=header or letter,
            code="hidden_column",
            message=f"column {letter} ({header or 'no header'}) is hidden in Excel but is read",
            hint=_HIDDEN_HINT,
        )
        for letter, header in zip(letters, headers, strict=False)
        if column_index(letter) in hidden
    ]


def xlsx_cell_issues(
    facts: XlsxFacts,
    letters: Sequence[str],
    first_data_row: int,
    assigned: Mapping[str, int],
    columns: Mapping[str, str],
    frame: pl.DataFrame,
) -> tuple[list[SheetIssue], list[SheetIssue]]:
    """Row errors for merged and bad formula cells in canonical columns; warnings for the rest."""
    if not letters or not (facts.merged or facts.bad_cells):
        return [], []
    absolute = [column_index(letter) for letter in letters]
    field_at = {absolute[pos]: name for name, pos in assigned.items() if pos < len(absolute)}
    data_rows = set(frame[SOURCE_ROW].to_list())
    issues = _merged_cell_issues(facts.merged, first_data_row, field_at, columns, data_rows)
    warnings: list[SheetIssue] = []
    read_columns = set(absolute)
    for (row, col), (code, text) in sorted(facts.bad_cells.items()):
        if row not in data_rows or col not in read_columns:
            continue
        name = field_at.get(col)
        ref = f"{column_letter(col)}{row}"
        if code == "formula_error":
            message = f"{ref} shows the error {text}, not a value"
            hint = "fix the formula in Excel (or type the value), then save again"
        else:
            message = f"{ref} holds the formula ={text} but no calculated value"
            hint = (
                "open and save the file in Excel, which stores each formula's value, "
                "or type the value"
            )
        issue = SheetIssue(
            source_row=row,
            column=columns[name] if name else ref,
            code=code,
            message=message,
            hint=hint,
            field=name or "",
            value=text,
        )
        (issues if name else warnings).append(issue)
    return issues, warnings


def _merged_cell_issues(
    merged: Sequence[tuple[int, int, int, int]],
    first_data_row: int,
    field_at: Mapping[int, str],
    columns: Mapping[str, str],
    data_rows: set[int],
) -> list[SheetIssue]:
    """Flag data cells of canonical columns hidden under a merge (only the top-left has a value).

    Batcher does not copy the merged value into the other rows: whether a merged
    amount or product was meant for every row is a guess, and guesses cost money.
    """
    issues: list[SheetIssue] = []
    for first_row, first_col, last_row, last_col in merged:
        top_left = f"{column_letter(first_col)}{first_row}"
        span = f"{top_left}:{column_letter(last_col)}{last_row}"
        for row in range(max(first_row, first_data_row), last_row + 1):
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
                        message=f"{column_letter(col)}{row} is part of the merged cells {span}; "
                        f"only {top_left} holds a value",
                        hint="unmerge the cells and fill the value into every row",
                        field=name,
                    )
                )
    return issues
