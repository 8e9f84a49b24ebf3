"""Polls on a thread of their own (`polls_in_background`, execute/runner.py `POLL_WORKERS`).

The provider's answer to a poll is fetched while the runner submits the next chunk;
the ledger stays the runner thread's alone, and every exactly-once rule holds.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import pytest

from batcher.providers.base import OrderItem, PollResult
from tests.runner_fakes import POLL_FAULTS, FakeProvider, Fault, sheet_rows
from tests.test_runner import World, assert_exactly_once

GBP9 = [("GBP", "10.00")] * 9  # three chunks of three


@dataclass
class BackgroundFake(FakeProvider):
    polls_in_background: bool = True
    #: a poll waits (real time, at most `hold_seconds`) until this is set
    release_poll: threading.Event | None = None
    hold_seconds: float = 2.0
    poll_threads: list[str] = field(default_factory=list)
    #: per poll: whether the poll was released (rather than timing out)
    released: list[bool] = field(default_factory=list)

    def poll(self, request_id: str, items: Sequence[OrderItem]) -> PollResult:
        self.poll_threads.append(threading.current_thread().name)
        if self.release_poll is not None:
            self.released.append(self.release_poll.wait(self.hold_seconds))
        return super().poll(request_id, items)


def background_world(tmp: Path, spec: Sequence[tuple[str, str]], **provider: object) -> World:
    fake = BackgroundFake(**provider)  # type: ignore[arg-type]
    return World(tmp / "state" / "ledger.sqlite", fake, sheet_rows(spec))


def test_a_poll_is_out_while_the_next_chunk_is_submitted(tmp_path: Path) -> None:
    """The first chunk's poll waits for the third chunk's submit: only a poll on a
    thread of its own lets that submit happen meanwhile."""
    w = background_world(tmp_path, GBP9, wallets={"GBP": Decimal(1000)}, polls_to_complete=1)
    fake = w.provider
    assert isinstance(fake, BackgroundFake)
    third_sent = threading.Event()
    fake.release_poll = third_sent

    def submitted(_key: str) -> None:
        w.clock.sleep(2.0)  # each submission takes 2 s: the first poll falls due meanwhile
        if len(fake.sent) == 3:
            third_sent.set()

    fake.on_submit = submitted
    stats = w.run()
    assert stats.stopped is None
    assert fake.released[0], "the first poll was held until the third chunk was submitted"
    assert all(name.startswith("batcher-poll") for name in fake.poll_threads)
    assert_exactly_once(w)


@pytest.mark.parametrize("fault", POLL_FAULTS)
def test_poll_faults_on_the_poll_thread_keep_exactly_once(tmp_path: Path, fault: Fault) -> None:
    w = background_world(
        tmp_path,
        GBP9,
        wallets={"GBP": Decimal(1000)},
        polls_to_complete=2,
        poll_faults=[fault, None, fault],
    )
    for _ in range(3):
        w.run()
        if set(w.states().values()) == {"succeeded"}:
            break
    assert_exactly_once(w)


def test_a_stop_with_a_poll_out_leaves_the_chunk_to_be_polled_again(tmp_path: Path) -> None:
    """Stopping drops the answer of a poll still out; the chunk stays accepted and the
    next run polls it again: nothing is ordered twice or lost."""
    w = background_world(tmp_path, GBP9, wallets={"GBP": Decimal(1000)}, polls_to_complete=1)
    fake = w.provider
    assert isinstance(fake, BackgroundFake)
    stop = threading.Event()
    fake.release_poll = threading.Event()  # never set: each poll is out for hold_seconds
    fake.hold_seconds = 0.3

    def submitted(_key: str) -> None:
        w.clock.sleep(2.0)
        if len(fake.sent) == 3:
            stop.set()  # the first chunk's poll is out by now

    fake.on_submit = submitted
    stats = w.run(stop=stop)
    assert stats.stopped == "interrupted"
    assert w.chunks("accepted"), "chunks accepted but not settled wait for the next run"
    assert len(fake.sent) == 3
    fake.release_poll = None
    fake.on_submit = None
    w.run()
    assert_exactly_once(w)
    assert len(fake.sent) == 3, "the next run polled, it did not submit again"


def test_ugiftme_polls_may_run_in_the_background() -> None:
    """The UGiftMe client opts in: its polls are reads through a thread-safe client."""
    from batcher.providers.ugiftme import UGiftMeProvider

    assert UGiftMeProvider.polls_in_background is True
