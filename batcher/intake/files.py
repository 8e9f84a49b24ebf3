"""Opening the file: extensions, magic bytes, and the errors for files that are not sheets."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Literal

from batcher.core.errors import InputFileError

SNIFF_BYTES = 64 * 1024

CSV_EXTENSIONS = frozenset({".csv", ".tsv", ".txt"})
XLSX_EXTENSIONS = frozenset({".xlsx", ".xlsm"})

_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ZIP_MAGIC = b"PK\x03\x04"


def _open_error(path: Path, exc: OSError) -> InputFileError:
    if isinstance(exc, FileNotFoundError):
        return InputFileError(f"{path}: no such file", hint="check the path and the file name")
    if isinstance(exc, IsADirectoryError):
        return InputFileError(
            f"{path} is a folder, not a sheet", hint="pass the .csv or .xlsx file inside it"
        )
    return InputFileError(
        f"{path}: cannot read the file ({exc.strerror})",
        hint="check that the file exists and that you may read it",
    )


def read_head(path: Path) -> bytes:
    """The first bytes of the file, for sniffing; refuses a missing, empty or non-regular file."""
    _refuse_non_regular(path)
    try:
        with path.open("rb") as handle:
            head = handle.read(SNIFF_BYTES)
            more = bool(handle.read(1))
    except OSError as exc:
        raise _open_error(path, exc) from None
    if not more and not head.strip(b" \t\r\n\x00\xef\xbb\xbf\xff\xfe"):
        raise InputFileError(
            f"{path.name} is empty",
            hint="export the sheet again; it needs a header row and at least one data row",
        )
    return head


def _refuse_non_regular(path: Path) -> None:
    # Opening a FIFO blocks until a writer appears, and a device may never end:
    # look before opening.
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise _open_error(path, exc) from None
    if stat.S_ISDIR(mode):
        raise _open_error(path, IsADirectoryError())
    if not stat.S_ISREG(mode):
        raise InputFileError(
            f"{path} is not a regular file (a pipe, socket or device)",
            hint="save the sheet to a file first and pass that file's path",
        )


def read_all(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _open_error(path, exc) from None


def content_kind(data: bytes) -> Literal["zip", "ole", "text"]:
    if data.startswith(_ZIP_MAGIC):
        return "zip"
    if data.startswith(_OLE_MAGIC):
        return "ole"
    return "text"


def ole_error(path: Path) -> InputFileError:
    # Encrypted .xlsx files and legacy .xls workbooks are both OLE compound files.
    return InputFileError(
        f"{path.name} is a password-protected or legacy .xls workbook, which batcher cannot read",
        hint="open it in Excel, remove the password (File > Info > Protect Workbook) "
        "and save it as .xlsx (Excel Workbook)",
    )


def raise_not_a_workbook(path: Path, kind: str) -> None:
    if kind == "ole":
        raise ole_error(path)
    raise InputFileError(
        f"{path.name} is not an Excel workbook: it looks like a text or CSV file with an "
        f"{path.suffix} name",
        hint=f"rename it to {path.stem}.csv, or open it in Excel and save it as .xlsx",
    )
