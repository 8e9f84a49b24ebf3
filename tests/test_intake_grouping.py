"""The shortcuts of the row scans held to plain Python: grouping orders on numbered
keys (intake/scans.py), the formula-guard check (intake/grid.py), the worker thread."""

from __future__ import annotations

import re
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batcher.intake import scans
from batcher.intake.grid import _GUARDED, _undo_formula_guard
from batcher.intake.read import read_sheet

_CELLS = st.one_of(st.none(), st.sampled_from(["", " ", "a", "A", "b", "50", "50.0", "é", "a\x00"]))


def _plain_groups(rows: list[tuple[str | None, ...]]) -> dict[tuple[str | None, ...], list[int]]:
    groups: dict[tuple[str | None, ...], list[int]] = {}
    for position, key in enumerate(rows):
        groups.setdefault(key, []).append(position)
    return groups


def _grouped(frame: pl.DataFrame, keys: list[str]) -> dict[tuple[Any, ...], list[int]]:
    nulls = {n: frame[n].null_count() for n in keys}
    groups = scans._group_orders(frame, keys, nulls)
    assert groups.columns == [scans.ORDER_ID, *keys, scans._POSITIONS]
    assert sorted(groups[scans.ORDER_ID]) == list(range(groups.height))
    found: dict[tuple[Any, ...], list[int]] = {}
    for row in groups.iter_rows():
        key, positions = tuple(row[1:-1]), row[-1]
        assert key not in found  # each combination once
        found[key] = positions
    return found


@settings(max_examples=150, deadline=None)
@given(
    st.integers(min_value=1, max_value=4).flatmap(
        lambda width: st.lists(st.tuples(*[_CELLS] * width), min_size=1, max_size=40)
    )
)
def test_grouping_on_numbered_keys_is_grouping_on_the_text(
    rows: list[tuple[str | None, ...]],
) -> None:
    # One key: fixed radices; two without nulls: fixed; otherwise radices from the numbers.
    keys = [f"k{i}" for i in range(len(rows[0]))]
    frame = pl.DataFrame(rows, schema=dict.fromkeys(keys, pl.String), orient="row")
    assert _grouped(frame, keys) == _plain_groups(rows)


def test_grouping_falls_back_to_the_text_when_the_numbers_do_not_fit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class TooMany:
        @staticmethod
        def prod(values: Any) -> int:
            return 2**64 + 1

    monkeypatch.setattr(scans, "math", TooMany)
    rows = [("a", "1", None), ("b", "1", "x"), ("a", "1", None), (None, "2", "x"), ("b", "1", "x")]
    keys = ["k0", "k1", "k2"]
    frame = pl.DataFrame(rows, schema=dict.fromkeys(keys, pl.String), orient="row")
    assert _grouped(frame, keys) == _plain_groups(rows)


def test_grouping_on_the_text_without_polars_categories(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(pl, "Categories")
    rows = [("a", "1"), ("b", None), ("a", "1"), (None, None), ("b", None)]
    keys = ["k0", "k1"]
    frame = pl.DataFrame(rows, schema=dict.fromkeys(keys, pl.String), orient="row")
    assert _grouped(frame, keys) == _plain_groups(rows)


def test_grouping_keeps_chunked_frames_apart() -> None:
    # polars read_csv hands back one chunk per reader thread.
    first = pl.DataFrame({"k0": ["a", "b"], "k1": ["1", "2"]})
    second = pl.DataFrame({"k0": ["b", "a", None], "k1": ["2", "1", "1"]})
    frame = pl.concat([first, second], rechunk=False)
    assert frame["k0"].n_chunks() == 2
    rows = list(frame.iter_rows())
    assert _grouped(frame, ["k0", "k1"]) == _plain_groups(rows)


_GUARD_CELLS = st.one_of(
    st.none(),
    st.text(alphabet=["'", "=", "+", "-", "@", "\t", "\r", " ", "a", "(", "&", "!", "\x01"]),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_GUARD_CELLS, _GUARD_CELLS), min_size=1, max_size=12))
def test_formula_guard_is_taken_back_exactly_where_plain_python_would(
    rows: list[tuple[str | None, str | None]],
) -> None:
    frame = pl.DataFrame(rows, schema={"a": pl.String, "b": pl.String}, orient="row")
    expected = [
        tuple(None if cell is None else re.sub(_GUARDED, r"\1", cell, count=1) for cell in row)
        for row in rows
    ]
    assert list(_undo_formula_guard(frame).iter_rows()) == expected


def test_an_error_in_the_order_checks_reaches_the_caller(tmp_path: Any) -> None:
    path = tmp_path / "sheet.csv"
    path.write_text(
        "Reference,Email,Product,Amount,Currency\nR1,a@example.com,AMAZON_UK_STD,50,GBP\n",
        encoding="utf-8",
    )

    def broken(orders: pl.DataFrame) -> None:
        raise RuntimeError("order checks failed")

    with pytest.raises(RuntimeError, match="order checks failed"):
        scans.scan_rows(read_sheet(path), broken)


def test_the_order_checks_see_every_distinct_order(tmp_path: Any) -> None:
    path = tmp_path / "sheet.csv"
    path.write_text(
        "Reference,Email,Product,Amount,Currency,Country\n"
        "R1,a@example.com,TESCO_UK,50,GBP,GB\n"
        "R2,b@example.com,TESCO_UK, 50,GBP,GB\n"
        "R3,c@example.com,TESCO_UK,50,GBP,GB\n"
        "R4,d@example.com,MANDS_UK,50,GBP,GB\n",
        encoding="utf-8",
    )
    seen: list[pl.DataFrame] = []
    after, rows, _facts = scans.scan_rows(read_sheet(path), lambda orders: seen.append(orders))
    assert after is None
    (orders,) = seen
    counted = {
        (row["raw_product_code"], row["raw_amount"]): row[scans.ORDER_ROWS]
        for row in orders.iter_rows(named=True)
    }
    assert counted == {("TESCO_UK", "50"): 2, ("TESCO_UK", " 50"): 1, ("MANDS_UK", "50"): 1}
    order_of = dict(zip(orders[scans.ORDER_ID], orders["raw_product_code"], strict=True))
    assert [order_of[i] for i in rows.order_of_row] == [
        "TESCO_UK",
        "TESCO_UK",
        "TESCO_UK",
        "MANDS_UK",
    ]
