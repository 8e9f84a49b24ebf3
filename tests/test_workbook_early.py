"""The Orders sheet's lines made by a child forked right after the provider's listing.

`write_batch_report` forks it (`workbook.early_orders`) so the lines are made on the
other core while this process matches the rows; it assumes what matching says of
nearly every order, and makes its lines with the style ids a workbook registering the
batch's styles first gives. The report must be the report made without it, and when an
assumption does not hold (`EarlyOrders.fits`, or the workbook's style ids) the save
makes the lines itself.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import zipfile
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from openpyxl import Workbook

from batcher.core.files import atomic_write
from batcher.reporting import workbook, xlsx_stream
from batcher.reporting.row_facts import RowFacts
from batcher.reporting.row_source import BatchRows
from batcher.reporting.xlsx_stream import (
    EarlyMade,
    EarlyRows,
    StreamedSheet,
    Styled,
    prepare,
    register_style,
    save,
)
from tests.test_report_pages import BALANCES, SPECS, ledger_of_odd_rows, report
from tests.test_reports import build
from tests.test_workbook_fork import FORK_WARNING


@pytest.fixture
def forkable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forks allowed: the test runner's own threads aside, and a small batch big enough."""
    monkeypatch.setattr(xlsx_stream, "_threads", lambda: 1)
    monkeypatch.setattr(xlsx_stream, "_idle_cores", lambda since: 1.0)
    monkeypatch.setattr(xlsx_stream, "FORK_MIN_ROWS", 1)


class Forks:
    """Records the children forked, which early child was used, and reaps nothing."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.pids: list[int] = []
        self.used: list[int] = []
        self.fits: list[bool] = []
        real_fork, real_use, real_fits = os.fork, EarlyRows.use, workbook.EarlyOrders.fits

        def fork() -> int:
            pid = real_fork()
            if pid:
                self.pids.append(pid)
            return pid

        def use(child: EarlyRows, message: Any) -> EarlyRows:
            self.used.append(child.count)
            return real_use(child, message)

        def fits(early: workbook.EarlyOrders, model: Any) -> bool:
            self.fits.append(real_fits(early, model))
            return self.fits[-1]

        monkeypatch.setattr(os, "fork", fork)
        monkeypatch.setattr(EarlyRows, "use", use)
        monkeypatch.setattr(workbook.EarlyOrders, "fits", fits)

    def all_reaped(self) -> bool:
        for pid in self.pids:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue
            return False
        return True


def orders_member(out: Path) -> bytes:
    with zipfile.ZipFile(out / "nightly" / "reconciliation.xlsx") as package:
        assert package.testzip() is None
        return package.read("xl/worksheets/sheet2.xml")


@pytest.mark.usefixtures("forkable")
@pytest.mark.filterwarnings(FORK_WARNING)
def test_a_report_whose_orders_an_early_child_makes_is_the_report_made_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger, provider = build(tmp_path, SPECS, balances=BALANCES)
    try:
        monkeypatch.setattr(xlsx_stream, "EARLY_MAX_ROWS", 0)  # no early child
        here = report(ledger, provider, tmp_path / "here")
        monkeypatch.setattr(xlsx_stream, "EARLY_MAX_ROWS", 200_000)
        forks = Forks(monkeypatch)
        made_here: list[int] = []
        real_lines, parent = BatchRows.for_lines, os.getpid()

        def for_lines(rows: BatchRows, start: int = 0, stop: int | None = None) -> Any:
            for values in real_lines(rows, start, stop):
                if forks.pids and os.getpid() == parent:  # made here, after the fork
                    made_here.append(values[1])
                yield values

        monkeypatch.setattr(BatchRows, "for_lines", for_lines)
        early = report(ledger, provider, tmp_path / "early")
    finally:
        ledger.close()
    assert forks.fits == [True] and forks.used == [len(SPECS)], "the early child's lines"
    assert len(forks.pids) == 2, "and the save's child, for the Wallet sheet's first lines"
    assert made_here == [], "this process made no Orders line after the fork"
    assert early == here
    assert orders_member(tmp_path / "early") == orders_member(tmp_path / "here")
    assert forks.all_reaped()


@pytest.mark.usefixtures("forkable")
@pytest.mark.filterwarnings(FORK_WARNING)
def test_an_order_with_a_problem_stops_the_early_child_and_the_save_makes_its_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child showed every order as matched; one the provider lists at another face
    value is not: its lines are thrown away, and the report is still the right one."""
    ledger, provider = build(tmp_path, SPECS, balances=BALANCES)
    provider.orders_[3] = dataclasses.replace(provider.orders_[3], face_value=Decimal("99.00"))
    try:
        monkeypatch.setattr(xlsx_stream, "EARLY_MAX_ROWS", 0)
        here = report(ledger, provider, tmp_path / "here")
        monkeypatch.setattr(xlsx_stream, "EARLY_MAX_ROWS", 200_000)
        forks = Forks(monkeypatch)
        early = report(ledger, provider, tmp_path / "early")
    finally:
        ledger.close()
    assert forks.fits == [False] and forks.used == []
    assert forks.pids, "an early child was forked"
    assert early == here
    assert "the provider has" in str(early[0]["Orders"])
    assert orders_member(tmp_path / "early") == orders_member(tmp_path / "here")
    assert forks.all_reaped(), "the unused child was stopped and reaped"


@pytest.mark.usefixtures("forkable")
def test_other_pass_through_headers_or_no_listings_do_not_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger, provider = build(tmp_path, SPECS, balances=BALANCES)
    monkeypatch.setattr(xlsx_stream, "EARLY_MAX_ROWS", 0)
    try:
        models: list[Any] = []
        real = workbook._write_workbook

        def keep(path: Path, model: Any, early: Any = None) -> Path:
            models.append(model)
            return real(path, model, early)

        monkeypatch.setattr(workbook, "_write_workbook", keep)
        report(ledger, provider, tmp_path / "here")
    finally:
        ledger.close()
    model = models[0]
    child: Any = object()
    fits = workbook.EarlyOrders(child, model.rows, list(model.passthrough))
    assert model.passthrough == ["Cost centre"]
    fits.child = type("Child", (), {"count": len(model.rows)})()
    assert fits.fits(model)
    assert not dataclasses.replace(fits, passthrough=["Cost centre", "Region"]).fits(model)
    assert not dataclasses.replace(fits, rows=BatchRows.from_rows([])).fits(model)
    balances_only = dataclasses.replace(
        model, reconciliation=dataclasses.replace(model.reconciliation, evidence="balances")
    )
    assert not fits.fits(balances_only)


# ---------------------------------------------------------------------------
# EarlyRows itself: its style ids, failures, and when it does not fork.


class Sheet:
    """A workbook with one streamed sheet whose money and dates have styles."""

    def __init__(self, rows: int) -> None:
        self.workbook = Workbook()
        first = self.workbook.active
        assert first is not None
        first.title = "Summary"
        self.money = register_style(self.workbook, '"£"#,##0.00')
        self.date = register_style(self.workbook, "yyyy-mm-dd hh:mm:ss")
        self.worksheet = self.workbook.create_sheet("Orders")
        prepare(self.worksheet, ["n", "text", "money", "when"], rows)
        self.count = rows
        self.parent = os.getpid()

    def lines(self, money: int, start: int = 0, stop: int | None = None) -> Iterator[list[Any]]:
        for n in range(start, self.count if stop is None else stop):
            yield [
                n,
                # text that looks like a cell's XML stays as it is
                f's="{n % 5}"> {n % 7}' if n % 3 else "=HYPERLINK(1)",
                Styled(Decimal(n % 1000) / 100, money),
                datetime(2026, 1, 1 + n % 28, n % 24),
            ]

    def streamed(self) -> StreamedSheet:
        def part(start: int, stop: int | None) -> Iterator[list[Any]]:
            return self.lines(self.money, start, stop)

        return StreamedSheet(self.worksheet, part(0, None), self.count, 4, part, 0)

    def early(self, tmp_path: Path, money: int | None = None) -> EarlyRows | None:
        """The child, making its rows with `money` as their money style (by default the
        workbook's)."""
        assumed = {"date": self.date, "money": self.money if money is None else money}

        def make() -> EarlyMade:
            return assumed["date"], self.lines(assumed["money"]), assumed.__eq__

        return EarlyRows.fork(make, 4, self.count, tmp_path, None)

    def save(self, path: Path, early: EarlyRows | None = None) -> Path:
        streamed = self.streamed()
        if early is not None:
            early.use({"date": self.date, "money": self.money}).sheet = streamed
        with atomic_write(path) as tmp:
            save(tmp, self.workbook, [streamed], self.date, early)
        return path


def sheet_xml(path: Path) -> bytes:
    with zipfile.ZipFile(path) as package:
        assert package.testzip() is None
        return package.read("xl/worksheets/sheet2.xml")


@pytest.mark.usefixtures("forkable")
@pytest.mark.filterwarnings(FORK_WARNING)
def test_an_early_childs_rows_are_the_rows_made_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = Sheet(3_000).save(tmp_path / "here.xlsx")
    sheet = Sheet(3_000)
    forks = Forks(monkeypatch)
    real = sheet.lines
    made_here: list[int] = []

    def lines(money: int, start: int = 0, stop: int | None = None) -> Iterator[list[Any]]:
        for line in real(money, start, stop):
            if os.getpid() == sheet.parent:
                made_here.append(line[0])
            yield line

    monkeypatch.setattr(sheet, "lines", lines)
    early = sheet.early(tmp_path)
    assert early is not None and forks.pids
    forked = sheet.save(tmp_path / "early.xlsx", early)
    xml = sheet_xml(forked)
    assert xml == sheet_xml(here)
    assert made_here == [], "every row came from the child"
    assert b's="1"&gt; 1' in xml  # text that looks like a cell's XML, kept as text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["early.xlsx", "here.xlsx"]
    assert forks.all_reaped()


@pytest.mark.usefixtures("forkable")
@pytest.mark.filterwarnings(FORK_WARNING)
def test_an_early_child_whose_style_ids_the_workbook_does_not_give_has_its_rows_made_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It made its rows before the workbook had its styles: with other ids than the
    workbook gives, its rows are not used, and this process makes them."""
    here = Sheet(3_000).save(tmp_path / "here.xlsx")
    sheet = Sheet(3_000)
    forks = Forks(monkeypatch)
    early = sheet.early(tmp_path, money=sheet.money + 1)
    assert early is not None and forks.pids
    made = sheet.save(tmp_path / "made.xlsx", early)
    assert sheet_xml(made) == sheet_xml(here)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here.xlsx", "made.xlsx"]
    assert forks.all_reaped()


@pytest.mark.usefixtures("forkable")
@pytest.mark.filterwarnings(FORK_WARNING)
def test_an_early_child_that_fails_has_its_rows_made_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It read the ledger on its own: whatever stopped it, this process makes its rows."""
    here = Sheet(3_000).save(tmp_path / "here.xlsx")
    sheet = Sheet(3_000)
    real = sheet.lines

    def lines(money: int, start: int = 0, stop: int | None = None) -> Iterator[list[Any]]:
        for n, line in enumerate(real(money, start, stop)):
            if os.getpid() != sheet.parent and n == 2_500:
                raise ValueError("a cell the child cannot write")
            yield line

    monkeypatch.setattr(sheet, "lines", lines)
    forks = Forks(monkeypatch)
    early = sheet.early(tmp_path)
    assert early is not None and forks.pids
    made = sheet.save(tmp_path / "made.xlsx", early)
    assert sheet_xml(made) == sheet_xml(here)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here.xlsx", "made.xlsx"]
    assert forks.all_reaped()


@pytest.mark.usefixtures("forkable")
@pytest.mark.filterwarnings(FORK_WARNING)
def test_rows_that_cannot_be_made_fail_the_save_and_leave_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sheet = Sheet(3_000)
    real = sheet.lines

    def lines(money: int, start: int = 0, stop: int | None = None) -> Iterator[list[Any]]:
        for n, line in enumerate(real(money, start, stop), start):
            if n == 2_500:
                raise ValueError("a cell nobody can write")
            yield line

    monkeypatch.setattr(sheet, "lines", lines)
    early = sheet.early(tmp_path)
    assert early is not None
    with pytest.raises(ValueError, match="a cell nobody can write"):
        sheet.save(tmp_path / "broken.xlsx", early)
    assert list(tmp_path.iterdir()) == [], "no workbook, no temporary file"


@pytest.mark.usefixtures("forkable")
@pytest.mark.filterwarnings(FORK_WARNING)
def test_an_early_child_never_told_is_stopped_and_reaped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forks = Forks(monkeypatch)
    early = Sheet(3_000).early(tmp_path)
    assert early is not None and forks.pids
    early.close()
    early.close()  # twice: the save and its caller may both close it
    assert forks.all_reaped()
    assert list(tmp_path.iterdir()) == []


def test_no_early_child_without_a_process_other_threads_or_with_children_reaped_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(xlsx_stream, "FORK_MIN_ROWS", 1)
    sheet = Sheet(3_000)
    if xlsx_stream._threads() > 1:  # the test runner's threads (xdist): nothing forks
        assert sheet.early(tmp_path) is None
    monkeypatch.setattr(xlsx_stream, "_threads", lambda: 2)
    assert sheet.early(tmp_path) is None
    monkeypatch.setattr(xlsx_stream, "_threads", lambda: 1)
    monkeypatch.setattr(xlsx_stream.signal, "getsignal", lambda number: signal.SIG_IGN)
    assert sheet.early(tmp_path) is None
    monkeypatch.undo()
    monkeypatch.setattr(xlsx_stream, "FORK_MIN_ROWS", 1)
    monkeypatch.setattr(xlsx_stream, "_threads", lambda: 1)
    monkeypatch.setattr(xlsx_stream, "_idle_cores", lambda since: 1.0)
    forks = Forks(monkeypatch)

    def no_fork() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    fds = len(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(os, "fork", no_fork)
    assert sheet.early(tmp_path) is None and forks.pids == []
    assert len(os.listdir("/proc/self/fd")) == fds, "its pipes and file closed"
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(xlsx_stream, "EARLY_MAX_ROWS", 2_999)
    assert sheet.early(tmp_path) is None  # more rows than a child makes early


@pytest.mark.usefixtures("forkable")
def test_no_early_child_when_no_core_is_idle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forks = Forks(monkeypatch)
    monkeypatch.setattr(xlsx_stream, "_idle_cores", lambda since: 0.5)
    assert Sheet(3_000).early(tmp_path) is None
    assert forks.pids == [] and list(tmp_path.iterdir()) == []


def test_idle_cores_are_the_idle_cpu_time_over_the_time_passed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ticks = os.sysconf("SC_CLK_TCK")
    since = xlsx_stream.IdleSample(100.0, 5_000)
    monkeypatch.setattr(xlsx_stream.time, "monotonic", lambda: 100.5)
    monkeypatch.setattr(
        xlsx_stream, "idle_sample", lambda: xlsx_stream.IdleSample(100.5, 5_000 + ticks // 2)
    )
    assert xlsx_stream._idle_cores(since) == pytest.approx(1.0)  # half a second idle in 0.5 s
    assert xlsx_stream._idle_cores(None) == 0.0  # not known: none
    monkeypatch.setattr(xlsx_stream, "idle_sample", lambda: None)
    assert xlsx_stream._idle_cores(since) == 0.0
    monkeypatch.undo()
    sample = xlsx_stream.idle_sample()
    assert sample is not None and sample.ticks > 0
    assert 0.0 <= xlsx_stream._idle_cores(sample) <= len(os.sched_getaffinity(0)) + 0.5


@pytest.mark.usefixtures("forkable")
def test_no_early_child_for_a_postgres_ledger(tmp_path: Path) -> None:
    class PostgresLedger:
        backend = "postgresql"

    rows = BatchRows.from_rows([])
    ledger: Any = PostgresLedger()
    assert workbook.early_orders(ledger, "b", rows, {}, tmp_path) is None


def test_the_save_splits_the_sheet_with_the_most_work_by_its_rows_weight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(xlsx_stream, "_threads", lambda: 1)
    monkeypatch.setattr(xlsx_stream, "FORK_MIN_ROWS", 100)
    monkeypatch.setattr(xlsx_stream, "_SAVE_ROWS", 1_000)
    orders, wallet = Sheet(10_000).streamed(), Sheet(10_000).streamed()
    orders = dataclasses.replace(orders, in_memory=10_000)
    wallet = dataclasses.replace(wallet, in_memory=10_000, weight=0.4)
    # Both: the Orders sheet, half of all the work (a Wallet line is 0.4 of one)
    assert xlsx_stream._split([orders, wallet]) == (orders, (10_000 + 1_000 + 4_000) // 2)
    # Orders made by an early child: half of the rest, counted in Wallet lines
    assert xlsx_stream._split([wallet]) == (wallet, int((4_000 + 1_000) / 2 / 0.4))
    assert xlsx_stream._split([wallet], 200) == (wallet, int((4_000 + 200) / 2 / 0.4))


def test_the_early_childs_read_is_the_lines_read_for_the_sheet(tmp_path: Path) -> None:
    """`_early_line_values` reads fewer columns: the same values as `for_lines`, in report
    order, a skipped row explained, earlier sheets and conflicts included."""
    ledger = ledger_of_odd_rows(tmp_path)
    try:
        rows = BatchRows.from_ledger(ledger, "nightly", page=6)
        expected = list(rows.for_lines())
        read = list(workbook._early_line_values(ledger, "nightly", rows.keys))
        part = list(workbook._early_line_values(ledger, "nightly", rows.keys[5:30]))
    finally:
        ledger.close()
    assert read == expected and len(read) == len(SPECS)
    assert all(
        list(map(type, a)) == list(map(type, b)) for a, b in zip(read, expected, strict=True)
    )
    assert part == expected[5:30]
    assert any(v[9] == "skipped" and v[17] for v in read)


@pytest.mark.usefixtures("forkable")
@pytest.mark.filterwarnings(FORK_WARNING)
def test_an_early_report_with_a_skipped_row_and_earlier_orders_is_the_report_made_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger, provider = build(tmp_path, SPECS, balances=BALANCES)
    try:
        db = ledger._db
        db.execute("UPDATE rows SET in_sheet = 0 WHERE source_row IN (12, 13)")
        db.execute("UPDATE rows SET state = 'skipped', reference = 'R-15' WHERE source_row = 15")
        monkeypatch.setattr(xlsx_stream, "EARLY_MAX_ROWS", 0)
        here = report(ledger, provider, tmp_path / "here")
        monkeypatch.setattr(xlsx_stream, "EARLY_MAX_ROWS", 200_000)
        forks = Forks(monkeypatch)
        early = report(ledger, provider, tmp_path / "early")
    finally:
        ledger.close()
    assert forks.fits == [True] and forks.used
    assert early == here
    assert orders_member(tmp_path / "early") == orders_member(tmp_path / "here")
    assert "already ordered in another batch" in str(early[0]["Orders"])


def test_the_early_childs_currencies_are_those_the_reports_rows_name(tmp_path: Path) -> None:
    """`style_currencies` (the child's, for its style ids) names the currencies of the
    rows the report shows, cards' and payments', as the report's own facts do: not a
    row the report leaves out (no longer in the sheet, never ordered)."""
    ledger = ledger_of_odd_rows(tmp_path)
    try:
        db = ledger._db
        db.execute("UPDATE rows SET cost_currency = 'CHF' WHERE source_row = 16")
        db.execute("UPDATE rows SET currency = 'USD' WHERE source_row = 12")  # earlier order
        db.execute(
            "UPDATE rows SET in_sheet = 0, order_id = NULL, currency = 'NOK',"
            " cost_currency = 'SEK' WHERE source_row = 17"
        )
        rows = BatchRows.from_ledger(ledger, "nightly", page=6)
        lines = list(rows.for_lines())
        facts = RowFacts()
        for row in rows.for_sums():
            facts.add(row)
        found = ledger.style_currencies("nightly")
    finally:
        ledger.close()
    named = {v[6] for v in lines if v[6]} | {v[8] for v in lines if v[8]}
    assert found == named == facts.style_currencies
    assert {"CHF", "USD"} <= found and not {"NOK", "SEK"} & found
