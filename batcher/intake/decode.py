"""How a CSV's bytes are decoded: BOMs, UTF-32/UTF-16, cp1252 and old Mac line ends.

Decoding is strict. A file is read in one encoding from its first byte to its
last: a UTF-8 file with one row pasted from a cp1252 export is refused, naming
that row's line and byte offset, rather than re-read as cp1252 (which turns
every UTF-8 name into mojibake). A file that is binary (gzip, PDF, ...) is
refused before any parser sees it.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from pathlib import Path

from batcher.core.errors import InputFileError
from batcher.intake.files import SNIFF_BYTES, read_all
from batcher.intake.hashing import FileDigest


@dataclass(frozen=True)
class CsvInput:
    """What polars parses, and how: the file itself when it can, else re-encoded bytes."""

    source: Path | bytes
    encoding: str  # as detected, for people
    polars_encoding: str  # "utf8" or "windows-1252"
    delimiter: str = ","
    digest: FileDigest | None = None  # known already when the whole file had to be read


class NotUtf8(Exception):
    """polars met a byte that is not UTF-8 beyond the sniffed head of the file."""


# Formats people save or download under a .csv name by mistake; the magic
# bytes say what the file really is.
_BINARY_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip-compressed"),
    (b"BZh", "bzip2-compressed"),
    (b"\xfd7zXZ\x00", "xz-compressed"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"%PDF", "a PDF document"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"SQLite format 3\x00", "an SQLite database"),
)
# Checked before UTF-16: the UTF-32 LE BOM begins with the UTF-16 LE BOM.
_WIDE_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# UTF-8 as it most often appears in European names and prose: Latin letters
# with accents (é is C3 A9, ł C5 82, ą C4 85) and typographic quotes and dashes
# (’ is E2 80 99). In cp1252 those bytes read 'Ã©', 'Å‚', 'â€™', which real
# cp1252 text almost never holds, so finding one means UTF-8 is mixed in.
_UTF8_SEQUENCE = re.compile(rb"[\xc3-\xc5][\x80-\xbf]|\xe2\x80[\x90-\xbf]")


def choose_csv_input(path: Path, head: bytes) -> CsvInput:
    """Decide how polars should read the file, refusing what is not one-encoding text.

    UTF-8 (with or without BOM; polars drops the BOM) and cp1252 are parsed
    from the file itself. UTF-32 and UTF-16 (Excel's "Unicode text") and
    bare-CR line ends are rewritten as UTF-8 bytes in memory first.
    """
    _refuse_binary(path, head)
    wide = _wide_codec(head)
    if wide or _has_bare_cr_newlines(head):
        data = read_all(path)
        payload = _strict_to_utf8(path, data, wide) if wide else data
        return CsvInput(
            _normalise_newlines(payload), wide or "utf-8", "utf8", digest=FileDigest.of_bytes(data)
        )
    _refuse_nul_bytes(path, head)
    if head.startswith(codecs.BOM_UTF8):
        return CsvInput(path, "utf-8-sig", "utf8")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) < SNIFF_BYTES)
    except UnicodeDecodeError as exc:
        return _eight_bit_input(path, head, exc.start, complete=len(head) < SNIFF_BYTES)
    return CsvInput(path, "utf-8", "utf8")


def after_late_bad_byte(path: Path, csv_input: CsvInput) -> CsvInput:
    """polars found a non-UTF-8 byte beyond the head: refuse a mixed file, else read cp1252.

    Reading the whole file happens only on this path (see `_eight_bit_input`).
    """
    data = csv_input.source if isinstance(csv_input.source, bytes) else read_all(path)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _eight_bit_input(path, data, exc.start, complete=True)
    return csv_input  # polars's complaint was not about the encoding


def _eight_bit_input(path: Path, data: bytes, bad: int, *, complete: bool) -> CsvInput:
    """cp1252 for a file whose first non-UTF-8 byte is at `bad`, unless it mixes encodings.

    `data` is the file's beginning, or the whole file when `complete`. UTF-8
    before `bad` means a UTF-8 file with a foreign row; UTF-8 after it, an
    8-bit file with a UTF-8 row. Either is refused.
    """
    if _UTF8_SEQUENCE.search(data, 0, bad):
        raise _mixed_encoding_error(path, data, bad)
    whole = data if complete else read_all(path)
    later = _UTF8_SEQUENCE.search(whole, bad)
    if later:
        raise _mixed_encoding_error(path, whole, later.start(), utf8_later=True)
    return CsvInput(path, "cp1252", "windows-1252")


def _mixed_encoding_error(
    path: Path, data: bytes, offset: int, *, utf8_later: bool = False
) -> InputFileError:
    line = data.count(b"\n", 0, offset) + 1
    if utf8_later:
        what = f"line {line} (byte offset {offset}) is UTF-8 but earlier lines are not"
    else:
        what = (
            f"line {line} (byte offset {offset}, byte 0x{data[offset]:02X}) is not UTF-8, "
            "but the lines before it are"
        )
    return InputFileError(
        f"{path.name}: {what}: the file mixes two text encodings",
        hint="rows were probably pasted from another export; fix that line, then save "
        "the whole file as CSV UTF-8 (Excel: File > Save As > CSV UTF-8)",
    )


def _refuse_binary(path: Path, head: bytes) -> None:
    for magic, kind in _BINARY_MAGIC:
        if head.startswith(magic):
            raise InputFileError(
                f"{path.name} is {kind}, not a CSV text file",
                hint="unpack or export it first, then pass the .csv or .xlsx itself",
            )


def _refuse_nul_bytes(path: Path, head: bytes) -> None:
    # Text in a one-byte encoding never holds NUL; UTF-16/32 were ruled out.
    if b"\x00" in head:
        offset = head.index(b"\x00")
        raise InputFileError(
            f"{path.name} is not a text file (a NUL byte at offset {offset})",
            hint="open it in Excel and save it as CSV UTF-8 or .xlsx",
        )


def _wide_codec(head: bytes) -> str | None:
    for bom, codec in _WIDE_BOMS:
        if head.startswith(bom):
            return codec  # the codec reads the BOM and drops it
    return _guess_bomless_wide(head)


def _guess_bomless_wide(sample: bytes) -> str | None:
    # ASCII text has a NUL in every other byte in UTF-16 and three of four in UTF-32.
    if len(sample) < 8 or sample.count(0) < len(sample) // 4:
        return None
    lanes = [sample[i::4].count(0) for i in range(4)]
    quarter = len(sample) // 4
    if lanes[1] == lanes[2] == lanes[3] == quarter and lanes[0] < quarter:
        return "utf-32-le"
    if lanes[0] == lanes[1] == lanes[2] == quarter and lanes[3] < quarter:
        return "utf-32-be"
    even_nuls = sample[0::2].count(0)
    odd_nuls = sample[1::2].count(0)
    return "utf-16-le" if odd_nuls > even_nuls else "utf-16-be"


def _strict_to_utf8(path: Path, data: bytes, codec: str) -> bytes:
    try:
        return data.decode(codec).encode("utf-8")
    except UnicodeDecodeError as exc:
        line = _wide_line(data, exc.start, codec, 4 if "32" in codec else 2)
        raise InputFileError(
            f"{path.name}: line {line} (byte offset {exc.start}) is not valid {codec.upper()}",
            hint="the file is damaged or mixes encodings; save it again as CSV UTF-8",
        ) from None


def _wide_line(data: bytes, offset: int, codec: str, width: int) -> int:
    """Line number of byte `offset` in UTF-16/32 text, from the text decoded before it."""
    aligned = offset - offset % width
    return data[:aligned].decode(codec, errors="replace").count("\n") + 1


def _has_bare_cr_newlines(head: bytes) -> bool:
    # Old Mac exports end lines with a bare CR, which polars does not split on.
    return b"\n" not in head and b"\r" in head


def _normalise_newlines(data: bytes) -> bytes:
    if _has_bare_cr_newlines(data[:SNIFF_BYTES]):
        return data.replace(b"\r", b"\n")
    return data


def text_codec(csv_input: CsvInput) -> str:
    """The Python codec for the bytes polars parses."""
    return "cp1252" if csv_input.polars_encoding == "windows-1252" else "utf-8"


def sample_text(csv_input: CsvInput) -> tuple[str, bool]:
    """The beginning of the file as text, and whether the file goes on beyond it."""
    if isinstance(csv_input.source, bytes):
        chunk, truncated = csv_input.source[:SNIFF_BYTES], len(csv_input.source) > SNIFF_BYTES
    else:
        with csv_input.source.open("rb") as handle:
            chunk = handle.read(SNIFF_BYTES)
            truncated = bool(handle.read(1))
    decoder = codecs.getincrementaldecoder(text_codec(csv_input))(errors="replace")
    return decoder.decode(chunk).removeprefix("\ufeff"), truncated
