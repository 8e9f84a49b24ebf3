"""A run reads what the sheet gave its rows from its last send on, on a thread of its
own, and at its end only what sending and settling wrote: its outputs are those of
one whole read of the ledger at the end, and a failed or interrupted early read
changes nothing but the time."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from batcher.config import provider_settings
from batcher.core.errors import ExitCode
from batcher.execute import run as run_module
from batcher.execute.run import BatchOptions, read_batch, run_batch
from batcher.execute.runner import Runner, RunStats
from batcher.ledger.store import Ledger
from batcher.reporting import early_rows
from batcher.sandbox.server import running_sandbox
from tests.e2e.runkit import ConfirmingUI, make_rows, write_sheet

ROWS = 23


def _run(tmp_path: Path, name: str) -> Path:
    with running_sandbox("ugiftme", rate_limit=100_000, async_delay_seconds=0.05) as sandbox:
        sheet = write_sheet(tmp_path / f"{name}.csv", make_rows(ROWS))
        settings = provider_settings(
            "ugiftme", base_url=sandbox.base_url, environ={"UGIFTME_API_KEY": sandbox.api_key}
        )
        options = BatchOptions(
            sheet=sheet, state_dir=tmp_path / "s", report_dir=tmp_path / "r", run=_chunks_of(5)
        )
        result = run_batch(settings, options, ConfirmingUI())
    assert result.exit_code == ExitCode.OK
    return tmp_path / "r" / name


def _chunks_of(size: int) -> Any:
    from batcher.execute.runner import RunOptions

    return RunOptions(chunk_size=size, initial_poll_delay=0.05)


def _whole_rows_csv(tmp_path: Path, batch: str) -> bytes:
    ledger = Ledger.open(tmp_path / "s")
    try:
        rows, facts, draft = read_batch(ledger, batch, tmp_path / "again")
        path = draft.commit(tmp_path / "again.csv", rows.in_sheet, list(facts.sheet_passthrough))
    finally:
        ledger.close()
    return path.read_bytes()


def test_a_run_reads_its_rows_early_and_writes_what_the_ledger_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    combined: list[early_rows.EndRows] = []
    real = early_rows.combine

    def combine(ledger: Ledger, batch: str, early: early_rows.EarlyRows) -> early_rows.EndRows:
        end = real(ledger, batch, early)
        combined.append(end)
        return end

    monkeypatch.setattr(run_module, "combine", combine)
    out = _run(tmp_path, "early")
    assert len(combined) == 1, "the end used the early read"
    assert combined[0].read_whole == 0 and len(combined[0].records) == ROWS
    assert (out / "rows.csv").read_bytes() == _whole_rows_csv(tmp_path, "early")
    assert not [t for t in threading.enumerate() if t.name == "batcher-early-read"]


def test_a_failed_early_read_leaves_the_end_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tried: list[bool] = []

    def read_early(*args: Any, **kwargs: Any) -> None:
        tried.append(True)
        raise OSError("disk gone")

    monkeypatch.setattr(run_module, "read_early", read_early)
    out = _run(tmp_path, "failed")
    assert tried == [True]
    assert (out / "rows.csv").read_bytes() == _whole_rows_csv(tmp_path, "failed")


def test_a_large_batch_is_not_read_early(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch over `EARLY_ROWS` keeps to pages at its end: nothing is held early."""
    tried: list[bool] = []
    monkeypatch.setattr(run_module, "EARLY_ROWS", ROWS - 1)
    monkeypatch.setattr(run_module, "read_early", lambda *a, **k: tried.append(True))
    out = _run(tmp_path, "large")
    assert tried == []
    assert (out / "rows.csv").read_bytes() == _whole_rows_csv(tmp_path, "large")


def test_an_interrupted_run_stops_its_early_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C after the last send: the early read is cancelled and waited for, not left
    running behind the run."""
    started = threading.Event()
    seen: list[bool] = []
    real_read = early_rows.read_early

    def read_early(*args: Any, cancelled: Any, **kwargs: Any) -> Any:
        started.set()
        while not cancelled():
            threading.Event().wait(0.01)
        seen.append(True)
        return real_read(*args, cancelled=cancelled, **kwargs)

    real_execute = Runner.execute

    def execute(runner: Runner) -> RunStats:
        real_execute(runner)
        runner.listener.sends_done()  # type: ignore[attr-defined]
        assert started.wait(10)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "read_early", read_early)
    monkeypatch.setattr(Runner, "execute", execute)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "stopped")
    assert seen == [True]
    assert not [t for t in threading.enumerate() if t.name == "batcher-early-read"]
