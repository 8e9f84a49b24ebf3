"""Make cell values safe to write into CSV or XLSX files that people open in Excel.

A text cell that starts with `=`, `+`, `-` or `@` (or a tab or carriage return)
is run as a formula by Excel, LibreOffice and Google Sheets. Anything batcher
writes may echo text from a customer's sheet or a provider's answer, so every
report passes its text cells through `safe_cell` first.
"""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")

FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: T) -> T | str:
    """Return `value` with a leading `'` when it is text Excel would treat as a formula.

    Non-text values (numbers, Decimals, dates, None) are returned unchanged: they are
    written as typed cells, never parsed as formulas.
    """
    if isinstance(value, str) and value.startswith(FORMULA_TRIGGERS):
        return "'" + value
    return value
