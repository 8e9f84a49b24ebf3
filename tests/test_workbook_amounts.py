"""Money cells on the streamed sheets: equal amounts share one cell, rounded as ever."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batcher.core.money import quantum
from batcher.reporting.workbook import _Styles


def styles() -> _Styles:
    return _Styles(date=1, money={"GBP": 2, "JPY": 3, "": 4})


def test_equal_amounts_share_one_cell() -> None:
    """600,000 money cells at 100k rows took ~4 s rounded and built one by one."""
    s = styles()
    first = s.amount(Decimal("12.50"), "GBP")
    assert first is not None and f"{first.value:f}" == "12.50" and first.style == 2
    assert s.amount(Decimal("12.5"), "GBP") is first
    assert s.amount(Decimal("12.500"), "GBP") is first
    assert s.amount(Decimal("12.50"), "JPY") is not first


def test_a_negative_zero_keeps_its_sign() -> None:
    s = styles()
    zero, negative = s.amount(Decimal("0.00"), "GBP"), s.amount(Decimal("-0"), "GBP")
    assert zero is not None and negative is not None
    assert (f"{zero.value:f}", f"{negative.value:f}") == ("0.00", "-0.00")


@given(
    st.lists(
        st.tuples(
            st.decimals(
                allow_nan=False, allow_infinity=False, places=4, min_value=-(10**6), max_value=10**6
            ),
            st.sampled_from(["GBP", "JPY", "EUR"]),
        ),
        max_size=30,
    )
)
def test_a_kept_cell_is_the_cell_made_anew(amounts: list[tuple[Decimal, str]]) -> None:
    s = styles()
    for value, currency in amounts * 2:
        cell = s.amount(value, currency)
        assert cell is not None
        made = value.quantize(quantum(currency), rounding=ROUND_HALF_UP)
        assert (f"{cell.value:f}", cell.style) == (f"{made:f}", s.money_style(currency))


def test_the_cycle_collector_is_paused_while_writing_and_restored_after() -> None:
    """The workbook is written with the collector off (hundreds of runs walking the
    report's objects, nothing to collect), and the collector is left as it was found,
    also when writing fails."""
    import gc

    from batcher.core.collector import collector_paused

    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("disk full")
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled(), "a caller's own pause is not undone"
    finally:
        gc.enable()


def test_the_workbook_is_written_with_the_collector_paused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc

    from batcher.reporting import workbook

    seen: list[bool] = []

    def spy(path: Path, model: object) -> Path:
        seen.append(gc.isenabled())
        return path

    monkeypatch.setattr(workbook, "_write_workbook", spy)
    workbook.write_workbook(tmp_path / "r.xlsx", object())  # type: ignore[arg-type]
    assert seen == [False] and gc.isenabled()
