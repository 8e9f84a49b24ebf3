"""Polls one ahead (`Runner._poll_next_ahead`, `_PollAhead`): once everything is sent, the
next due poll's request runs on a thread of its own while the runner settles the answer
before it. One request at a time, each answer applied to its own chunk on the runner's
thread, only for a provider whose client allows it (`providers.base.polls_ahead`)."""

from __future__ import annotations

import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

from batcher.execute.runner import Runner, RunOptions
from batcher.providers.base import OrderItem, PollResult, polls_ahead
from batcher.providers.ugiftme import UGiftMeProvider
from tests.test_runner import World, assert_exactly_once, world

OPTIONS = RunOptions(initial_poll_delay=1.0, max_poll_delay=8.0)


class Watched:
    """Records on which thread each poll ran, how many ran at once, and what the
    runner's thread was doing when each began."""

    def __init__(self, w: World, *, allow: bool) -> None:
        self.clock = w.clock
        self.threads: list[str] = []
        self.most_at_once = 0
        self.began_while_settling = 0
        self._at_once = 0
        self._lock = threading.Lock()
        self._poll = w.provider.poll
        w.provider.poll = self.poll  # type: ignore[method-assign]
        if allow:
            w.provider.polls_ahead = True  # type: ignore[attr-defined]

    def poll(self, request_id: str, items: list[OrderItem]) -> PollResult:
        with self._lock:
            self._at_once += 1
            self.most_at_once = max(self.most_at_once, self._at_once)
            self.threads.append(threading.current_thread().name)
            if len(self.threads) == 1:
                self.clock.now += 1.0  # a slow first answer: every other poll is due after it
        try:
            return self._poll(request_id, items)
        finally:
            with self._lock:
                self._at_once -= 1


def settling_waits_for_the_next_poll(watched: Watched, monkeypatch: Any) -> None:
    """The runner's thread, settling the n-th answer, gives the next poll up to 0.2 s to
    begin, and counts in `watched.began_while_settling` the settles it began during."""
    real = Runner._settle_polled
    settled = 0

    def settle(self: Runner, chunk: Any, result: PollResult) -> None:
        nonlocal settled
        settled += 1
        for _ in range(200):
            if len(watched.threads) > settled:
                watched.began_while_settling += 1
                break
            threading.Event().wait(0.001)
        real(self, chunk, result)

    monkeypatch.setattr(Runner, "_settle_polled", settle)


def test_once_all_is_sent_the_next_poll_runs_while_the_answer_before_it_is_settled(
    tmp_path: Path, monkeypatch: Any
) -> None:
    w = world(tmp_path, [("GBP", "1.00")] * 8, submit_limit=1, wallets={"GBP": Decimal(100)},
              polls_to_complete=1)  # fmt: skip
    watched = Watched(w, allow=True)
    settling_waits_for_the_next_poll(watched, monkeypatch)
    stats = w.run(OPTIONS)
    assert_exactly_once(w)
    assert stats.polls == w.provider.polls == 8
    assert watched.most_at_once == 1  # one request at a time, as from one thread
    assert watched.threads.count("batcher-poll-ahead") >= 6, watched.threads
    assert watched.began_while_settling >= 6


def test_a_client_that_does_not_allow_it_is_polled_from_the_runners_thread(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """GIFQ's order board is state a poll changes: its polls stay on the runner's thread."""
    w = world(tmp_path, [("GBP", "1.00")] * 8, submit_limit=1, wallets={"GBP": Decimal(100)},
              polls_to_complete=1)  # fmt: skip
    watched = Watched(w, allow=False)
    w.run(OPTIONS)
    assert_exactly_once(w)
    assert set(watched.threads) == {threading.main_thread().name}


def test_polls_while_chunks_wait_to_be_sent_stay_on_the_runners_thread(tmp_path: Path) -> None:
    """Sends and polls share the client while chunks remain: no poll runs beside a send."""
    w = world(tmp_path, [("GBP", "1.00")] * 40, submit_limit=1, wallets={"GBP": Decimal(100)},
              polls_to_complete=1)  # fmt: skip
    order: list[str] = []

    def on_submit(_key: str) -> None:
        order.append("submit")
        w.clock.now += 0.5  # polls fall due while chunks remain

    w.provider.on_submit = on_submit
    watched = Watched(w, allow=True)
    real = watched.poll

    def poll(request_id: str, items: list[OrderItem]) -> PollResult:
        order.append(threading.current_thread().name)
        return real(request_id, items)

    w.provider.poll = poll  # type: ignore[method-assign]
    w.run(OPTIONS)
    assert_exactly_once(w)
    last_submit = len(order) - 1 - order[::-1].index("submit")
    before = set(order[:last_submit]) - {"submit"}
    assert before == {threading.main_thread().name}
    assert watched.most_at_once == 1


def test_a_run_stopped_with_a_poll_ahead_leaves_its_chunk_to_the_next_run(
    tmp_path: Path,
) -> None:
    """The poll ahead's answer is never applied after a stop: its chunk stays accepted,
    and the next run polls it again and settles it once."""
    w = world(tmp_path, [("GBP", "1.00")] * 8, submit_limit=1, wallets={"GBP": Decimal(100)},
              polls_to_complete=1)  # fmt: skip
    watched = Watched(w, allow=True)
    stop = threading.Event()
    real = watched.poll

    def poll(request_id: str, items: list[OrderItem]) -> PollResult:
        if threading.current_thread().name == "batcher-poll-ahead":
            stop.set()  # the run stops while this answer waits to be taken
        return real(request_id, items)

    w.provider.poll = poll  # type: ignore[method-assign]
    stats = w.run(OPTIONS, stop=stop)
    assert stats.stopped == "interrupted"
    assert w.chunks("accepted")  # the poll ahead's chunk among them, not settled
    w.run(OPTIONS)
    assert_exactly_once(w)


def test_ugiftme_allows_polls_ahead_and_the_protocol_default_is_no() -> None:
    assert polls_ahead(UGiftMeProvider.__new__(UGiftMeProvider))
    assert not polls_ahead(object())
