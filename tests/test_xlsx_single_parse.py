"""The one-parse XLSX read renders every cell exactly as the two-parse read did.

The reader used to parse each worksheet twice (calamine's string view and its
float view, because the string view rounds numbers to 9 decimals). It now
builds the float view from the string view plus the stored text of the few
numbers the string view may round, kept by the worksheet scan. These tests
compare the two over generated workbooks.
"""

from __future__ import annotations

import io
import re
import zipfile
from datetime import date, datetime
from pathlib import Path

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st
from openpyxl import Workbook

from batcher.intake.xlsx import (
    _excel_cells,
    _load_view,
    _numbers_from_text,
    _scan_parts,
    _workbook_sheets,
)
from batcher.intake.xlsx_limits import IntakeLimits
from tests.examples import examples

# Cells that openpyxl cannot write as they are wanted are written as a placeholder
# formula and rewritten in the XML: ("raw", text) a numeric cell storing exactly
# `text`, ("cached", t, text) a formula with its cached value, ("shared", text) a
# shared string.
_PLACEHOLDER = re.compile(rb'<c r="([A-Z]+[0-9]+)"([^>]*)><f>P\(([0-9]+)\)</f><v ?/></c>')

number_text = st.from_regex(r"-?[0-9]{1,20}(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,2})?", fullmatch=True)
number_looking_text = st.one_of(
    number_text,
    st.sampled_from(["-0", "0", "007", "-0.0", "1.50", "0.1", "25", "12345678901234567890"]),
)
floats = st.floats(allow_nan=False, allow_infinity=False)
cell = st.one_of(
    floats,
    st.floats(min_value=-1e-6, max_value=1e-6, allow_nan=False),  # tiny: 9 decimals lose them
    st.integers(-(10**17), 10**17).map(float),  # integers stored as floats
    st.integers(-(10**15), 10**15),
    number_text.map(lambda text: ("raw", text)),  # a number exactly as Excel may store it
    st.sampled_from(["1E-10", "25.0000000001", "-0", "0.30000000000000004", "-1E+20"]).map(
        lambda text: ("raw", text)
    ),
    number_looking_text,  # typed as text (an inline string)
    number_looking_text.map(lambda text: ("shared", text)),
    st.text(st.characters(codec="ascii", categories=["L", "N"]), max_size=5),
    st.booleans(),
    st.datetimes(min_value=datetime(1901, 1, 1), max_value=datetime(2200, 1, 1)),
    st.dates(min_value=date(1901, 1, 1), max_value=date(2200, 1, 1)),
    st.tuples(st.just("cached"), st.just("n"), number_text),  # formula, numeric result
    st.tuples(st.just("cached"), st.just("str"), number_looking_text),  # text result
    st.tuples(st.just("cached"), st.just("b"), st.sampled_from(["0", "1"])),
    st.none(),
)


def _workbook(rows: list[list[object]]) -> bytes:
    """An XLSX of `rows`, with the placeholders rewritten (see `_PLACEHOLDER`)."""
    wb = Workbook()
    sheet = wb.active
    placeholders: list[tuple[str, ...]] = []
    for row in rows:
        written: list[object] = []
        for value in row:
            if isinstance(value, tuple):
                written.append(f"=P({len(placeholders)})")
                placeholders.append(value)
            else:
                written.append(value)
        sheet.append(written)
    buffer = io.BytesIO()
    wb.save(buffer)
    shared: list[str] = []

    def rewrite(match: re.Match[bytes]) -> bytes:
        ref, attributes = match[1].decode(), match[2].decode()
        kind, *rest = placeholders[int(match[3])]
        if kind == "raw":
            return f'<c r="{ref}"{attributes}><v>{rest[0]}</v></c>'.encode()
        if kind == "shared":
            shared.append(rest[0])
            return f'<c r="{ref}" t="s"><v>{len(shared) - 1}</v></c>'.encode()
        t, value = rest
        return f'<c r="{ref}" t="{t}"><f>SUM(1)</f><v>{value}</v></c>'.encode()

    source = zipfile.ZipFile(buffer)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            content = source.read(info)
            if info.filename == "xl/worksheets/sheet1.xml":
                content = _PLACEHOLDER.sub(rewrite, content)
            elif info.filename == "xl/_rels/workbook.xml.rels":
                content = content.replace(
                    b"</Relationships>",
                    b'<Relationship Id="rIdShared" Type="http://schemas.openxmlformats.org/'
                    b'officeDocument/2006/relationships/sharedStrings" '
                    b'Target="sharedStrings.xml"/></Relationships>',
                )
            elif info.filename == "[Content_Types].xml":
                content = content.replace(
                    b"</Types>",
                    b'<Override PartName="/xl/sharedStrings.xml" ContentType="application/'
                    b'vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"/></Types>',
                )
            target.writestr(info.filename, content)
        items = "".join(f"<si><t>{text}</t></si>" for text in shared)
        target.writestr(
            "xl/sharedStrings.xml",
            '<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
            f'count="{len(shared)}" uniqueCount="{len(shared)}">{items}</sst>',
        )
    return out.getvalue()


def _both_paths(data: bytes) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The cells as the one-parse read renders them, and as the two-parse read did."""
    archive = zipfile.ZipFile(io.BytesIO(data))
    entry = _workbook_sheets(archive)[0]
    scan = _scan_parts(Path("generated.xlsx"), data, archive, entry, IntakeLimits())
    assert not scan.exact_numbers_incomplete
    text_view, text = _load_view(data, entry.name, "string")
    positions = [c.absolute_index for c in text_view.available_columns()]
    numbers = _numbers_from_text(text, positions, scan.exact_numbers)
    assert numbers is not None, "the one-parse path fell back to the float view"
    float_view = _load_view(data, entry.name, "float")[1]
    return _excel_cells(text, numbers), _excel_cells(text, float_view)


@settings(max_examples=examples(150))  # see tests/examples.py
@given(st.lists(st.lists(cell, min_size=1, max_size=6), min_size=1, max_size=8))
def test_one_parse_renders_every_cell_as_two_parses(rows: list[list[object]]) -> None:
    one_parse, two_parses = _both_paths(_workbook(rows))
    assert one_parse.rows() == two_parses.rows()


def test_numbers_the_string_view_rounds_are_rendered_from_their_stored_text() -> None:
    rows: list[list[object]] = [
        [("raw", "1E-10"), ("raw", "25.0000000001"), ("raw", "0.30000000000000004")],
        [("raw", "-0"), "-0", ("cached", "n", "1.23456789012E-5")],
    ]
    one_parse, two_parses = _both_paths(_workbook(rows))
    assert one_parse.rows() == two_parses.rows()
    assert one_parse.rows() == [
        ("0.0000000001", "25.0000000001", "0.3"),
        ("0", "0", "0.0000123456789012"),
    ]


def test_a_kept_number_without_a_position_takes_the_two_parses() -> None:
    data = _workbook([[("raw", "1E-10"), 5]])
    archive = zipfile.ZipFile(io.BytesIO(data))
    sheet_xml = archive.read("xl/worksheets/sheet1.xml").replace(b'<c r="A1">', b"<c>")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for info in archive.infolist():
            content = archive.read(info)
            target.writestr(info.filename, sheet_xml if "worksheets" in info.filename else content)
    data = out.getvalue()
    archive = zipfile.ZipFile(io.BytesIO(data))
    entry = _workbook_sheets(archive)[0]
    scan = _scan_parts(Path("unplaced.xlsx"), data, archive, entry, IntakeLimits())
    assert scan.exact_numbers_incomplete
    text = _load_view(data, entry.name, "string")[1]
    numbers = _load_view(data, entry.name, "float")[1]  # the second parse
    assert _excel_cells(text, numbers).rows() == [("0.0000000001", "5")]


def test_a_kept_number_the_string_view_does_not_show_takes_the_float_view() -> None:
    text = pl.DataFrame({"a": ["5"]})
    # the scan says A1 holds 1e-10, calamine shows 5 there: the positions disagree
    assert _numbers_from_text(text, [0], {(1, 0): "1E-10"}) is None
    assert _numbers_from_text(text, [0], {(2, 0): "1E-10"}) is None  # beyond the frame
    assert _numbers_from_text(text, [0], {(1, 0): "1,5"}) is None  # not a stored number
