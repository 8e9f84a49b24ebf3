"""Make cell values safe to write into CSV or XLSX files that people open in Excel.

A text cell that starts with `=`, `+`, `-` or `@` is run as a formula by Excel,
LibreOffice and Google Sheets. Spreadsheet programs also skip what a person
cannot see before deciding: leading spaces, line breaks, tabs, no-break and
zero-width spaces, a byte-order mark. And they accept the full-width forms
(`＝`, `＋`, `－`, `＠`) typed by East Asian input methods. So the guard looks
at the first character that is *not* blank or invisible, after NFKC folding
(which turns `＝` into `=`). A text cell that would start a formula gets a
leading `'`, which every one of those programs shows as plain text.

Anything batcher writes may echo text from a customer's sheet or a provider's
answer, so every report passes its text cells through `safe_cell` first.
"""

from __future__ import annotations

import string
import unicodedata
from typing import TypeVar

T = TypeVar("T")

FORMULA_TRIGGERS = ("=", "+", "-", "@")
#: control characters that make a cell start a new field or formula in some readers
_LEADING_CONTROLS = ("\t", "\r", "\n")


def _first_visible(text: str) -> str:
    """The first character a spreadsheet would parse, NFKC-folded; '' if none."""
    for ch in text:
        if ch.isspace() or unicodedata.category(ch) in {"Cc", "Cf", "Zs", "Zl", "Zp"}:
            continue
        return unicodedata.normalize("NFKC", ch)[:1]
    return ""


def is_formula_like(text: str) -> bool:
    """Would Excel, LibreOffice or Google Sheets evaluate this text as a formula?"""
    if not text:
        return False
    first = text[0]
    if first.isascii() and first.isalnum():
        return False  # most cells: an ASCII letter or digit is visible and no trigger
    if text.startswith(_LEADING_CONTROLS):
        return True
    return _first_visible(text) in FORMULA_TRIGGERS


def leads_plainly(first: str) -> bool:
    """Is a text starting with the character `first` never formula-like, whatever follows?

    True when `first` is visible (a spreadsheet decides on it, not on what follows)
    and no trigger, even NFKC-folded: `•`, `£`, `é`. Writers use it to skip
    `safe_cell` for such text, which `safe_cell` would return unchanged."""
    return _first_visible(first) != "" and not is_formula_like(first)


def safe_cell(value: T) -> T | str:
    """Return `value` with a leading `'` when it is text a spreadsheet would run as a formula.

    Non-text values (numbers, Decimals, dates, None) are returned unchanged: they are
    written as typed cells, never parsed as formulas.
    """
    if isinstance(value, str) and is_formula_like(value):
        return "'" + value
    return value


#: what a text may start with to be plain whatever follows (no text at all, too):
#: `is_formula_like` answers False for it at its first test
_PLAIN_FIRST = frozenset(("", *string.ascii_letters, *string.digits))


def safe_texts(texts: list[str]) -> list[str]:
    """`[safe_cell(t) for t in texts]`, in one set test for a line of plain text cells.

    Most of a line's cells are empty or start with an ASCII letter or digit (keys,
    states, ids, amounts), which `safe_cell` returns unchanged: when every one does,
    `texts` itself is returned; otherwise each cell goes through `safe_cell`."""
    if _PLAIN_FIRST.issuperset([t[:1] for t in texts]):
        return texts
    return [safe_cell(t) for t in texts]
