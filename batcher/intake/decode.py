"""How a CSV's bytes are decoded: BOMs, UTF-16, cp1252 and old Mac line ends."""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from pathlib import Path

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
    pass


def choose_csv_input(path: Path, head: bytes) -> CsvInput:
    """Decide how polars should read the file.

    UTF-8 (with or without BOM; polars drops the BOM) and cp1252 are parsed
    from the file itself. UTF-16 (Excel's "Unicode text") and bare-CR line
    ends are rewritten as UTF-8 bytes in memory first.
    """
    utf16 = _utf16_codec(head)
    if utf16 or _has_bare_cr_newlines(head):
        data = read_all(path)
        payload = _utf16_to_utf8(data, utf16) if utf16 else data
        return CsvInput(
            _normalise_newlines(payload), utf16 or "utf-8", "utf8", digest=FileDigest.of_bytes(data)
        )
    if head.startswith(codecs.BOM_UTF8):
        return CsvInput(path, "utf-8-sig", "utf8")
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        decoder.decode(head, final=len(head) < SNIFF_BYTES)
    except UnicodeDecodeError:
        return CsvInput(path, "cp1252", "windows-1252")
    return CsvInput(path, "utf-8", "utf8")


def _utf16_codec(head: bytes) -> str | None:
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"  # the codec reads the BOM and drops it
    return _guess_bomless_utf16(head)


def _utf16_to_utf8(data: bytes, codec: str) -> bytes:
    return data.decode(codec, errors="replace").encode("utf-8")


def _guess_bomless_utf16(sample: bytes) -> str | None:
    # ASCII text in UTF-16 has a NUL in every other byte.
    if len(sample) < 4 or sample.count(0) < len(sample) // 4:
        return None
    even_nuls = sample[0::2].count(0)
    odd_nuls = sample[1::2].count(0)
    return "utf-16-le" if odd_nuls > even_nuls else "utf-16-be"


def _has_bare_cr_newlines(head: bytes) -> bool:
    # Old Mac exports end lines with a bare CR, which polars does not split on.
    return b"\n" not in head and b"\r" in head


def _normalise_newlines(data: bytes) -> bytes:
    if _has_bare_cr_newlines(data[:SNIFF_BYTES]):
        return data.replace(b"\r", b"\n")
    return data


def sample_text(csv_input: CsvInput) -> tuple[str, bool]:
    """The beginning of the file as text, and whether the file goes on beyond it."""
    if isinstance(csv_input.source, bytes):
        chunk, truncated = csv_input.source[:SNIFF_BYTES], len(csv_input.source) > SNIFF_BYTES
    else:
        with csv_input.source.open("rb") as handle:
            chunk = handle.read(SNIFF_BYTES)
            truncated = bool(handle.read(1))
    if csv_input.polars_encoding == "windows-1252":
        text = chunk.decode("cp1252", errors="replace")
    else:
        text = codecs.getincrementaldecoder("utf-8")(errors="replace").decode(chunk)
    return text.removeprefix("\ufeff"), truncated
