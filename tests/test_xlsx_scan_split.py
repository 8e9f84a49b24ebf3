"""The worksheet scan in two passes (the limits first, then what calamine does not tell,
while calamine parses) finds what the one pass found, and calamine starts before the
second pass."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import pytest
from openpyxl import Workbook

from batcher.intake import xlsx
from batcher.intake.xlsx_limits import IntakeLimits
from batcher.intake.xlsx_scan import WorksheetScan, _may_hold, scan_details, scan_worksheet

#: every kind of detail the scan collects, and wide cells for its extent
SHEET = (
    b'<x:worksheet xmlns:x="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
    b'<x:dimension ref="A1:AB6"/><x:cols><x:col min="2" max="3" hidden="1"/></x:cols>'
    b"<x:sheetData>"
    b'<x:row r="1"><x:c r="A1" t="inlineStr"><x:is><x:t>Name</x:t></x:is></x:c>'
    b'<x:c r="B1"><x:v>1E-10</x:v></x:c></x:row>'
    b'<x:row r="2" hidden="1"><x:c r="A2"><x:f>SUM(B1:B9)</x:f><x:v/></x:c>'
    b'<x:c r="AB2" t="e"><x:f>1/0</x:f><x:v>#DIV/0!</x:v></x:c></x:row>'
    b'<x:row r="3"><x:c r="C3"><x:v>25.0000000001</x:v></x:c><x:c r="D3"><x:v>7</x:v></x:c>'
    b'<x:c r="E3" t="e"><x:v>#N/A</x:v></x:c></x:row>'
    b'<x:row r="6"><x:c r="A6"><x:f t="shared" si="0"/></x:c></x:row>'
    b"</x:sheetData>"
    b'<x:mergeCells count="2"><x:mergeCell ref="A4:B5"/><x:mergeCell ref="C4"/></x:mergeCells>'
    b"</x:worksheet>"
)


def _blocks(size: int) -> list[bytes]:
    return [SHEET[i : i + size] for i in range(0, len(SHEET), size)]


@pytest.mark.parametrize("size", [7, 50, 333, len(SHEET)])
def test_two_passes_find_what_one_pass_finds(size: int) -> None:
    whole = scan_worksheet(Path("s.xlsx"), "S", _blocks(size), IntakeLimits())
    first = scan_worksheet(Path("s.xlsx"), "S", _blocks(size), IntakeLimits(), details=False)
    assert (first.max_row, first.max_column, first.cells) == (
        whole.max_row,
        whole.max_column,
        whole.cells,
    )
    assert first.bad_cells == {} and first.hidden_rows == set() and first.merged == []
    scan_details(_blocks(size), first)
    assert first == whole
    if size == len(SHEET):  # one block: nothing is cut, every detail is there
        assert whole.hidden_rows == {2} and whole.hidden_columns == {1, 2}
        assert set(whole.bad_cells) == {(2, 0), (2, 27), (3, 4), (6, 0)}
        assert whole.exact_numbers == {(1, 1): "1E-10", (3, 2): "25.0000000001"}
        assert whole.merged == [(4, 0, 5, 1), (4, 2, 4, 2)]
        assert (whole.max_row, whole.max_column) == (6, 28)


def test_the_first_pass_alone_still_refuses_a_sheet_over_the_limits() -> None:
    with pytest.raises(Exception, match="max_cells"):
        scan_worksheet(Path("s.xlsx"), "S", _blocks(50), IntakeLimits(max_cells=5), details=False)


def _workbook() -> bytes:
    wb = Workbook()
    ws = wb.active
    ws.append(["Name", "Amount"])
    for i in range(50):
        ws.append([f"person {i}", i + 0.5])
    ws.row_dimensions[3].hidden = True
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


def test_calamine_parses_while_the_details_are_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data = _workbook()
    started = threading.Event()
    seen: dict[str, Any] = {}
    real_load, real_details = xlsx._load_view, xlsx.scan_details

    def load_view(*args: Any) -> Any:
        started.set()
        return real_load(*args)

    def details(blocks: Any, scan: WorksheetScan) -> None:
        seen["calamine_started"] = started.wait(timeout=30)
        seen["limits_known"] = scan.max_row
        real_details(blocks, scan)

    monkeypatch.setattr(xlsx, "_load_view", load_view)
    monkeypatch.setattr(xlsx, "scan_details", details)
    grid, _ = xlsx.read_xlsx_grid(tmp_path / "w.xlsx", data, None, {}, IntakeLimits())
    assert seen == {"calamine_started": True, "limits_known": 51}
    assert grid.xlsx is not None and grid.xlsx.hidden_rows == frozenset({3})
    assert grid.data.height == 50


def test_a_block_that_is_not_utf8_is_still_searched_for_every_detail() -> None:
    """The details are looked for with polars' regex, which needs UTF-8: any other block
    is searched byte by byte as before."""
    latin1 = SHEET.replace(b"<x:t>Name</x:t>", b"<x:t>N\xe9me</x:t>")
    assert _may_hold(latin1, 'hidden="') and _may_hold(b"<a>\xff</a>", "zzz")
    assert not _may_hold(b'<row r="1"><c r="A1"><v>1</v></c></row>', 'hidden="|<f|t="e"')
    assert _may_hold(b'<row r="1" hidden="1">', 'hidden="|<f|t="e"')
    whole = scan_worksheet(Path("s.xlsx"), "S", [latin1], IntakeLimits())
    assert whole.hidden_rows == {2} and len(whole.bad_cells) == 4 and len(whole.merged) == 2
