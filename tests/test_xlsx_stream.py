"""The streamed worksheet writer's shortcut for plain text is the general cell path."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batcher.reporting.xlsx_stream import (
    StreamedSheet,
    Styled,
    _Deflating,
    _RowWriter,
    prepare,
    register_style,
    save,
)

texts = st.one_of(
    st.text(max_size=12),
    st.text(alphabet="aZ09 =+-@&<>\"'\t\n\u00a0\u2003\x01é", max_size=12),
    # first characters that are not ASCII letters or digits: visible ones take the
    # shortcut (a masked code, a currency sign), invisible ones and triggers do not
    st.text(alphabet="•£é=＝－＠\u200b\ufeff\u3000\x7f -a1&", max_size=6),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9 .@-]{0,10}", fullmatch=True),
    # what Excel reads as an escaped character (_x0041_ is A) unless its _ is escaped
    st.from_regex(r"[a_]{0,2}_x[0-9A-Fa-fZ]{3,4}_?[a-z]{0,2}", fullmatch=True),
)
values = st.one_of(
    texts,
    st.none(),
    st.integers(-10, 10),
    st.decimals(allow_nan=False, allow_infinity=False, places=2, max_value=10**6, min_value=-1),
    st.booleans(),
    st.datetimes(timezones=st.just(UTC), min_value=datetime(2001, 1, 1)),
    st.builds(Styled, st.decimals(places=2, min_value=0, max_value=100), st.just(3)),
)


def general(writer: _RowWriter, number: int, row: list[object]) -> str:
    """Every cell through `cell`, as before the shortcut."""
    cells = [
        writer.cell(writer.letters[col] + str(number), value)
        for col, value in enumerate(row)
        if value is not None and value != ""
    ]
    return f'<row r="{number}">{"".join(cells)}</row>'


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.lists(values, max_size=6), min_size=1, max_size=4))
def test_rows_match_the_general_cell_path(rows: list[list[object]]) -> None:
    writer, reference = _RowWriter(6, date_style=7), _RowWriter(6, date_style=7)
    for number, row in enumerate(rows, start=2):
        assert writer.row(row) == general(reference, number, row)


def test_the_shortcut_leaves_formulas_spaces_and_markup_to_the_general_path() -> None:
    writer = _RowWriter(5, date_style=7)
    line = writer.row(["=1+1", "ab ", "a<b", "a\u00a0", Decimal("1.50")])
    assert "<t>'=1+1</t>" in line
    assert '<t xml:space="preserve">ab </t>' in line
    assert "<t>a&lt;b</t>" in line
    assert '<t xml:space="preserve">a&#160;</t>' in line  # beyond ASCII: a reference
    assert "<v>1.50</v>" in line


def test_a_recurring_money_cell_is_rendered_once_and_written_as_ever() -> None:
    """The workbook shares one `Styled` per amount (600,000 money cells at 100k rows):
    the writer renders its XML once. Equal amounts of another exponent, or a new cell
    made after one is dropped, are rendered on their own."""
    writer = _RowWriter(2, 1)
    shared = Styled(Decimal("1.50"), 3)
    rows = [writer.row([shared, Styled(Decimal(n) / 10, 3)]) for n in range(1, 200)]
    # the shared cell once (column A), each other cell once (column B)
    assert (len(writer._columns[0]), len(writer._columns[1])) == (1, 199)
    assert all(f'<c r="A{n + 2}" s="3"><v>1.50</v></c>' in r for n, r in enumerate(rows))
    assert '<c r="B2" s="3"><v>0.1</v></c>' in rows[0]
    assert "<v>1.5</v>" in writer.row([Styled(Decimal("1.5"), 3)])
    assert '<c r="A' in writer.row([Styled(Decimal("1.50"), 4)])
    assert 's="4"><v>1.50</v>' in writer.row([Styled(Decimal("1.50"), 4)])


@settings(max_examples=200, deadline=None)
@given(
    pool=st.lists(values, min_size=1, max_size=5),
    picks=st.lists(st.lists(st.integers(0, 4), max_size=6), min_size=2, max_size=8),
)
def test_recurring_cells_are_written_as_the_general_path_writes_them(
    pool: list[object], picks: list[list[int]]
) -> None:
    """Rows whose cells recur (a column's states, currencies, chunk keys, times and
    shared money cells do) are written as the general path writes each cell anew,
    formulas and markup included."""
    writer, reference = _RowWriter(6, date_style=7), _RowWriter(6, date_style=7)
    for number, row_picks in enumerate(picks, start=2):
        row = [pool[i % len(pool)] for i in row_picks]
        assert writer.row(row) == general(reference, number, row)


def test_equal_cells_of_another_exponent_sign_or_type_are_not_taken_for_each_other() -> None:
    """A column keeps each cell's XML by its value: a value equal to a kept one but
    written otherwise (`1.5` and `1.50`, `-0` and `0`, `1` and `True` and `1.0`, a
    money cell and its plain tuple) is written as the general path writes it."""
    writer = _RowWriter(1, date_style=7)
    values = [
        Styled(Decimal("1.50"), 3), Styled(Decimal("1.5"), 3), Styled(Decimal("0.00"), 3),
        Styled(Decimal("-0.00"), 3), Styled(1, 3), Styled(True, 3), 1, True,
        Decimal("1.0"), Decimal("1"), (Decimal("1.50"), 3), "1", "True", None, "", 0,
        Decimal("-0"), Styled(Decimal("1.50"), 4),
    ]  # fmt: skip
    expected = [
        's="3"><v>1.50</v>', 's="3"><v>1.5</v>', 's="3"><v>0.00</v>', 's="3"><v>-0.00</v>',
        's="3"><v>1</v>', 's="3"><v>True</v>', "><v>1</v>", 't="b"><v>1</v>', "><v>1.0</v>",
        "><v>1</v>", "<t>(Decimal('1.50'), 3)</t>", "<t>1</t>", "<t>True</t>",
        None, None, "><v>0</v>", "><v>-0</v>", 's="4"><v>1.50</v>',
    ]  # fmt: skip
    for _ in range(2):  # written anew, then from what the column kept
        for value, xml in zip(values, expected, strict=True):
            line = writer.row([value])
            if xml is None:
                assert "<c " not in line
            else:
                assert xml in line, (value, line)
    assert Styled(Decimal("1.5"), 3) != Styled(Decimal("1.50"), 3)
    assert Styled(Decimal("1.50"), 3) == Styled(Decimal("1.50"), 3)
    assert Styled(Decimal("1.50"), 3) != (Decimal("1.50"), 3)


def test_a_value_that_cannot_be_kept_is_written_as_text() -> None:
    writer, reference = _RowWriter(2, date_style=7), _RowWriter(2, date_style=7)
    row: list[object] = [["a", "list"], "x"]
    assert writer.row(row) == general(reference, 2, row)


@settings(max_examples=200, deadline=None)
@given(
    pool=st.lists(values, min_size=1, max_size=6),
    picks=st.lists(st.lists(st.integers(0, 5), max_size=6), min_size=1, max_size=12),
    blocks=st.lists(st.integers(1, 5), min_size=1, max_size=12),
)
def test_blocks_of_rows_are_written_as_the_general_path_writes_each_row(
    pool: list[object], picks: list[list[int]], blocks: list[int]
) -> None:
    """The sheets are written a block of rows at a time, a column at a time: columns
    all text, all whole numbers, or mixed, some rows shorter than others."""
    writer, reference = _RowWriter(6, date_style=7), _RowWriter(6, date_style=7)
    rows = [[pool[i % len(pool)] for i in row_picks] for row_picks in picks]
    expected = "".join(general(reference, n, row) for n, row in enumerate(rows, start=2))
    written, start = [], 0
    for size in blocks * len(rows):
        if start >= len(rows):
            break
        written.append(writer.rows(rows[start : start + size]))
        start += size
    written.append(writer.rows(rows[start:]))
    assert "".join(written) == expected
    assert writer.last_row == len(rows) + 1


@settings(max_examples=300, deadline=None)
@given(
    column=st.one_of(
        st.lists(st.one_of(texts, st.none()), min_size=1, max_size=8),
        st.lists(texts.filter(lambda t: t.strip() == t and t[:1] not in "=+-@"), max_size=8),
        st.lists(st.text(alphabet="ab &<>é•", min_size=1, max_size=5), max_size=8),
        st.lists(st.integers(-(10**20), 10**20), max_size=8),
        st.lists(st.datetimes(timezones=st.just(UTC), min_value=datetime(2001, 1, 1)), max_size=8),
        st.lists(st.one_of(st.none(), st.datetimes(min_value=datetime(2001, 1, 1))), max_size=8),
        st.lists(st.none(), max_size=4),
    )
)
def test_a_column_of_one_kind_is_written_as_the_general_path_writes_each_cell(
    column: list[object],
) -> None:
    """A column of text (and empty cells), of whole numbers or of dates is written as
    one: one formula, markup, control character or edge space among the text and each
    cell is still written as `cell` writes it."""
    writer, reference = _RowWriter(1, date_style=7), _RowWriter(1, date_style=7)
    rows = [[value] for value in column]
    expected = "".join(general(reference, n, row) for n, row in enumerate(rows, start=2))
    assert writer.rows(rows) == expected


def test_a_row_too_wide_is_refused_with_its_number() -> None:
    writer = _RowWriter(2, date_style=7)
    writer.row(["a"])
    with pytest.raises(IndexError, match="row 4 has 3 cells, the sheet 2"):
        writer.rows([["b"], ["c", "d", "e"]])


class _Member:
    """A zip member that records where and what it was given, failing on request."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.blocks: list[bytes] = []
        self.threads: set[str] = set()
        self.fail_at = fail_at

    def write(self, block: bytes) -> int:
        self.threads.add(threading.current_thread().name)
        if self.fail_at is not None and len(self.blocks) == self.fail_at:
            raise OSError("disk full")
        self.blocks.append(block)
        return len(block)


def test_blocks_are_deflated_on_a_thread_of_their_own_in_order() -> None:
    member = _Member()
    blocks = [f"<row>{n}</row>".encode() for n in range(50)]
    with _Deflating(member) as out:  # type: ignore[arg-type]
        for block in blocks:
            out.write(block)
    assert member.blocks == blocks
    assert member.threads == {"xlsx-deflate"}


def test_an_error_while_deflating_reaches_the_writer() -> None:
    member = _Member(fail_at=3)
    with pytest.raises(OSError, match="disk full"), _Deflating(member) as out:  # type: ignore[arg-type]
        for n in range(50):
            out.write(b"<row/>" * n)
    assert len(member.blocks) == 3


def test_the_writers_own_error_wins_and_the_thread_ends() -> None:
    member = _Member(fail_at=0)
    with pytest.raises(ValueError, match="bad row"), _Deflating(member) as out:  # type: ignore[arg-type]
        out.write(b"<row/>")
        raise ValueError("bad row")
    assert not any(t.name == "xlsx-deflate" for t in threading.enumerate())


def test_text_that_looks_escaped_reads_back_as_stored(tmp_path: Path) -> None:
    """Excel (and calamine, batcher's own reader) decodes `_xHHHH_` in a cell's text: a
    reference `A_x0041_` would read `AA`. Its `_` is written as `_x005F_`, so every
    such text reads back exactly as it was stored, by the shortcut and the general path."""
    import fastexcel
    from openpyxl import Workbook

    texts = ["_x001B_", "a_x0041_b", "x_x005F_y", "_x12", "_xZZZZ_", "A_x0041_ & <b>"]
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "S"
    prepare(sheet, ["one", "two"], len(texts))
    date_style = register_style(book, "yyyy-mm-dd")
    rows = [[text, Decimal(1)] if n % 2 else [text, text] for n, text in enumerate(texts)]
    path = tmp_path / "escaped.xlsx"
    save(path, book, [StreamedSheet(sheet, rows, len(rows), 2)], date_style)
    read = fastexcel.read_excel(path.read_bytes()).load_sheet("S").to_polars()
    assert read["one"].to_list() == texts
