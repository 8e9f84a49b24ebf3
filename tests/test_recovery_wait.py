"""Recovery's wait for order requests the provider cannot list yet: said once when it
starts, ended by a stop request at once, and refused with nothing sent at its limit."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from batcher.core.errors import ProviderUnavailable
from batcher.execute.recovery import RecoveryStopped, recover_from_provider
from batcher.execute.runner import Runner, RunOptions
from batcher.ledger.store import Ledger
from tests.runner_fakes import FakeProvider, sheet_rows

ACCOUNT = "acct-fake"


class BusyProvider(FakeProvider):
    """A provider still processing `busy` order requests whatever it is asked."""

    def __init__(self, busy: int) -> None:
        super().__init__()
        self.busy = busy
        self.asked = 0

    def requests_in_progress(self, since: datetime) -> int:
        self.asked += 1
        return self.busy


class Heard:
    def __init__(self) -> None:
        self.messages: list[str] = []

    def message(self, text: str) -> None:
        self.messages.append(text)

    def advance(self, rows_settled: int) -> None:
        pass


def _runner(tmp_path: Path, provider: FakeProvider, heard: Heard, stop: threading.Event) -> Runner:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.ensure_batch("new", provider="fake", account_id=ACCOUNT,
                        source_path="new.csv", source_sha256="new")  # fmt: skip
    ledger.sync_rows("new", sheet_rows([("GBP", "10.00")]), retry_failed=False)
    return Runner(provider, ledger, "new", ACCOUNT, RunOptions(), listener=heard, stop=stop)


def _waiting(messages: list[str]) -> list[str]:
    return [m for m in messages if m.startswith("recovery: waiting up to")]


def test_a_stop_during_the_wait_ends_it_and_the_wait_was_announced(tmp_path: Path) -> None:
    stop, heard, provider = threading.Event(), Heard(), BusyProvider(2)
    runner = _runner(tmp_path, provider, heard, stop)
    pauses: list[float] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 3:
            stop.set()  # Ctrl-C during the third pause

    try:
        with pytest.raises(RecoveryStopped, match="nothing was sent"):
            recover_from_provider(runner, lookback=timedelta(days=30), sleep=pause)
        assert runner.ledger.needs_recovery("new"), "asked again by the next run"
    finally:
        runner.ledger.close()
    assert pauses == [2.0, 2.0, 2.0]
    assert _waiting(heard.messages) == [
        "recovery: waiting up to 60 s for the provider to finish 2 order request(s) before "
        "asking it about this batch (Ctrl-C stops the wait; nothing has been sent)"
    ]


def test_the_wait_is_refused_at_its_limit_and_announced_once(tmp_path: Path) -> None:
    heard, provider = Heard(), BusyProvider(1)
    runner = _runner(tmp_path, provider, heard, threading.Event())
    pauses: list[float] = []
    try:
        with pytest.raises(ProviderUnavailable, match="still processing 1 order request"):
            recover_from_provider(
                runner, lookback=timedelta(days=30), wait_seconds=6.0, sleep=pauses.append
            )
    finally:
        runner.ledger.close()
    assert pauses == [2.0, 2.0, 2.0]
    assert len(_waiting(heard.messages)) == 1


def test_no_wait_no_announcement(tmp_path: Path) -> None:
    heard, provider = Heard(), BusyProvider(0)
    runner = _runner(tmp_path, provider, heard, threading.Event())
    try:
        recover_from_provider(runner, lookback=timedelta(days=30), sleep=pytest.fail)
    finally:
        runner.ledger.close()
    assert _waiting(heard.messages) == []
