"""From raw cells under a header to a `Sheet`: naming columns, dropping blank rows, cell issues."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import polars as pl

from batcher.core.errors import InputFileError
from batcher.core.fields import CANONICAL_FIELDS, SOURCE_ROW
from batcher.intake.cellrefs import column_letter
from batcher.intake.frames import row_numbers_like
from batcher.intake.header import (
    assign_fields,
    clean_header,
    header_recognised,
    missing_columns_error,
    unique_names,
)
from batcher.intake.sheet import Sheet, SheetIssue, SheetSource
from batcher.intake.xlsx_issues import XlsxFacts, hidden_rows, xlsx_cell_issues


@dataclass
class Grid:
    """Raw cells below the header, before columns are named."""

    header_cells: list[str]
    data: pl.DataFrame  # String columns c0..cN, one per header cell (CSV adds spares)
    first_data_row: int  # source row of data's first row
    header_row: int
    column_letters: list[str] = field(default_factory=list)  # XLSX only
    xlsx: XlsxFacts | None = None  # what the worksheet's XML says beyond the cells
    sheet_names: tuple[str, ...] = ()  # every worksheet of the workbook, for messages


def build_sheet(
    grid: Grid,
    source: SheetSource,
    *,
    mapping: Mapping[str, str],
    required: frozenset[str],
) -> Sheet:
    path, sheet_name = source.path, source.sheet_name
    headers = [clean_header(h) for h in grid.header_cells]
    letters = grid.column_letters or [column_letter(i) for i in range(len(headers))]
    assigned, implied = assign_fields(headers, mapping, path, letters)
    missing = [n for n in CANONICAL_FIELDS if n in required and n not in assigned]
    if implied and "currency" in missing:
        missing.remove("currency")  # "Amount (GBP)" names the currency of every row
    if missing:
        unassigned = [h for i, h in enumerate(headers) if i not in assigned.values()]
        raise missing_columns_error(
            missing,
            headers,
            unassigned,
            path,
            recognised=header_recognised(headers, mapping),
            header_row=grid.header_row,
            sheet=sheet_name,
            other_sheets=[n for n in grid.sheet_names if n != sheet_name],
        )

    names = unique_names(headers, grid.column_letters)
    issues = _surplus_value_issues(grid.data, len(headers), grid.first_data_row)
    data = grid.data.with_columns(
        row_numbers_like(grid.data.to_series(0), grid.first_data_row, SOURCE_ROW)
    )
    data, blank_count = _drop_blank_rows(data)
    warnings: list[SheetIssue] = []
    if grid.xlsx is not None:
        data, warnings = hidden_rows(data, grid.xlsx)
    if data.height == 0:
        raise InputFileError(
            f"{source.label} has a header row (row {grid.header_row}) but no data rows",
            hint="add at least one recipient below the header",
        )
    frame, passthrough = _name_columns(data, names, assigned)
    frame = _undo_formula_guard(frame)
    columns = {name: headers[position] or names[position] for name, position in assigned.items()}
    cell_issues: list[SheetIssue] = []
    if grid.xlsx is not None:
        cell_issues, cell_warnings = xlsx_cell_issues(
            grid.xlsx, grid.column_letters, grid.first_data_row, assigned, columns, frame
        )
        warnings = [*grid.xlsx.warnings, *warnings, *cell_warnings]
    return Sheet(
        frame=frame,
        source=source,
        header_row=grid.header_row,
        headers=tuple(headers),
        columns=columns,
        passthrough=tuple(passthrough),
        required=required,
        implied_currency=implied,
        issues=tuple(issues + cell_issues),
        blank_rows=blank_count,
        warnings=tuple(warnings),
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
    # uses the prefix polars keeps beside each string, so it is cheaper than
    # starts_with. Few cells sort below "(" at all (those starting with a space,
    # a symbol among !"#$%&' or a control character, and empty ones), so one
    # comparison per cell first finds the columns worth the second.
    low = frame.select((pl.col(c) < pl.lit("(")).any() for c in text).row(0)
    text = [c for c, hit in zip(text, low, strict=True) if hit]
    if not text:
        return frame
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
