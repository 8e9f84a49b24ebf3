"""Workbooks saved by LibreOffice Calc give the outcome their generated twins give."""

from __future__ import annotations

from pathlib import Path

import pytest

from batcher.intake.read import read_sheet
from batcher.intake.validate import validate_rows
from tests.test_intake_corpus import PRODUCTS, WALLETS

AUTHORED = Path(__file__).parent / "data" / "authored"

#: file -> (read_sheet keywords, valid rows, (row, column, code) errors, warning codes)
EXPECTED: dict[
    str, tuple[dict[str, object], int, tuple[tuple[int, str, str], ...], tuple[str, ...]]
] = {
    "hidden_row.xlsx": ({}, 3, (), ("hidden_row",)),
    "hidden_column.xlsx": ({}, 1, (), ("hidden_column",)),
    "error_cell_div0.xlsx": ({}, 1, ((3, "Amount", "formula_error"),), ()),
    "error_cell_na.xlsx": ({}, 1, ((2, "Email", "formula_error"),), ()),
    "notes_first_sheet_chosen.xlsx": ({"sheet": "Recipients"}, 1, (), ()),
    "lo_formulas.xlsx": (
        {},
        1,
        ((3, "Amount", "formula_error"), (4, "Amount", "formula_error")),
        (),
    ),
}


def test_every_authored_file_has_an_expectation() -> None:
    assert sorted(p.name for p in AUTHORED.glob("*.xlsx")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_authored_outcome(name: str) -> None:
    options, valid, errors, warnings = EXPECTED[name]
    sheet = read_sheet(AUTHORED / name, **options)  # type: ignore[arg-type]
    result = validate_rows(sheet, PRODUCTS, WALLETS)
    assert tuple(result.errors.select("source_row", "column", "code").rows()) == errors
    assert result.valid_count == valid
    assert tuple(w.code for w in sheet.warnings) == warnings
