"""The workbook's biggest sheet written in two parts, the first by a forked child.

`xlsx_stream.save` forks (Linux, no other thread) so the Orders sheet's first rows
are made on the other core while this process saves the workbook and writes the
rest; the parts are deflated apart and joined into one zip member. The package
must hold the same bytes either way, a failed child must fail the save (no
workbook, no temporary file), and the child makes only rows held in memory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openpyxl import Workbook, load_workbook

from batcher.core.files import atomic_write
from batcher.ledger.store import Ledger
from batcher.reporting import row_source, xlsx_stream
from batcher.reporting.row_source import BatchRows
from batcher.reporting.xlsx_stream import (
    StreamedSheet,
    Styled,
    crc32_combine,
    prepare,
    register_style,
    save,
)
from tests.test_reconcile import row
from tests.test_report_pages import BALANCES, SPECS, report
from tests.test_reports import build

#: Python 3.12+ warns on a fork while other threads run (the test runner's); ours
#: forks only with none, so the tests that let it fork under xdist ignore the warning
FORK_WARNING = "ignore:.*fork.*:DeprecationWarning"


@pytest.fixture
def forkable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A save that may fork: the test runner's own threads aside, and a small sheet big enough."""
    monkeypatch.setattr(xlsx_stream, "_threads", lambda: 1)
    monkeypatch.setattr(xlsx_stream, "FORK_MIN_ROWS", 100)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=3000))
def test_combined_crcs_are_the_crc_of_the_joined_bytes(first: bytes, second: bytes) -> None:
    crc = crc32_combine(zlib.crc32(first), zlib.crc32(second), len(second))
    assert crc == zlib.crc32(first + second)


def test_combined_crcs_over_a_long_part() -> None:
    first, second = b"<row>" * 1000, bytes(range(256)) * 40_000
    assert crc32_combine(zlib.crc32(first), zlib.crc32(second), len(second)) == zlib.crc32(
        first + second
    )


class Sheet:
    """A workbook with one big streamed sheet (and a small one), made from memory."""

    def __init__(self, rows: int, parent: int) -> None:
        self.parent = parent
        self.made_in: set[int] = set()
        self.workbook = Workbook()
        first = self.workbook.active
        assert first is not None
        first.title = "Summary"
        first.append(["a summary"])
        self.money = register_style(self.workbook, '"£"#,##0.00')
        self.date = register_style(self.workbook, "yyyy-mm-dd hh:mm:ss")
        big = self.workbook.create_sheet("Orders")
        prepare(big, ["n", "text", "money", "when", "note"], rows)
        small = self.workbook.create_sheet("Wallet")
        prepare(small, ["x"], 3)
        self.count = rows
        self.sheets = [
            StreamedSheet(big, self.part(0, None), rows, 5, self.part, rows),
            StreamedSheet(small, [["a"], ["=1+2"], ["c"]], 3, 1),
        ]

    def line(self, n: int) -> list[Any]:
        return [
            n,
            f"name {n % 97} & <co> •" if n % 5 else "=HYPERLINK(1)",
            Styled(Decimal(n % 1000) / 100, self.money),
            datetime(2026, 1, 1 + n % 28, n % 24),
            None if n % 3 else "\x07bell",
        ]

    def part(self, start: int, stop: int | None) -> Iterator[list[Any]]:
        for n in range(start, self.count if stop is None else stop):
            self.made_in.add(os.getpid())
            yield self.line(n)


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as package:
        assert package.testzip() is None  # every member's CRC checks out
        return {name: package.read(name) for name in package.namelist()}


def values(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    book = load_workbook(path, read_only=True)
    found = {s.title: list(s.iter_rows(values_only=True)) for s in book.worksheets}
    book.close()
    return found


def saved(tmp_path: Path, name: str, rows: int) -> tuple[Path, Sheet]:
    sheet = Sheet(rows, os.getpid())
    path = tmp_path / name
    with atomic_write(path) as tmp:
        save(tmp, sheet.workbook, sheet.sheets, sheet.date)
    return path, sheet


@pytest.mark.usefixtures("forkable")
@pytest.mark.filterwarnings(FORK_WARNING)
def test_a_sheet_written_partly_by_a_child_is_the_sheet_written_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(xlsx_stream, "_SAVE_ROWS", 500)
    forked, sheet = saved(tmp_path, "forked.xlsx", 5_000)
    assert sheet.made_in == {os.getpid()}, "this process made only the rows after the child's"
    monkeypatch.setattr(xlsx_stream, "_split", lambda sheets: None)
    here, alone = saved(tmp_path, "here.xlsx", 5_000)
    assert alone.made_in == {os.getpid()}
    split, whole = members(forked), members(here)
    assert split.keys() == whole.keys()
    for name in split:
        if name != "docProps/core.xml":  # the moment it was saved
            assert split[name] == whole[name], name
    assert values(forked) == values(here)
    orders = values(forked)["Orders"]
    assert len(orders) == 5_001 and orders[1][1] == "'=HYPERLINK(1)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["forked.xlsx", "here.xlsx"]


@pytest.mark.usefixtures("forkable")
@pytest.mark.filterwarnings(FORK_WARNING)
def test_the_child_makes_the_first_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rows the child made are not made here: seen by which rows this process made."""
    monkeypatch.setattr(xlsx_stream, "_SAVE_ROWS", 0)
    made: list[int] = []
    real = Sheet.part

    def part(self: Sheet, start: int, stop: int | None) -> Iterator[list[Any]]:
        if os.getpid() == self.parent:
            made.append(start)
        return real(self, start, stop)

    monkeypatch.setattr(Sheet, "part", part)
    saved(tmp_path, "forked.xlsx", 3_000)
    # the sheet's `rows` (start 0, never read), then the parent's own rows from the split
    assert made[0] == 0 and len(made) == 2 and 100 <= made[1] < 3_000


@pytest.mark.usefixtures("forkable")
@pytest.mark.filterwarnings(FORK_WARNING)
def test_a_failed_child_fails_the_save_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Sheet.line

    def line(self: Sheet, n: int) -> list[Any]:
        if os.getpid() != self.parent and n == 150:
            raise ValueError("a cell the child cannot write")
        return real(self, n)

    monkeypatch.setattr(Sheet, "line", line)
    with pytest.raises(RuntimeError, match=r"child process.*ValueError: a cell the child"):
        saved(tmp_path, "broken.xlsx", 3_000)
    assert list(tmp_path.iterdir()) == [], "no workbook, no temporary file"


@pytest.mark.usefixtures("forkable")
@pytest.mark.filterwarnings(FORK_WARNING)
def test_no_process_to_fork_writes_it_all_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pids limit or no memory for a process (EAGAIN, ENOMEM) is no reason to fail."""

    def no_fork() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    path, sheet = saved(tmp_path, "here.xlsx", 3_000)
    assert sheet.made_in == {os.getpid()}
    assert len(values(path)["Orders"]) == 3_001


def test_a_sheet_past_the_zip64_limit_is_written_here_with_zip64_sizes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a child (no fork: macOS, Windows) a sheet's XML past 2 GiB needs zip64
    sizes from its first byte; the limit is lowered so that 3,000 rows pass it."""
    monkeypatch.setattr(xlsx_stream, "_may_fork", lambda: False)
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 50_000)
    path, _ = saved(tmp_path, "zip64.xlsx", 3_000)
    with zipfile.ZipFile(path) as package:
        orders = package.getinfo("xl/worksheets/sheet2.xml")
    assert orders.file_size > 50_000  # it did pass the limit
    assert len(values(path)["Orders"]) == 3_001


@pytest.mark.usefixtures("forkable")
def test_no_child_where_children_are_ignored_or_reaped_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sheet = Sheet(3_000, os.getpid())
    monkeypatch.setattr(xlsx_stream.signal, "getsignal", lambda number: xlsx_stream.signal.SIG_IGN)
    assert xlsx_stream._split(sheet.sheets) is None


@pytest.mark.usefixtures("forkable")
@pytest.mark.filterwarnings(FORK_WARNING)
def test_a_save_interrupted_while_waiting_for_the_child_stops_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C in the wait: the child is killed and reaped, not left running."""
    children: list[int] = []
    real_fork, real_waitpid = os.fork, os.waitpid

    def fork() -> int:
        pid = real_fork()
        if pid:
            children.append(pid)
        return pid

    def waitpid(pid: int, options: int) -> tuple[int, int]:
        if pid in children and len(children) == 1:
            children.append(-1)  # once
            raise KeyboardInterrupt
        return real_waitpid(pid, options)

    monkeypatch.setattr(os, "fork", fork)
    monkeypatch.setattr(os, "waitpid", waitpid)
    with pytest.raises(KeyboardInterrupt):
        saved(tmp_path, "stopped.xlsx", 20_000)
    with pytest.raises(ChildProcessError):  # reaped already: no such child
        real_waitpid(children[0], os.WNOHANG)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.usefixtures("forkable")
@pytest.mark.filterwarnings(FORK_WARNING)
def test_the_child_ignores_a_ctrl_c_sent_to_the_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A parent whose SIGINT handler carries on (the CLI's stop handler) still gets
    its child's rows: the signal is the parent's to act on."""
    import signal

    real = Sheet.line

    def line(self: Sheet, n: int) -> list[Any]:
        if os.getpid() != self.parent and n == 150:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, n)

    monkeypatch.setattr(Sheet, "line", line)
    previous = signal.signal(signal.SIGINT, lambda number, frame: None)
    try:
        path, _ = saved(tmp_path, "kept.xlsx", 3_000)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(values(path)["Orders"]) == 3_001


def test_no_child_while_another_thread_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(xlsx_stream, "FORK_MIN_ROWS", 100)
    sheet = Sheet(3_000, os.getpid())
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert xlsx_stream._threads() > 1
        assert xlsx_stream._split(sheet.sheets) is None
    finally:
        stop.set()
        other.join()
    monkeypatch.setattr(xlsx_stream, "_threads", lambda: 1)
    split = xlsx_stream._split(sheet.sheets)
    assert split is not None and split[0] is sheet.sheets[0]


def test_no_child_for_a_small_sheet_or_rows_not_in_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(xlsx_stream, "_threads", lambda: 1)
    assert xlsx_stream._split(Sheet(3_000, os.getpid()).sheets) is None  # under FORK_MIN_ROWS
    monkeypatch.setattr(xlsx_stream, "FORK_MIN_ROWS", 100)
    sheet = Sheet(3_000, os.getpid())
    big = sheet.sheets[0]
    held_few = StreamedSheet(big.worksheet, big.rows, big.row_count, big.columns, big.part, 50)
    assert xlsx_stream._split([held_few, sheet.sheets[1]]) is None
    held_some = StreamedSheet(big.worksheet, big.rows, big.row_count, big.columns, big.part, 900)
    assert xlsx_stream._split([held_some, sheet.sheets[1]]) == (held_some, 900)


def test_lines_of_rows_held_in_memory_read_nothing_from_the_ledger() -> None:
    """What the child may make (`held_count`) is made without a read; the rest is read."""
    rows = [row(n, state="failed" if n % 4 == 3 else "succeeded") for n in range(1, 21)]
    keys = [r.row_key for r in rows]
    by_key = {r.row_key: r for r in rows}
    reads: list[Sequence[str]] = []

    def read_lines(wanted: Sequence[str]) -> Iterator[list[Any]]:
        reads.append(list(wanted))
        yield [row_source.line_values(by_key[k]) for k in wanted]

    def read(wanted: Sequence[str]) -> Iterator[list[Any]]:
        raise AssertionError("whole records are not read for the lines")

    source = BatchRows(keys, len(keys), read, 4, None, read_lines)
    source.hold({r.row_key: r for r in rows if r.state == "succeeded"})
    held = source.held_count()
    assert held == 2  # the third row failed: no wallet line holds it
    assert [v[0] for v in source.for_lines(0, held)] == keys[:2]
    assert reads == []
    rest = [v[0] for v in source.for_lines(held)]
    assert rest == keys[2:]
    assert [k for part in reads for k in part] == [k for k in keys if by_key[k].state == "failed"]
    assert [v[0] for v in source.for_lines(5, 9)] == keys[5:9]


@pytest.mark.filterwarnings(FORK_WARNING)
def test_a_report_whose_orders_a_child_writes_is_the_report_written_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger, provider = build(tmp_path, SPECS, balances=BALANCES)
    forks: list[int] = []
    real_split = xlsx_stream._split

    def split(sheets: Sequence[StreamedSheet]) -> tuple[StreamedSheet, int] | None:
        found = real_split(sheets)
        forks.append(found[1] if found else 0)
        return found

    try:
        monkeypatch.setattr(row_source, "ROW_PAGE", 7)  # held rows, read a page at a time
        here = report(ledger, provider, tmp_path / "here")
        monkeypatch.setattr(xlsx_stream, "_threads", lambda: 1)
        monkeypatch.setattr(xlsx_stream, "FORK_MIN_ROWS", 1)
        monkeypatch.setattr(xlsx_stream, "_SAVE_ROWS", 0)
        monkeypatch.setattr(xlsx_stream, "_split", split)
        # the save's own child here: the one forked early reads the ledger (on a
        # connection of its own) by design, tested in test_workbook_early.py
        monkeypatch.setattr(xlsx_stream, "EARLY_MAX_ROWS", 0)
        parent = os.getpid()
        for name in ("raw_rows_in_pages", "fact_rows_in_pages", "rows_in_pages"):
            monkeypatch.setattr(Ledger, name, _here_only(getattr(Ledger, name), parent))
        forked = report(ledger, provider, tmp_path / "forked")
    finally:
        ledger.close()
    assert forks and forks[0] > 0, "a child wrote the first Orders rows"
    assert forked == here


def _here_only(read: Any, parent: int) -> Any:
    """The ledger's read, refused in a child (it must never use the ledger)."""

    def guarded(*args: Any, **kwargs: Any) -> Any:
        if os.getpid() != parent:
            raise AssertionError("the child read the ledger")
        return read(*args, **kwargs)

    return guarded


def test_a_report_imports_no_polars() -> None:
    """Polars (validation's) is a fifth of a second to import and starts threads of its
    own, with which the workbook's child would not be forked."""
    script = (
        "import sys, batcher.services, batcher.cli.report, batcher.reporting.reports\n"
        "print('LOADED', 'polars' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert "LOADED False" in result.stdout
