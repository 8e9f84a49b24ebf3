"""Strict decoding of CSV text: one encoding per file, binary and non-regular files refused."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from batcher.core.errors import InputFileError
from batcher.intake.read import read_sheet

HEADER = "Reference,Email,Name,Product code,Amount,Currency,Country\n"


def row(number: int, name: str = "Person") -> str:
    return f"R-{number},p{number}@example.com,{name},AMAZON_UK_STD,25,GBP,GB\n"


def ascii_rows(count: int) -> str:
    """Enough plain rows to push what follows past the 64 KiB sniffed head."""
    return "".join(row(n) for n in range(1, count + 1))


def refusal(path: Path) -> InputFileError:
    with pytest.raises(InputFileError) as caught:
        read_sheet(path)
    return caught.value


def test_utf8_file_with_one_cp1252_row_past_the_head_is_refused_naming_line_and_offset(
    tmp_path: Path,
) -> None:
    text = (HEADER + row(0, "Zoë Ångström") + ascii_rows(1999)).encode()
    path = tmp_path / "mixed.csv"
    path.write_bytes(text + row(5000, "Renée").encode("cp1252"))
    error = refusal(path)
    assert "mixed.csv: line 2002" in str(error)
    assert f"byte offset {len(text) + len('R-5000,p5000@example.com,Ren')}" in str(error)
    assert "CSV UTF-8" in (error.hint or "")


def test_ascii_file_with_cp1252_past_the_head_is_read_as_cp1252(tmp_path: Path) -> None:
    path = tmp_path / "windows.csv"
    path.write_bytes((HEADER + ascii_rows(1999)).encode() + row(5000, "Renée").encode("cp1252"))
    sheet = read_sheet(path)
    assert sheet.source.encoding == "cp1252"
    assert sheet.frame["recipient_name"][-1] == "Renée"


def test_cp1252_file_with_a_utf8_row_later_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mixed_late.csv"
    start = (HEADER + row(1, "Renée")).encode("cp1252")
    path.write_bytes(start + row(2, "Zoë").encode())
    error = refusal(path)
    assert "line 3" in str(error) and "is UTF-8 but earlier lines are not" in str(error)


@pytest.mark.parametrize("codec, bom", [("utf-32-le", b"\xff\xfe\x00\x00"), ("utf-32-be", None)])
def test_utf32_is_decoded_as_utf32(tmp_path: Path, codec: str, bom: bytes | None) -> None:
    path = tmp_path / "wide.csv"
    body = (HEADER + row(1, "Zoë Ångström")).encode(codec)
    path.write_bytes((bom or b"") + body)
    sheet = read_sheet(path)
    assert sheet.frame["recipient_name"].to_list() == ["Zoë Ångström"]
    assert sheet.source.encoding is not None and sheet.source.encoding.startswith("utf-32")


def test_gzip_named_csv_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "recipients.csv"
    path.write_bytes(gzip.compress((HEADER + row(1)).encode()))
    error = refusal(path)
    assert str(error).startswith("recipients.csv is gzip-compressed, not a CSV text file")


def test_binary_with_nul_bytes_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "blob.csv"
    path.write_bytes(b"Reference,Email\x00\x01\x02" + bytes(range(3, 200)))
    assert "not a text file" in str(refusal(path))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "pipe.csv"
    os.mkfifo(path)
    assert "not a regular file" in str(refusal(path))


@pytest.mark.parametrize(
    "bad_line, expected",
    [
        ('R-2,p2@example.com,Ana "Bo,AMAZON_UK_STD,25,GBP,GB\n', "double quote in the middle"),
        ('R-2,p2@example.com,"Ana" Bo,AMAZON_UK_STD,25,GBP,GB\n', "text after the closing"),
        ('R-2,p2@example.com,"Ana Bo,AMAZON_UK_STD,25,GBP,GB\n', "never closed"),
    ],
)
def test_quote_mistakes_name_line_and_column(tmp_path: Path, bad_line: str, expected: str) -> None:
    path = tmp_path / "quotes.csv"
    path.write_text(HEADER + row(1) + bad_line + row(3), encoding="utf-8")
    error = refusal(path)
    assert str(error).startswith("quotes.csv: line 3, column 'Name': ")
    assert expected in str(error)
    assert "polars" not in str(error).lower() and "dtype" not in str(error)


def test_cp1252_symbols_after_capitals_are_not_taken_for_utf8(tmp_path: Path) -> None:
    """'É’' is C9 92 in cp1252, which is also a UTF-8 pair; it is not a mixed file."""
    path = tmp_path / "windows.csv"
    path.write_bytes((HEADER + row(1, "JOSÉ’S café £5")).encode("cp1252"))
    sheet = read_sheet(path)
    assert sheet.source.encoding == "cp1252"
    assert sheet.frame["recipient_name"].to_list() == ["JOSÉ’S café £5"]
