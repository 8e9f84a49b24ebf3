"""The formula guard's shortcut for cells that start with an ASCII letter or digit gives
the same answer as the full check (first visible character, NFKC-folded)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from batcher.reporting.cells import (
    _LEADING_CONTROLS,
    FORMULA_TRIGGERS,
    _first_visible,
    is_formula_like,
)


def _full_check(text: str) -> bool:
    if not text:
        return False
    return text.startswith(_LEADING_CONTROLS) or _first_visible(text) in FORMULA_TRIGGERS


@given(st.text() | st.from_regex(r"[A-Za-z0-9=+\-@ \t\uff1d\u200b].*", fullmatch=True))
def test_the_shortcut_agrees_with_the_full_check(text: str) -> None:
    assert is_formula_like(text) == _full_check(text)


def test_letters_and_digits_first_are_plain_text() -> None:
    assert not is_formula_like("CC-1=2")
    assert not is_formula_like("0-1")
    assert is_formula_like("\uff1d1+1")  # full-width '=' still caught
