"""Stream many rows into worksheets of a workbook openpyxl has already saved.

openpyxl builds the workbook: styles, column widths, frozen panes, filters,
charts and every header row. Without lxml it serialises about 20,000 rows a
second, too slow for a 100,000-row report, so the row-heavy sheets are saved by
openpyxl with their header only, and this module then writes their data rows
straight into the package as SpreadsheetML.

Cells are typed by their Python value:

- `str`: an inline string, passed through `safe_cell` (never a formula) and
  stripped of characters XML cannot carry; characters beyond ASCII are written as
  character references (`&#8226;`), read back as the same text;
- `int`, `Decimal`: a number (`Decimal` is written exactly, never via float);
- `datetime`: a real Excel date-time (naive, in UTC) with the date style;
- `Styled(value, style_id)`: a number or date with a style of its own, such as a
  currency format;
- `None`: no cell.

Style ids come from `register_style`, called before openpyxl saves the workbook.
"""

from __future__ import annotations

import io
import json
import os
import queue
import re
import shutil
import signal
import string
import struct
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from itertools import islice, repeat
from operator import add, itemgetter
from pathlib import Path
from typing import IO, Any, NamedTuple, NoReturn, Protocol
from xml.sax.saxutils import escape

from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE, Cell
from openpyxl.utils import get_column_letter
from openpyxl.utils.datetime import to_excel
from openpyxl.workbook import Workbook
from openpyxl.worksheet.worksheet import Worksheet

from batcher.reporting.cells import leads_plainly, safe_cell

MAX_CELL_CHARS = 32_767  # Excel's limit for one cell's text
_ROWS_PER_WRITE = 2_000
#: blocks made but not yet deflated (`_Deflating`)
_BLOCKS_AHEAD = 2
_DIMENSION = re.compile(r'<dimension ref="[^"]*"\s*/>')
_SHEET_DATA_END = "</sheetData>"
#: characters XML cannot carry, or must escape
_NEEDS_CARE = re.compile(r"[&<>\x00-\x08\x0b\x0c\x0e-\x1f]")
#: an underscore that Excel would read as the start of an escaped character (`_x001B_`
#: is ESC): written as `_x005F_`, Excel's escape for `_`, so the text reads as stored
_ESCAPE_LIKE = re.compile(r"_(?=x[0-9A-Fa-f]{4}_)")
#: first character -> whether text starting with it may take the plain shortcut
_PLAIN_FIRST: dict[str, bool] = dict.fromkeys(string.ascii_letters + string.digits, True)


def _is_plain(text: str) -> bool:
    """Is this non-empty text written as it is, the same as `_text_cell` writes it?

    Printable (no control character, and no whitespace but the ASCII space: no other
    kind of space, no zero-width or invisible character), nothing XML must escape, no
    `_x` (`_ESCAPE_LIKE`), no space at the end, not too long, and a first character after which no formula can
    start (`_plain_first`). Most cells are: names, emails, ids, states. Checked by
    `str` methods, not a regular expression: 2 million cells at 100k rows."""
    found = _PLAIN_FIRST.get(text[0])
    if found is None:
        found = _plain_first(text[0])
    return (
        found
        and text.isprintable()
        and text[-1] != " "
        and "&" not in text
        and "<" not in text
        and ">" not in text
        and "_x" not in text
        and len(text) <= MAX_CELL_CHARS
    )


def _plain_but_for_markup(texts: Sequence[str], joined: str) -> bool:
    """`_is_plain` for every one of these non-empty texts (`joined`: them joined), checked
    over them all at once, but for `&`, `<` and `>`: `_text_cell` escapes those, and
    does nothing else to such text.

    Their first and last characters are found by searching them joined again, each
    text after a `_MARK` (printable text holds none): a space before a mark, a first
    character after one that is not an ASCII letter or digit. Texts with such first
    characters (a masked voucher's `•`) are looked up one by one, as `_is_plain` does."""
    if not joined.isprintable() or "_x" in joined:
        return False
    marked = _MARK.join(texts)
    if _MARK_AFTER_SPACE in marked or texts[-1][-1] == " ":
        return False
    first = texts[0][0]
    alphanumeric = first.isascii() and first.isalnum() and not _MARK_BEFORE_OTHER.search(marked)
    if not alphanumeric and not all(map(_PLAIN_FIRST.get, map(_first_character, texts))):
        return False
    return len(joined) <= MAX_CELL_CHARS or max(map(len, texts)) <= MAX_CELL_CHARS


#: between texts joined for `_plain_but_for_markup`: a control, which no printable text holds
_MARK = "\x00"
_MARK_AFTER_SPACE = " " + _MARK
#: a mark before a first character other than an ASCII letter or digit (those always
#: take the plain shortcut: `_PLAIN_FIRST`)
_MARK_BEFORE_OTHER = re.compile(_MARK + "[^0-9A-Za-z]")


def _plain_first(first: str) -> bool:
    """A first character after which plain text is written as it is: visible and no
    formula trigger (`leads_plainly`), nothing XML must escape, no control, no space."""
    found = _PLAIN_FIRST.get(first)
    if found is None:
        found = _PLAIN_FIRST[first] = (
            first not in "&<>" and first >= " " and not first.isspace() and leads_plainly(first)
        )
    return found


class Styled(NamedTuple):
    """A number or date cell with its own style (from `register_style`).

    Two are equal when they write the same cell: the same style and a value of the
    same type and text (`1.50` is not `1.5`, `-0` is not `0`), so the writer keeps
    a cell's XML by it."""

    value: Decimal | int | datetime
    style: int

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is Styled
            and self.style == other.style
            and type(self.value) is type(other.value)
            and str(self.value) == str(other.value)
        )

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)


# Equal cells are equal tuples: the tuple's hash (set here, as a class attribute, it
# stays the C slot; a method would cost a Python call per lookup).
Styled.__hash__ = tuple.__hash__  # type: ignore[method-assign]


def register_style(workbook: Workbook, number_format: str) -> int:
    """Add a cell style with this number format to the workbook; return its id."""
    worksheet = workbook.worksheets[0]
    probe = Cell(worksheet, row=1, column=1)  # never attached to the sheet
    probe.number_format = number_format
    return probe.style_id


def excel_datetime(moment: datetime) -> datetime:
    """Excel has no time zones: an aware datetime becomes naive UTC; a naive one is UTC."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


@dataclass(frozen=True)
class StreamedSheet:
    """Data rows for one worksheet, written after its header (row 1)."""

    worksheet: Worksheet
    rows: Iterable[Sequence[Any]]
    row_count: int  # how many rows `rows` yields: the sheet's dimension says so up front
    columns: int
    #: the rows from `start` to `stop` (None: the last), as `rows` yields them: lets
    #: `save` write the sheet in two parts, the first in a forked child
    part: Callable[[int, int | None], Iterable[Sequence[Any]]] | None = None
    #: how many of the first rows `part` makes from memory alone (no ledger, no
    #: network, no logging): only those may be made in a forked child
    in_memory: int = 0
    #: what one of its rows costs to make, in lines of a report's Orders sheet
    weight: float = 1.0


def prepare(worksheet: Worksheet, headers: Sequence[str], row_count: int) -> None:
    """The header row, and a filter over it and the rows that will be streamed in."""
    worksheet.append([safe_cell(h) for h in headers])
    last = get_column_letter(max(1, len(headers)))
    worksheet.auto_filter.ref = f"A1:{last}{row_count + 1}"


def _copy_members(
    source: zipfile.ZipFile,
    target: zipfile.ZipFile,
    targets: dict[str, StreamedSheet],
    write_sheet: Callable[[str, str, StreamedSheet], None],
) -> None:
    """Every member of openpyxl's package into `target`: a streamed sheet's through
    `write_sheet` (its name, the frame's text, the sheet), the others as they are."""
    missing = set(targets) - set(source.namelist())
    if missing:
        raise RuntimeError(f"openpyxl did not write {sorted(missing)}")
    for item in source.infolist():
        sheet = targets.get(item.filename)
        if sheet is None:
            target.writestr(item, source.read(item.filename))
        else:
            write_sheet(item.filename, source.read(item.filename).decode("utf-8"), sheet)


# ---------------------------------------------------------------------------
# The package written whole, the biggest sheet's first rows by a forked child.

#: fewer rows than this for the child: not worth a process
FORK_MIN_ROWS = 20_000
#: the parent's own work besides its rows of the split sheet, counted in that sheet's
#: rows (rough, measured at 100,000 rows): openpyxl's save, and each row of the other
#: streamed sheets (a Wallet line costs about 0.4 of an Orders line, measured at 100k rows)
_SAVE_ROWS = 20_000
_OTHER_ROW = 0.4
#: `_SAVE_ROWS` beside an early child, which has made and deflated the Orders sheet by
#: the save (at 100k rows: the Wallet sheet's child, given 75,000 of its 100,000 lines,
#: finished 0.6 s after this process; at this weight both finish together)
_SAVE_ROWS_BESIDE_EARLY = 8_000
#: bytes copied at a time from a part's file into the package
_COPY = 1 << 20


def save(
    path: Path,
    workbook: Workbook,
    sheets: Sequence[StreamedSheet],
    date_style: int,
    early: EarlyRows | None = None,
) -> None:
    """Save `workbook` at `path` (a temporary path of the caller's: not atomic here)
    with the streamed sheets' rows in place.

    Where the platform forks (Linux) and this process has no other thread, the
    first rows of the biggest sheet that can make them from memory are written by a
    forked child on the other core, while this process saves the workbook and writes
    the rest; each part is deflated on its own and the parts are joined into the one
    zip member (deflate data can be joined at a flushed block; the CRCs combine).
    The sheet's XML is the same bytes either way. Otherwise, or for a small sheet,
    everything is written here.

    `early`: a child forked before the workbook was made (`EarlyRows`), already told
    its sheet and style ids (`EarlyRows.use`): it writes that sheet's first rows."""
    children: list[_ChildRows] = [] if early is None else [early]
    if early is None:
        split = _split(sheets)
    else:
        split = _split([s for s in sheets if s is not early.sheet], _SAVE_ROWS_BESIDE_EARLY)
    if split is not None:
        with suppress(OSError):  # no process to be had (a pids limit, memory): all of it here
            children.append(_ChildRows.start(*split, date_style, path.parent))
    try:
        frame = io.BytesIO()
        workbook.save(frame)
        targets = {_part_name(workbook, s.worksheet): s for s in sheets}
        with (
            zipfile.ZipFile(frame) as source,
            zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as target,
        ):
            if not children:
                _copy_members(
                    source,
                    target,
                    targets,
                    lambda name, frame, sheet: _write_sheet(target, name, frame, sheet, date_style),
                )
                return
            with tempfile.TemporaryFile(dir=path.parent) as scratch:
                parts = _write_parts(scratch, sheets, children, date_style)
                for child in children:
                    parts[id(child.sheet)].insert(0, _joined(child, scratch, date_style))
                _copy_members(
                    source,
                    target,
                    targets,
                    lambda name, frame, sheet: _join_member(
                        target, name, frame, sheet, parts[id(sheet)]
                    ),
                )
    finally:
        for child in children:
            child.close()


def _joined(child: _ChildRows, file: IO[bytes], date_style: int) -> _Part:
    """The child's part. A save-time child that failed fails the save; an early child
    (`EarlyRows`, which read the ledger on its own) that failed has its rows made here."""
    try:
        return child.join()
    except RuntimeError:
        if not isinstance(child, EarlyRows):
            raise
    return _write_rows(file, child.sheet, 0, child.count, date_style, threaded=True)


def _may_fork() -> bool:
    """Linux, no other thread, and SIGCHLD as it comes: a child may be forked and waited for."""
    if not sys.platform.startswith("linux") or not hasattr(os, "fork") or _threads() != 1:
        return False
    # a host that ignores or reaps children itself: no exit status to wait for
    return signal.getsignal(signal.SIGCHLD) in (signal.SIG_DFL, None)


def _settled(wait: float = 0.05) -> bool:
    """`_may_fork`, allowing threads just joined a moment to be gone from /proc."""
    deadline = time.monotonic() + wait
    while not _may_fork():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.002)
    return True


def _split(
    sheets: Sequence[StreamedSheet], save_rows: int | None = None
) -> tuple[StreamedSheet, int] | None:
    """The sheet whose first rows a child makes, and how many: about half the work
    (by each sheet's `weight`, with the save's own as `save_rows`, by default
    `_SAVE_ROWS`). A sheet an early child makes whole is not among them."""
    if not _may_fork():
        return None
    candidates = [s for s in sheets if s.part is not None and s.in_memory > 0]
    if not candidates:
        return None
    sheet = max(candidates, key=lambda s: s.row_count * s.weight)
    others = sum(s.row_count for s in sheets if s is not sheet)
    save = _SAVE_ROWS if save_rows is None else save_rows
    work = sheet.row_count * sheet.weight + save + int(others * _OTHER_ROW)
    count = min(sheet.in_memory, sheet.row_count, int(work / 2 / sheet.weight))
    return (sheet, count) if count >= FORK_MIN_ROWS else None


class IdleSample(NamedTuple):
    """The machine's idle CPU time (/proc/stat, in clock ticks) at a moment."""

    at: float  # time.monotonic()
    ticks: int


def idle_sample() -> IdleSample | None:
    """Now's `IdleSample` (None where /proc/stat cannot tell)."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = fh.readline().split()
        return IdleSample(time.monotonic(), int(fields[4]) + int(fields[5]))  # idle, iowait
    except (OSError, ValueError, IndexError):
        return None


#: the least time over which idle CPU time is judged (it is counted in 10 ms ticks)
_IDLE_WINDOW = 0.05


def _idle_cores(since: IdleSample | None) -> float:
    """How many cores, on average, sat idle from `since` to now (0.0 when not known).

    An early child pays for itself only on a core that is idle while this process
    works on: on a busy machine the rows it makes cost more than making them at the
    save. (The count of running tasks in /proc/loadavg is no guide: it counts kernel
    threads too.) A window too short to judge is waited out."""
    if since is None:
        return 0.0
    waited = time.monotonic() - since.at
    if waited < _IDLE_WINDOW:
        time.sleep(_IDLE_WINDOW - waited)
    now = idle_sample()
    if now is None or now.at <= since.at:
        return 0.0
    return (now.ticks - since.ticks) / os.sysconf("SC_CLK_TCK") / (now.at - since.at)


def _threads() -> int:
    """This process's threads, the interpreter's and any other (a forked child has
    only the one that forked: another thread's lock would stay held in it forever)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


class _Part(NamedTuple):
    """One part of a zip member's deflated data: a run of whole deflate blocks ending
    at a flushed byte boundary (the last part: the final block), with the CRC and
    size of the bytes it holds. In `data`, or at `offset` in the file `fd`."""

    data: bytes | None
    fd: int
    offset: int
    length: int
    crc: int
    size: int


class _PartSink:
    """Deflates what is written to it onto the end of `file`: one `_Part`."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self._offset = file.seek(0, os.SEEK_END)
        self._deflate = zlib.compressobj(1, zlib.DEFLATED, -15)  # as zipfile, level 1
        self.crc = self.size = self.length = 0

    def write(self, block: bytes) -> None:
        self.crc = zlib.crc32(block, self.crc)
        self.size += len(block)
        data = self._deflate.compress(block)
        self._file.write(data)
        self.length += len(data)

    def finish(self) -> _Part:
        data = self._deflate.flush(zlib.Z_SYNC_FLUSH)
        self._file.write(data)
        self._file.flush()
        self.length += len(data)
        return _Part(None, self._file.fileno(), self._offset, self.length, self.crc, self.size)


def _deflated(data: bytes, *, last: bool) -> _Part:
    deflate = zlib.compressobj(1, zlib.DEFLATED, -15)
    out = deflate.compress(data) + deflate.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)
    return _Part(out, -1, 0, len(out), zlib.crc32(data), len(data))


def _write_rows(
    file: IO[bytes],
    sheet: StreamedSheet,
    start: int,
    stop: int | None,
    date_style: int,
    *,
    threaded: bool,
) -> _Part:
    """Rows `start` to `stop` of the sheet (all of them when it has no `part`), as one
    deflated `_Part` at the end of `file`; deflated on a thread of its own if `threaded`."""
    if sheet.part is not None:
        rows = sheet.part(start, stop)
    else:
        assert start == 0 and stop is None, "a sheet without `part` is written whole"
        rows = sheet.rows
    end = sheet.row_count if stop is None else stop
    writer = _RowWriter(sheet.columns, date_style, after=start + 1)
    sink = _PartSink(file)
    with _Deflating(sink) if threaded else nullcontext(sink) as out:
        _write_blocks(out, rows, writer)
    if writer.last_row != end + 1:
        raise RuntimeError(
            f"{sheet.worksheet.title}: {writer.last_row - 1 - start} rows written from row"
            f" {start + 2}, {end - start} expected"
        )
    return sink.finish()


def _write_parts(
    file: IO[bytes],
    sheets: Sequence[StreamedSheet],
    children: Sequence[_ChildRows],
    date_style: int,
) -> dict[int, list[_Part]]:
    """Every streamed sheet's rows but the children's, deflated into `file`, by sheet."""
    parts: dict[int, list[_Part]] = {}
    for sheet in sheets:
        start = next((c.count for c in children if c.sheet is sheet), 0)
        parts[id(sheet)] = [_write_rows(file, sheet, start, None, date_style, threaded=True)]
    return parts


def _join_member(
    target: zipfile.ZipFile, name: str, frame: str, sheet: StreamedSheet, parts: Sequence[_Part]
) -> None:
    """The worksheet `name`: its frame's head, the rows' parts and its tail, as one member."""
    head, tail = _frame(name, frame, sheet)
    every = [_deflated(head.encode("utf-8"), last=False), *parts]
    every.append(_deflated(tail.encode("utf-8"), last=True))
    crc = size = length = 0
    for part in every:
        crc = crc32_combine(crc, part.crc, part.size)
        size += part.size
        length += part.length
    info = zipfile.ZipInfo(name)  # as `ZipFile.open(name, "w")` makes it
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o600 << 16
    info.CRC, info.file_size, info.compress_size = crc, size, length
    _append_deflated(target, info, every)


def _append_deflated(
    target: zipfile.ZipFile, info: zipfile.ZipInfo, parts: Sequence[_Part]
) -> None:
    """Append a member whose deflated data, CRC and sizes are known: what
    `ZipFile.open(info, "w")` and its close do, but the data is not deflated again."""
    if getattr(target, "_writing", False):
        raise ValueError("another member of the package is being written")
    fp = target.fp
    assert fp is not None
    fp.seek(target.start_dir)
    info.header_offset = fp.tell()
    target._writecheck(info)  # type: ignore[attr-defined]
    target._didModify = True  # type: ignore[attr-defined]
    fp.write(info.FileHeader())
    for part in parts:
        if part.data is not None:
            fp.write(part.data)
            continue
        done = 0
        while done < part.length:
            chunk = os.pread(part.fd, min(_COPY, part.length - done), part.offset + done)
            if not chunk:
                raise RuntimeError(f"{info.filename}: a part of its rows is missing")
            fp.write(chunk)
            done += len(chunk)
    target.start_dir = fp.tell()
    target.filelist.append(info)
    target.NameToInfo[info.filename] = info


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """The CRC-32 of A + B from CRC-32(A), CRC-32(B) and the length of B (zlib's
    `crc32_combine`, which Python's zlib does not offer): A's CRC is carried through
    B's length of zero bits by squaring a GF(2) matrix, in log(length) steps."""
    if length2 <= 0:
        return crc1
    operator = [0xEDB88320] + [1 << n for n in range(31)]  # one zero bit
    for _ in range(3):
        operator = _gf2_square(operator)  # two, four, then eight zero bits: one byte
    while length2:  # a zero byte, then two, four, ... as B's length has the bits
        if length2 & 1:
            crc1 = _gf2_times(operator, crc1)
        length2 >>= 1
        if length2:
            operator = _gf2_square(operator)
    return crc1 ^ crc2


def _gf2_times(matrix: Sequence[int], vector: int) -> int:
    total, at = 0, 0
    while vector:
        if vector & 1:
            total ^= matrix[at]
        vector >>= 1
        at += 1
    return total


def _gf2_square(matrix: Sequence[int]) -> list[int]:
    return [_gf2_times(matrix, row) for row in matrix]


class _ChildRows:
    """The first `count` rows of `sheet`, made and deflated by a forked child into a
    file of their own while this process goes on; `join` waits for them.

    The child inherits everything copy-on-write (nothing is pickled), makes the rows
    from memory (`StreamedSheet.in_memory`: no ledger, no network, no logging), and
    leaves by `os._exit`: no handler, buffer or finaliser of this process runs in it.
    It reports its part, or its error, on a pipe; a failed child fails the save, so
    the caller's temporary file is never renamed into place."""

    def __init__(self, sheet: StreamedSheet, count: int, pid: int, pipe: int, file: IO[bytes]):
        self.sheet, self.count = sheet, count
        self._pid: int | None = pid
        self._pipe, self._file = pipe, file

    @classmethod
    def start(
        cls, sheet: StreamedSheet, count: int, date_style: int, directory: Path
    ) -> _ChildRows:
        file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115  # closed by `close`
        read, write = os.pipe()
        try:
            pid = os.fork()
        except BaseException:
            os.close(read)
            os.close(write)
            file.close()
            raise
        if pid == 0:  # the child: never returns
            _child_main(file, write, sheet, count, date_style)
        os.close(write)
        return cls(sheet, count, pid, read, file)

    def join(self) -> _Part:
        """The child's part, once it has exited; its error as a RuntimeError."""
        pid = self._pid
        assert pid is not None
        _, status = os.waitpid(pid, 0)
        self._pid = None  # only now: interrupted in the wait, `close` still stops it
        message = b""
        while chunk := os.read(self._pipe, 1 << 16):
            message += chunk
        code = os.waitstatus_to_exitcode(status)
        if code != 0 or not message.startswith(_CHILD_OK):
            detail = message.decode("utf-8", "replace") or f"exit status {code}"
            raise RuntimeError(
                f"{self.sheet.worksheet.title}: the child process writing its first"
                f" {self.count} rows failed: {detail}"
            )
        offset, length, crc, size = struct.unpack(_CHILD_PART, message[len(_CHILD_OK) :])
        return _Part(None, self._file.fileno(), offset, length, crc, size)

    def close(self) -> None:
        """Stop the child if it still runs (this process failed first), and let go."""
        if self._pid is not None:
            with suppress(OSError):
                os.kill(self._pid, signal.SIGKILL)
            with suppress(OSError):
                os.waitpid(self._pid, 0)
            self._pid = None
        if self._pipe >= 0:  # closed once: the save and its caller may both close it
            os.close(self._pipe)
            self._pipe = -1
        self._file.close()


_CHILD_OK = b"ok:"
_CHILD_PART = "<QQQQ"

#: rows the child a report forks early can make while it matches: more would leave the
#: child most of a large sheet to make alone (`save`'s own split serves those better)
EARLY_MAX_ROWS = 200_000
#: idle cores (on average, from the listing's end to the fork) an early child needs
_IDLE_ENOUGH = 0.75
#: the workbook's style ids sent to an early child: a JSON object, at most this long
_EARLY_MESSAGE_MAX = 1 << 20

#: What an early child's `make` gives, in the child: the date style id its rows are
#: made with, the rows, and whether the workbook's style ids (`EarlyRows.use`'s
#: message) give each cell it made the style it gave it.
EarlyMade = tuple[int, Iterable[Sequence[Any]], Callable[[Any], bool]]


class EarlyRows(_ChildRows):
    """The first `count` rows of a sheet, made by a child forked before the workbook
    exists (a report forks it after the provider's listing, so the rows are made on
    the other core while this process matches them).

    The child makes its rows with the style ids it expects the workbook to give
    (`make`: a workbook registers the same styles first, so they get the same ids) and
    deflates them as it goes, so its work is done while this process matches. `use`
    tells it the workbook's real ids: where they give every cell it made the style it
    gave it, it reports its part as the save-time child does (`_ChildRows.join`);
    otherwise it fails, and the save makes its rows (`_joined`). `close` without `use`
    stops it: whoever forked it found its rows would not be the ones the sheet needs."""

    def __init__(self, count: int, pid: int, pipe: int, file: IO[bytes], go: int) -> None:
        super().__init__(None, count, pid, pipe, file)  # type: ignore[arg-type]  # see `use`
        self._go: int | None = go

    @classmethod
    def fork(
        cls,
        make: Callable[[], EarlyMade],
        columns: int,
        count: int,
        directory: Path,
        idle_since: IdleSample | None,
    ) -> EarlyRows | None:
        """The child making `make()`'s `count` rows (None: no child to be had, or no
        core idle since `idle_since`: see `_idle_cores`)."""
        if count < FORK_MIN_ROWS or count > EARLY_MAX_ROWS or not _settled():
            return None
        if _idle_cores(idle_since) < _IDLE_ENOUGH:  # its rows would only slow this process
            return None
        file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115  # closed by `close`
        read, write = os.pipe()
        go_read, go_write = os.pipe()
        try:
            pid = os.fork()
        except OSError:  # no process to be had: the save makes the rows as it would
            for fd in (read, write, go_read, go_write):
                os.close(fd)
            file.close()
            return None
        if pid == 0:  # the child: never returns
            os.close(read)
            os.close(go_write)
            _early_main(file, write, go_read, make, columns, count)
        os.close(write)
        os.close(go_read)
        return cls(count, pid, read, file, go_write)

    def use(self, message: Any) -> EarlyRows:
        """The child's rows will be used, if `message` (the workbook's style ids) gives
        their cells the styles the child gave them. Its sheet (`sheet`) is set before
        the save."""
        assert self._go is not None, "told once"
        data = _json_dumps(message).encode("utf-8")
        go, self._go = self._go, None
        try:
            _send(go, data)
        except OSError:
            pass  # the child is gone: `join` says so
        finally:
            os.close(go)
        return self

    def close(self) -> None:
        if self._go is not None:
            os.close(self._go)  # told nothing: the child stops
            self._go = None
        super().close()


def _json_dumps(message: Any) -> str:
    return json.dumps(message, separators=(",", ":"))


def _early_main(
    file: IO[bytes],
    pipe: int,
    go: int,
    make: Callable[[], EarlyMade],
    columns: int,
    count: int,
) -> NoReturn:
    """An early child's whole life: its rows made and deflated; the workbook's style
    ids; its part on the pipe if they are the ones its rows have; `os._exit`."""

    def make_part() -> _Part:
        date_style, made, fits = make()
        rows = iter(made)
        writer = _RowWriter(columns, date_style)
        sink = _PartSink(file)
        while block := list(islice(rows, _ROWS_PER_WRITE)):
            sink.write(writer.rows(block).encode("utf-8"))
        if writer.last_row != count + 1:
            raise RuntimeError(f"{writer.last_row - 1} rows made, {count} expected")
        part = sink.finish()
        message = b""
        while len(message) <= _EARLY_MESSAGE_MAX and (chunk := os.read(go, 1 << 16)):
            message += chunk
        if not message:  # told nothing: the rows are not needed
            os._exit(0)
        if not fits(json.loads(message)):
            raise RuntimeError("the workbook gave other style ids than its rows were made with")
        return part

    _child_life(pipe, make_part)


def _child_main(
    file: IO[bytes], pipe: int, sheet: StreamedSheet, count: int, date_style: int
) -> NoReturn:
    """The forked child's whole life: the rows, their part on the pipe, `os._exit`."""
    _child_life(pipe, lambda: _write_rows(file, sheet, 0, count, date_style, threaded=False))


def _child_life(pipe: int, make_part: Callable[[], _Part]) -> NoReturn:
    """A forked child's life around `make_part`: its part (or what went wrong) told on
    the pipe, then `os._exit`, whatever happens."""
    code = 1
    try:
        # No handler of this process's runs here, and a Ctrl-C or SIGTERM sent to the
        # whole group is the parent's to act on: if it stops, `close` kills the child;
        # if it finishes, the child's rows are needed
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_IGN)
        part = make_part()
        _send(
            pipe,
            _CHILD_OK + struct.pack(_CHILD_PART, part.offset, part.length, part.crc, part.size),
        )
        code = 0
    except BaseException as exc:  # told to the parent, which raises it
        with suppress(BaseException):
            _send(pipe, f"{type(exc).__name__}: {exc}"[:2000].encode("utf-8", "replace"))
    finally:
        os._exit(code)


def _send(pipe: int, message: bytes) -> None:
    while message:
        message = message[os.write(pipe, message) :]


def _frame(name: str, frame: str, sheet: StreamedSheet) -> tuple[str, str]:
    """The worksheet's XML before its streamed rows (with the dimension they make) and after."""
    if frame.count(_SHEET_DATA_END) != 1:
        raise RuntimeError(f"{name}: unexpected worksheet layout from openpyxl")
    head, tail = frame.split(_SHEET_DATA_END)
    last = f"{get_column_letter(max(sheet.columns, 1))}{sheet.row_count + 1}"
    head = _DIMENSION.sub(f'<dimension ref="A1:{last}"/>', head, count=1)
    return head, _SHEET_DATA_END + tail


def _part_name(workbook: Workbook, worksheet: Worksheet) -> str:
    """openpyxl saves the n-th worksheet as xl/worksheets/sheet{n}.xml."""
    return f"xl/worksheets/sheet{workbook.worksheets.index(worksheet) + 1}.xml"


#: A generous bound on one row's XML (a row of long cells, much of it written as
#: character references): the rows a sheet may hold before zip64 must be forced.
_MAX_ROW_XML_BYTES = 32_768


def _write_sheet(
    target: zipfile.ZipFile, name: str, frame: str, sheet: StreamedSheet, date_style: int
) -> None:
    head, tail = _frame(name, frame, sheet)
    writer = _RowWriter(sheet.columns, date_style)
    # Past 2 GiB a member needs zip64 sizes, and zipfile must be told before its first
    # byte (else it fails at the end): forced where the rows could get there. A member
    # joined from parts (`_join_member`) knows its sizes and gets them as needed.
    zip64 = sheet.row_count * _MAX_ROW_XML_BYTES > zipfile.ZIP64_LIMIT
    with target.open(name, "w", force_zip64=zip64) as member, _Deflating(member) as out:
        out.write(head.encode("utf-8"))
        _write_blocks(out, sheet.rows, writer)
        out.write(tail.encode("utf-8"))
    if writer.last_row != sheet.row_count + 1:
        raise RuntimeError(
            f"{name}: {writer.last_row - 1} rows written, {sheet.row_count} expected"
        )


def _write_blocks(out: _Sink, rows: Iterable[Sequence[Any]], writer: _RowWriter) -> None:
    """The rows' XML, `_ROWS_PER_WRITE` rows at a write."""
    rows = iter(rows)
    while block := list(islice(rows, _ROWS_PER_WRITE)):
        out.write(writer.rows(block).encode("utf-8"))


class _Sink(Protocol):
    """Where `_Deflating` writes: a zip member, or a `_PartSink`."""

    def write(self, data: bytes, /) -> object: ...


class _Deflating:
    """A zip member written on a thread of its own, a block at a time, in order.

    zlib lets go of the interpreter lock while it deflates (and while it sums a
    block's CRC), so the next block's XML is made while the last one is compressed:
    about a second of a 100,000-row report's wall time. At most `_BLOCKS_AHEAD`
    blocks wait, so memory stays bounded. An error on the thread is raised on the
    caller's next write or at the end; an error of the caller's stops the thread and
    is the one that propagates."""

    def __init__(self, member: _Sink) -> None:
        self._member = member
        self._blocks: queue.Queue[bytes | None] = queue.Queue(maxsize=_BLOCKS_AHEAD)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name="xlsx-deflate", daemon=True)

    def __enter__(self) -> _Deflating:
        self._thread.start()
        return self

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        self._blocks.put(None)
        self._thread.join()
        if kind is None and self._error is not None:
            raise self._error

    def write(self, block: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._blocks.put(block)

    def _drain(self) -> None:
        while (block := self._blocks.get()) is not None:
            if self._error is None:
                try:
                    self._member.write(block)
                except BaseException as exc:  # raised on the caller's thread
                    self._error = exc


class _RowWriter:
    """SpreadsheetML for rows from row 2 on (or after `after`), a block of rows at a time."""

    def __init__(self, columns: int, date_style: int, after: int = 1) -> None:
        self.letters = [get_column_letter(i + 1) for i in range(max(columns, 1))]
        self.date_style = date_style
        self.last_row = after
        self._columns = [_Column(self, letter) for letter in self.letters]

    def row(self, values: Sequence[Any]) -> str:
        """One row's XML (`rows` of one)."""
        return self.rows([values])

    def rows(self, block: Sequence[Sequence[Any]]) -> str:
        """These rows' XML, numbered on from the last row written.

        Written a column at a time (`_Column.parts`): a column of plain text, whole
        numbers or dates is checked once for the block and its values go between its
        tags as they are; the other columns' cells are looked up by value. Each row is
        then joined and its number put in for `ROW`, all by `map` and `zip`: no Python
        per cell, 3.4 million cells at 100k rows, and the rows stay ASCII. The result
        is the general path's, `cell` for each cell (hypothesis tests hold them
        together)."""
        if not block:
            return ""
        width = len(self._columns)
        lengths = set(map(len, block))
        if lengths != {width}:
            for at, values in enumerate(block):
                if len(values) > width:
                    number = self.last_row + 1 + at
                    raise IndexError(f"row {number} has {len(values)} cells, the sheet {width}")
            block = [[*values, *([None] * (width - len(values)))] for values in block]
        first, count = self.last_row + 1, len(block)
        self.last_row += count
        by_column = zip(*block, strict=True)  # the rows are as wide as the sheet now
        # What zip joins into each row: the constant text between cells' values (tags,
        # references with `ROW` for the row number) and each column's values or cells.
        parts: list[Iterable[str]] = []
        between = _ROW_START
        for column, values in zip(self._columns, by_column, strict=True):
            before, middle, after = column.parts(values)
            if middle is not None:
                parts += (repeat(between + before, count), middle)
                between = after
        parts.append(repeat(between + "</row>", count))
        lines = map("".join, zip(*parts, strict=True))
        numbers = map(str, range(first, self.last_row + 1))
        return "".join(map(str.replace, lines, repeat(ROW), numbers))

    def cell(self, ref: str, value: Any) -> str:
        kind = type(value)
        if kind is str:
            return _text_cell(ref, value)
        if kind is Styled:
            return _styled_cell(ref, value.value, value.style)
        if kind is bool:
            return f'<c r="{ref}" t="b"><v>{int(value)}</v></c>'
        if kind is int or kind is Decimal:
            return f'<c r="{ref}"><v>{_number(value)}</v></c>'
        if kind is datetime:
            return _styled_cell(ref, value, self.date_style)
        return _text_cell(ref, str(value))


#: stands for the row number in a column's kept XML: never in a cell's text (XML cannot
#: carry it: `_text_cell` drops it, the plain shortcut admits no control character)
ROW = "\x00"
#: at most this many cells' XML a column keeps
_KEPT_CELLS = 1 << 14
_ROW_START = f'<row r="{ROW}">'
_TEXT_AFTER, _NUMBER_AFTER = "</t></is></c>", "</v></c>"
_TEXT, _TEXT_OR_NONE, _WHOLE = {str}, {str, type(None)}, {int}
_MOMENTS, _NOTHING = {datetime}, {type(None)}
_NONE_AS_EMPTY = {None: ""}
_first_character, _last_character = itemgetter(0), itemgetter(-1)


class _Column(dict[Any, str]):
    """One column's cells: value -> its XML, with `ROW` for the row number ("" for no
    cell). A value seen before is a dictionary lookup (a row is a `map` over its
    columns, no Python per cell); `__missing__` makes the others. Kept are values of
    the types that equal only their own kind: text, None, datetimes and `Styled`
    (exact); never numbers (`1 == True == Decimal("1.0")`)."""

    __slots__ = (
        "filled_at", "keep", "moment_before", "number_before", "opening", "ref", "text_before",
        "writer",
    )  # fmt: skip

    def __init__(self, writer: _RowWriter, letter: str) -> None:
        super().__init__()
        self.writer = writer
        self.ref = letter + ROW
        self.opening = f'<c r="{self.ref}"'
        self.keep = True  # False once the column shows it rarely repeats a value
        self.filled_at = writer.last_row
        #: plain text, a whole number: `_text_cell` and `cell` write them so
        self.text_before = self.opening + ' t="inlineStr"><is><t>'
        self.number_before = self.opening + "><v>"
        self.moment_before = f'{self.opening} s="{writer.date_style}"><v>'

    def parts(self, values: Sequence[Any]) -> tuple[str, Sequence[str] | None, str]:
        """This column's cells in a block of rows: (`before`, `middle`, `after`), each
        row's cell `before + middle[row] + after`. A column of plain text (the cells
        between the tags) or of whole numbers (the digits) has its tags in `before`
        and `after`; the others give each cell's XML ("" for no cell), looked up by
        value. `middle` is None when no row has a cell here."""
        kinds = set(map(type, values))
        if kinds in (_TEXT, _TEXT_OR_NONE):
            if kinds == _TEXT_OR_NONE:
                values = list(map(_NONE_AS_EMPTY.get, values, values))
            written = list(filter(None, values))
            if not written:
                return "", None, ""
            joined = "".join(written)
            if _plain_but_for_markup(written, joined):
                if "&" in joined or "<" in joined or ">" in joined:  # as `escape` does
                    values = list(map(str.replace, values, repeat("&"), repeat("&amp;")))
                    values = list(map(str.replace, values, repeat("<"), repeat("&lt;")))
                    values = list(map(str.replace, values, repeat(">"), repeat("&gt;")))
                if not joined.isascii():
                    # printable: no lone surrogate, each character has a reference
                    wide = map(str.encode, values, repeat("ascii"), repeat("xmlcharrefreplace"))
                    values = list(map(bytes.decode, wide))
                if len(written) == len(values):
                    return self.text_before, values, _TEXT_AFTER
                found = list(
                    map(add, map(add, repeat(self.text_before), values), repeat(_TEXT_AFTER))
                )
                at = -1
                with suppress(ValueError):  # empty text: no cell
                    while True:
                        at = values.index("", at + 1)
                        found[at] = ""
                return "", found, ""
        elif kinds == _WHOLE:
            return self.number_before, list(map(str, values)), _NUMBER_AFTER
        elif kinds == _MOMENTS:
            return self.moment_before, list(map(_serial, values)), _NUMBER_AFTER
        elif kinds == _NOTHING:
            return "", None, ""
        try:
            kept = list(map(self.get, values))
        except TypeError:  # a value that cannot be a key (unhashable)
            kept = [None] * len(values)
        # The cells not kept: found by `index` (no Python per kept cell), made here.
        at = -1
        with suppress(ValueError):
            while True:
                at = kept.index(None, at + 1)
                kept[at] = self.make(values[at])
        return "", kept, ""  # type: ignore[return-value]  # no None left

    def make(self, value: Any) -> str:
        """The cell's XML, kept when its value can be (see the class)."""
        kind = type(value)
        if kind is str:
            if not value:
                xml = ""
            elif _is_plain(value):
                text = value if value.isascii() else _as_ascii(value)
                xml = f"{self.text_before}{text}{_TEXT_AFTER}"
            else:
                xml = _text_cell(self.ref, value)
        elif value is None:
            xml = ""
        elif kind is int:
            return f"{self.opening}><v>{value}</v></c>"  # what `cell` writes; not kept
        else:
            xml = self.writer.cell(self.ref, value)
            if kind is not datetime and kind is not Styled:
                return xml
        if self.keep:
            if len(self) >= _KEPT_CELLS:
                # Full: start again, unless nearly every row brought a value of its own
                # (references, emails, order ids): such a column keeps nothing.
                rows = self.writer.last_row - self.filled_at
                self.keep = rows > _KEPT_CELLS * 2
                self.filled_at = self.writer.last_row
                self.clear()
            self[value] = xml
        return xml


def _text_cell(ref: str, value: str) -> str:
    text = safe_cell(value)
    if len(text) > MAX_CELL_CHARS:
        text = text[: MAX_CELL_CHARS - 1] + "…"
    if _NEEDS_CARE.search(text):
        text = escape(ILLEGAL_CHARACTERS_RE.sub("", text))
    if "_x" in text:
        text = _ESCAPE_LIKE.sub("_x005F_", text)
    space = ' xml:space="preserve"' if text[:1].isspace() or text[-1:].isspace() else ""
    if not text.isascii():
        text.encode("utf-8")  # a lone surrogate cannot be written: raises, as it always did
        text = _as_ascii(text)
    return f'<c r="{ref}" t="inlineStr"><is><t{space}>{text}</t></is></c>'


def _as_ascii(text: str) -> str:
    """The text with each character beyond ASCII as an XML character reference (`•` is
    `&#8226;`): the same text to any XML reader, and the sheet's rows stay ASCII, which
    Python joins, edits and encodes several times faster than wider text."""
    return text.encode("ascii", "xmlcharrefreplace").decode("ascii")


def _styled_cell(ref: str, value: Decimal | int | datetime, style: int) -> str:
    if isinstance(value, datetime):
        return f'<c r="{ref}" s="{style}"><v>{_serial(value)}</v></c>'
    return f'<c r="{ref}" s="{style}"><v>{_number(value)}</v></c>'


@lru_cache(maxsize=1 << 14)
def _serial(moment: datetime) -> str:
    """Excel's serial for a moment; the rows of one chunk share their timestamps."""
    return repr(to_excel(excel_datetime(moment)))


def _number(value: Decimal | int) -> str:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"cannot write {value} as a number")
        return format(value, "f")
    return str(value)


def copy_or_link(source: Path, target: Path) -> None:
    """Archive a finished file: a hard link when possible (cheap), else a copy."""
    if target.exists() or target.is_symlink():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
