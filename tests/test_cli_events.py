"""The events a run gives the CLI's listener: each retry with its reason and delay
(never one after the last attempt), and each chunk sent."""

from __future__ import annotations

import random
from decimal import Decimal
from pathlib import Path
from typing import Any

from batcher.execute.events import Retry
from batcher.execute.runner import Runner, RunOptions
from batcher.ledger.store import Ledger
from tests.runner_fakes import FakeClock, FakeProvider, Fault, sheet_rows


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def message(self, text: str) -> None:
        self.events.append(("message", text))

    def advance(self, rows_settled: int) -> None:
        self.events.append(("advance", rows_settled))

    def submitted(self, rows: int) -> None:
        self.events.append(("submitted", rows))

    def retrying(self, retry: Retry) -> None:
        self.events.append(("retrying", retry))


def run(tmp_path: Path, provider: FakeProvider, options: RunOptions) -> Recorder:
    recorder = Recorder()
    clock = FakeClock()
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        ledger.ensure_batch("b", provider=provider.name, account_id="a", source_path="s.csv",
                            source_sha256="0" * 64)  # fmt: skip
        runner = Runner(provider, ledger, "b", "a", options, listener=recorder, clock=clock,
                        sleep=clock.sleep, rng=random.Random(3))  # fmt: skip
        runner.prepare(sheet_rows([("GBP", "10.00")] * 3))
        runner.execute()
    finally:
        ledger.close()
    return recorder


def test_every_retry_is_reported_with_its_reason_and_delay(tmp_path: Path) -> None:
    provider = FakeProvider(wallets={"GBP": Decimal(100)}, submit_faults=[Fault.DROP_REQUEST] * 9)
    recorder = run(tmp_path, provider, RunOptions(max_send_attempts=3))
    retries = [e for kind, e in recorder.events if kind == "retrying"]
    assert [r.attempt for r in retries] == [1, 2], "no retry line after the last attempt"
    assert all(r.max_attempts == 3 and r.reason and r.delay_seconds > 0 for r in retries)
    assert len({r.chunk_key for r in retries}) == 1
    assert not [e for kind, e in recorder.events if kind == "submitted"]


def test_sends_are_counted_once_per_chunk(tmp_path: Path) -> None:
    provider = FakeProvider(wallets={"GBP": Decimal(100)})
    recorder = run(tmp_path, provider, RunOptions(chunk_size=2))
    assert sorted(e for kind, e in recorder.events if kind == "submitted") == [1, 2]
    assert sum(e for kind, e in recorder.events if kind == "advance") == 3
