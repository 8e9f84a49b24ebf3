"""Limits an XLSX must meet before calamine sees it, and the bounded inflating that checks them.

calamine allocates a dense grid for the used range of a sheet and inflates
shared strings whole. A 5 KB workbook with one cell at XFD1048576 makes it
ask for 512 GiB and abort the process; a 1.5 MB file whose shared strings
inflate to 1.5 GB costs that much memory. So the zip is checked first: its
members' declared sizes and compression ratios, then the parts calamine
reads are inflated here with a byte budget (declared sizes can lie), and the
worksheet's cells are counted and located as they stream past (see
`xlsx_scan`). Every refusal names the file, the limit and how to raise it.
"""

from __future__ import annotations

import dataclasses
import struct
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from batcher.core.errors import InputFileError, UsageError

MAX_ROWS = 1_048_576  # Excel's own row limit
MAX_COLUMNS = 200  # a recipients sheet has a dozen or two; Excel allows 16,384
# calamine keeps about 32 bytes per cell of the used range, and batcher may load
# the sheet twice (as text, and as numbers when the scan could not place every
# number calamine's text rounds): 20 million cells is then about 1.3 GB.
MAX_CELLS = 20_000_000
MAX_UNCOMPRESSED_BYTES = 500 * 1024 * 1024
MAX_COMPRESSION_RATIO = 200  # XML sheets compress 5-30:1; bombs 1,000:1 and more
MAX_MEMBERS = 10_000
_RATIO_FLOOR = 1024 * 1024  # smaller members may compress as well as they like
_CHUNK = 1 << 20
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # a zip local file header, 30 bytes


@dataclass(frozen=True)
class IntakeLimits:
    """What an XLSX may hold before batcher refuses to read it; pass to `read_sheet(limits=...)`."""

    max_rows: int = MAX_ROWS  # highest row number, declared or used
    max_columns: int = MAX_COLUMNS  # highest column number, declared or used
    max_cells: int = MAX_CELLS  # cells in the used range (rows x columns), and cells present
    max_uncompressed_bytes: int = MAX_UNCOMPRESSED_BYTES  # all zip members inflated
    max_compression_ratio: int = MAX_COMPRESSION_RATIO  # per member over 1 MiB
    max_members: int = MAX_MEMBERS  # files inside the zip


def intake_limits(settings: Mapping[str, object]) -> IntakeLimits:
    """IntakeLimits from batcher.toml's `[intake]` table (any field of IntakeLimits)."""
    known = {f.name for f in dataclasses.fields(IntakeLimits)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise UsageError(
            f"batcher.toml [intake]: unknown setting {unknown[0]!r}",
            hint=f"known settings: {', '.join(sorted(known))}",
        )
    values: dict[str, int] = {}
    for name, value in settings.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"batcher.toml [intake] {name} must be a whole number above 0")
        values[name] = value
    return IntakeLimits(**values)


def limit_error(path: Path, what: str, limit_name: str, limit: int) -> InputFileError:
    """A refusal that names the file, what exceeded which limit, and how to raise it."""
    return InputFileError(
        f"{path.name}: {what}, over the limit of {limit:,} ({limit_name})",
        hint=f"if the workbook is genuine, raise it in batcher.toml ([intake] {limit_name} = ...); "
        "otherwise open it in Excel, delete the unused rows and columns "
        "(Ctrl+End shows where the used range ends) and save it again",
    )


def check_archive(path: Path, archive: zipfile.ZipFile, limits: IntakeLimits) -> None:
    """Refuse a zip whose directory already says it is too big to inflate."""
    members = archive.infolist()
    if len(members) > limits.max_members:
        raise limit_error(
            path, f"the workbook holds {len(members):,} files", "max_members", limits.max_members
        )
    total = sum(m.file_size for m in members)
    if total > limits.max_uncompressed_bytes:
        raise limit_error(
            path,
            f"its parts inflate to {total:,} bytes",
            "max_uncompressed_bytes",
            limits.max_uncompressed_bytes,
        )
    for member in members:
        if member.file_size > _RATIO_FLOOR:
            ratio = member.file_size // max(member.compress_size, 1)
            if ratio > limits.max_compression_ratio:
                raise limit_error(
                    path,
                    f"{member.filename} is compressed {ratio:,}:1",
                    "max_compression_ratio",
                    limits.max_compression_ratio,
                )


def inflate(
    path: Path, data: bytes, member: zipfile.ZipInfo, budget: int, limits: IntakeLimits
) -> Iterator[bytes]:
    """The member's bytes, inflated in chunks, never more than `budget` nor than declared.

    Reads the compressed stream itself rather than trusting the directory:
    a member that inflates past its declared size is damaged or hostile.
    """
    start = _data_offset(path, data, member)
    compressed = memoryview(data)[start : start + member.compress_size]
    allowed = min(budget, member.file_size)
    produced = 0
    if member.compress_type == zipfile.ZIP_STORED:
        chunks: Iterator[bytes] = (
            bytes(compressed[i : i + _CHUNK]) for i in range(0, len(compressed), _CHUNK)
        )
    elif member.compress_type == zipfile.ZIP_DEFLATED:
        chunks = _inflated(path, compressed)
    else:
        raise InputFileError(
            f"{path.name}: {member.filename} uses a compression Excel does not write "
            f"(method {member.compress_type})",
            hint="open it in Excel and save it again as .xlsx",
        )
    for chunk in chunks:
        produced += len(chunk)
        if produced > allowed:
            if produced > member.file_size:
                raise _damaged(path, f"{member.filename} is larger than its zip entry says")
            raise limit_error(
                path,
                f"its parts inflate to more than {budget:,} bytes",
                "max_uncompressed_bytes",
                limits.max_uncompressed_bytes,
            )
        yield chunk


def _inflated(path: Path, compressed: memoryview) -> Iterator[bytes]:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        for offset in range(0, len(compressed), _CHUNK):
            pending = bytes(compressed[offset : offset + _CHUNK])
            while pending:
                # max_length keeps each step small even for a 1,000:1 stream
                yield inflater.decompress(pending, _CHUNK)
                pending = inflater.unconsumed_tail
                if inflater.eof:
                    return
        yield inflater.flush()
    except zlib.error:
        raise _damaged(path, "a part of the workbook does not inflate") from None


def _data_offset(path: Path, data: bytes, member: zipfile.ZipInfo) -> int:
    header = data[member.header_offset : member.header_offset + _LOCAL_HEADER.size]
    if len(header) < _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
        raise _damaged(path, f"{member.filename} has no local header")
    if member.flag_bits & 0x1:
        raise InputFileError(
            f"{path.name} is encrypted", hint="remove the password in Excel and save it again"
        )
    fields = _LOCAL_HEADER.unpack(header)
    name_length, extra_length = fields[-2], fields[-1]
    return member.header_offset + _LOCAL_HEADER.size + name_length + extra_length


def _damaged(path: Path, why: str) -> InputFileError:
    return InputFileError(
        f"{path.name} is damaged ({why})", hint="open it in Excel and save it again as .xlsx"
    )
