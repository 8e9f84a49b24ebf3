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
    safe_cell,
    safe_texts,
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


_CELL = st.text() | st.from_regex(r"[A-Za-z0-9=+\-@ \t\r\n'\uff1d\u200b\ufeff£é].*", fullmatch=True)


@given(st.lists(_CELL | st.just(""), max_size=30))
def test_a_line_through_the_one_test_is_each_cell_through_safe_cell(texts: list[str]) -> None:
    assert safe_texts(list(texts)) == [safe_cell(t) for t in texts]


def test_a_line_with_one_formula_like_cell_guards_that_cell() -> None:
    assert safe_texts(["1", "abc", "=1+1", "", "-2"]) == ["1", "abc", "'=1+1", "", "'-2"]
    plain = ["1", "abc", "", "RW-1"]
    assert safe_texts(plain) is plain  # nothing to guard: the line as it is
