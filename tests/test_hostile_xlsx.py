"""Hostile workbooks: memory bombs are refused before calamine sees them, within a memory bound."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zipfile
from decimal import Decimal
from pathlib import Path

import openpyxl
import pytest

from batcher.core.errors import InputFileError
from batcher.intake.read import IntakeLimits, read_sheet

HEADER = ["Reference", "Email", "Name", "Product code", "Amount", "Currency", "Country"]
ROW = ["R-1", "a@example.com", "Ana", "AMAZON_UK_STD", 25, "GBP", "GB"]
# The child process imports polars and fastexcel (~150 MB); a bomb that got as
# far as calamine would need gigabytes.
PEAK_RSS_BOUND_MB = 300


def workbook(build: object = None) -> bytes:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(HEADER)
    sheet.append(ROW)
    if callable(build):
        build(sheet)
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def far_cell_bomb(path: Path) -> None:
    """A few KB: the recipients plus one cell at XFD1048576, the last cell Excel has."""

    def build(sheet: object) -> None:
        sheet["XFD1048576"] = "x"  # type: ignore[index]

    path.write_bytes(workbook(build))
    assert path.stat().st_size < 10_000


def shared_strings_bomb(path: Path, inflated_mb: int, *, lie: bool = False) -> None:
    """A valid workbook whose sharedStrings.xml inflates to `inflated_mb` MB of padding.

    With `lie`, the zip's directory claims the part is 1 KB, as a hostile file may.
    """
    source = zipfile.ZipFile(io.BytesIO(workbook()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            if item.filename != "xl/sharedStrings.xml":
                target.writestr(item.filename, source.read(item.filename))
        with target.open("xl/sharedStrings.xml", "w") as part:
            part.write(b'<?xml version="1.0"?><sst xmlns="x" count="1" uniqueCount="1"><si><t>')
            block = b"A" * (1 << 20)
            for _ in range(inflated_mb):
                part.write(block)
            part.write(b"</t></si></sst>")
    data = out.getvalue()
    if lie:
        data = _claim_size(data, "xl/sharedStrings.xml", 1024)
    path.write_bytes(data)


def _claim_size(data: bytes, name: str, size: int) -> bytes:
    """Rewrite a member's uncompressed size in both its local header and the directory."""
    buffer = bytearray(data)
    info = zipfile.ZipFile(io.BytesIO(data)).getinfo(name)
    struct.pack_into("<L", buffer, info.header_offset + 22, size)
    start = 0
    while (start := bytes(buffer).find(b"PK\x01\x02", start)) != -1:
        name_length = struct.unpack_from("<H", buffer, start + 28)[0]
        if bytes(buffer[start + 46 : start + 46 + name_length]) == name.encode():
            struct.pack_into("<L", buffer, start + 24, size)
        start += 4
    return bytes(buffer)


def read_in_child(path: Path) -> tuple[str, int]:
    """Read `path` in a fresh process; its output and its own peak resident memory in MB.

    The child reports its own peak, VmHWM from /proc/self/status: that high-water mark
    belongs to the child's own address space. The parent's RUSAGE_CHILDREN is the largest
    of every child it ever had, and even the child's RUSAGE_SELF keeps, across exec, the
    size of the forked copy of a large parent (a 360 MB pytest worker).
    """
    script = (
        "import sys\n"
        "from batcher.core.errors import InputFileError\n"
        "from batcher.intake.read import read_sheet\n"
        "try:\n"
        f"    read_sheet({str(path)!r})\n"
        "    print('READ')\n"
        "except InputFileError as exc:\n"
        "    print('REFUSED', exc)\n"
        "status = open('/proc/self/status').read().split('VmHWM:')[1]\n"
        "print('PEAK_KB', int(status.split()[0]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    output, _, peak = done.stdout.strip().rpartition("\nPEAK_KB ")
    return output.strip(), int(peak) // 1024


def test_far_cell_bomb_is_refused_naming_the_column_limit(tmp_path: Path) -> None:
    path = tmp_path / "far.xlsx"
    far_cell_bomb(path)
    with pytest.raises(InputFileError) as caught:
        read_sheet(path)
    message = str(caught.value)
    assert message.startswith("far.xlsx: [Sheet] ")
    assert "column 16,384" in message and "max_columns" in message
    assert "[intake] max_columns = ..." in (caught.value.hint or "")


def test_far_cell_bomb_stays_within_memory_bound(tmp_path: Path) -> None:
    path = tmp_path / "far.xlsx"
    far_cell_bomb(path)
    output, peak_mb = read_in_child(path)
    assert output.startswith("REFUSED far.xlsx")
    assert peak_mb < PEAK_RSS_BOUND_MB


def test_shared_strings_bomb_is_refused_by_ratio_within_memory_bound(tmp_path: Path) -> None:
    path = tmp_path / "strings.xlsx"
    shared_strings_bomb(path, 300)
    assert path.stat().st_size < 2_000_000
    output, peak_mb = read_in_child(path)
    assert output.startswith("REFUSED strings.xlsx: xl/sharedStrings.xml is compressed")
    assert "max_compression_ratio" in output
    assert peak_mb < PEAK_RSS_BOUND_MB


def test_shared_strings_that_lie_about_their_size_are_refused_within_memory_bound(
    tmp_path: Path,
) -> None:
    path = tmp_path / "liar.xlsx"
    shared_strings_bomb(path, 300, lie=True)
    output, peak_mb = read_in_child(path)
    assert output.startswith("REFUSED liar.xlsx is damaged")
    assert "larger than its zip entry says" in output
    assert peak_mb < PEAK_RSS_BOUND_MB


def test_total_size_limit_can_be_raised_or_lowered(tmp_path: Path) -> None:
    path = tmp_path / "plain.xlsx"
    path.write_bytes(workbook())
    assert read_sheet(path).row_count == 1
    with pytest.raises(InputFileError, match="max_uncompressed_bytes"):
        read_sheet(path, limits=IntakeLimits(max_uncompressed_bytes=1000))


def test_declared_dimension_over_the_row_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tall.xlsx"
    path.write_bytes(workbook())
    with pytest.raises(InputFileError, match=r"\[Sheet\] declares a range of 2 rows"):
        read_sheet(path, limits=IntakeLimits(max_cells=10))
    with pytest.raises(InputFileError, match="declares row 2"):
        read_sheet(path, limits=IntakeLimits(max_rows=1))


def test_cells_without_positions_are_still_bounded(tmp_path: Path) -> None:
    """A row of 500 cells with no `r` attribute is 500 columns wide, whatever it claims."""
    source = zipfile.ZipFile(io.BytesIO(workbook()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            content = source.read(item.filename)
            if item.filename == "xl/worksheets/sheet1.xml":
                cells = b'<c t="inlineStr"><is><t>x</t></is></c>' * 500
                content = content.replace(
                    b"</sheetData>", b'<row r="3">' + cells + b"</row></sheetData>"
                )
                content = content.replace(b'<dimension ref="A1:G2"/>', b"")
            target.writestr(item.filename, content)
    path = tmp_path / "wide.xlsx"
    path.write_bytes(out.getvalue())
    with pytest.raises(InputFileError, match="uses column 500"):
        read_sheet(path)


def hidden_and_formula_workbook(path: Path) -> None:
    """Row 5 hidden, column H hidden, E3 a formula with no cached value, E4 a #DIV/0! cell."""
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append([*HEADER, "Notes"])
    sheet.append(["R-1", "a@example.com", "Ana", "AMAZON_UK_STD", 25, "GBP", "GB", "n"])
    sheet.append(["R-2", "b@example.com", "Bo", "AMAZON_UK_STD", "=10*2", "GBP", "GB", "n"])
    sheet.append(["R-3", "c@example.com", "Cy", "AMAZON_UK_STD", 0, "GBP", "GB", "n"])
    sheet.append(["R-4", "d@example.com", "Di", "AMAZON_UK_STD", 30, "GBP", "GB", "n"])
    sheet.row_dimensions[5].hidden = True
    sheet.column_dimensions["H"].hidden = True
    buffer = io.BytesIO()
    book.save(buffer)
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            content = source.read(item.filename)
            if item.filename == "xl/worksheets/sheet1.xml":
                error_cell = b'<c r="E4" t="e"><f>1/0</f><v>#DIV/0!</v></c>'
                content = content.replace(b'<c r="E4" t="n"><v>0</v></c>', error_cell)
                assert error_cell in content
            target.writestr(item.filename, content)
    path.write_bytes(out.getvalue())


def test_hidden_rows_and_columns_are_read_with_warnings(tmp_path: Path) -> None:
    path = tmp_path / "hidden.xlsx"
    hidden_and_formula_workbook(path)
    sheet = read_sheet(path)
    assert sheet.frame["source_row"].to_list() == [2, 3, 4, 5]
    assert "Notes" in sheet.passthrough
    warnings = {(w.code, w.source_row, w.column) for w in sheet.warnings}
    assert ("hidden_row", 5, "(whole row)") in warnings
    assert ("hidden_column", 1, "Notes") in warnings


def test_skip_hidden_leaves_hidden_rows_and_columns_out(tmp_path: Path) -> None:
    path = tmp_path / "hidden.xlsx"
    hidden_and_formula_workbook(path)
    sheet = read_sheet(path, skip_hidden=True)
    assert sheet.frame["source_row"].to_list() == [2, 3, 4]
    assert "Notes" not in sheet.frame.columns
    assert [w.code for w in sheet.warnings] == ["hidden_rows_skipped"]


def test_formula_without_value_and_error_cells_name_the_formula(tmp_path: Path) -> None:
    from batcher.core.models import Balance, Product
    from batcher.intake.validate import validate_rows

    path = tmp_path / "formulas.xlsx"
    hidden_and_formula_workbook(path)
    product = Product(
        product_code="AMAZON_UK_STD", merchant="Amazon UK", currency="GBP", countries=("GB",)
    )
    wallet = Balance(currency="GBP", balance=Decimal(1000), available=Decimal(1000))
    result = validate_rows(read_sheet(path), [product], [wallet])
    assert result.errors.select("source_row", "column", "code", "message").rows() == [
        (
            3,
            "Amount",
            "formula_not_calculated",
            "E3 holds the formula =10*2 but no calculated value",
        ),
        (4, "Amount", "formula_error", "E4 shows the error #DIV/0! (from =1/0), not a value"),
    ]
