"""When the runner first polls an accepted order request (`Runner._schedule_first`,
`_retime_first_polls`): after the provider has finished it, not before (a poll that
finds it pending is a wasted request, and its back-off lands late), and not much
later either (a late last poll is wall time at the end of the run).

The fake provider here finishes requests in time, not in polls: each at the soonest
`base` seconds after it was accepted and `service` seconds after the one before (one
worker; a backlog grows when requests come faster than `service`).
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

from batcher.execute.runner import RunOptions
from batcher.providers.base import OrderItem, PollResult, SubmitResult
from tests.test_runner import World, assert_exactly_once, world


class TimedProvider:
    """Wraps the fake provider of `w` so its requests finish on the clock."""

    def __init__(
        self, w: World, *, base: float, service: float, submit_cost: float, poll_cost: float
    ) -> None:
        self.clock = w.clock
        self.base, self.service = base, service
        self.submit_cost, self.poll_cost = submit_cost, poll_cost
        self.accepted_at: dict[str, float] = {}
        self.done_at: dict[str, float] = {}
        self.pending_polls = 0
        #: per request: seconds from its acceptance to its first poll
        self.first_poll_after: dict[str, float] = {}
        self._last = 0.0
        self._submit, self._poll = w.provider.submit, w.provider.poll
        w.provider.submit = self.submit  # type: ignore[method-assign]
        w.provider.poll = self.poll  # type: ignore[method-assign]

    def submit(self, key: str, payload: bytes, items: Any) -> SubmitResult:
        self.clock.now += self.submit_cost
        result = self._submit(key, payload, items)
        rid = result.request_id
        if result.kind == "accepted" and rid and rid not in self.done_at:
            self._last = max(self.clock.now + self.base, self._last + self.service)
            self.accepted_at[rid], self.done_at[rid] = self.clock.now, self._last
        return result

    def poll(self, request_id: str, items: list[OrderItem]) -> PollResult:
        now = self.clock.now
        self.first_poll_after.setdefault(request_id, now - self.accepted_at[request_id])
        self.clock.now += self.poll_cost
        if now < self.done_at[request_id]:
            self.pending_polls += 1
            return PollResult(kind="pending", provider_status="processing")
        return self._poll(request_id, items)


def timed_world(tmp_path: Path, chunks: int, **timing: float) -> tuple[World, TimedProvider]:
    w = world(tmp_path, [("GBP", "1.00")] * chunks, submit_limit=1,
              wallets={"GBP": Decimal(1000)}, polls_to_complete=1)  # fmt: skip
    return w, TimedProvider(w, **timing)


OPTIONS = RunOptions(initial_poll_delay=1.0, max_poll_delay=30.0)


def test_a_provider_that_falls_behind_is_not_polled_before_it_is_done(tmp_path: Path) -> None:
    """Sixty requests sent 10 ms apart, finished 25 ms apart: the 60th takes 1.9 s where
    the 1st took 1.0. Every chunk is sent before any first poll falls due, so first
    polls timed with the delay known at sending all came early (main: most of them);
    polls that find a request pending move the first polls still to come."""
    w, timed = timed_world(tmp_path, 60, base=1.02, service=0.025, submit_cost=0.01,
                           poll_cost=0.002)  # fmt: skip
    w.run(OPTIONS)
    assert_exactly_once(w)
    assert timed.pending_polls <= 4, timed.pending_polls
    # and the first polls that find their request done come soon after it was done
    late = [timed.accepted_at[r] + after - timed.done_at[r]
            for r, after in timed.first_poll_after.items()]  # fmt: skip
    done_late = [d for d in late if d >= 0]
    assert sum(done_late) / len(done_late) < 0.4, done_late


def test_a_steady_provider_is_polled_once_per_request_soon_after_it_is_done(
    tmp_path: Path,
) -> None:
    """A provider that takes 1.05 s for every request, whatever the load (several
    workers): the first poll of one request that comes before it is done teaches the
    run; after it, every first poll finds its request done, and none waits much longer
    than needed."""
    w, timed = timed_world(tmp_path, 60, base=1.05, service=0.0, submit_cost=0.02,
                           poll_cost=0.002)  # fmt: skip
    w.run(OPTIONS)
    assert_exactly_once(w)
    assert timed.pending_polls <= 1, timed.pending_polls
    later = list(timed.first_poll_after.values())[20:]
    assert max(later) < 1.05 * 1.6, later


def test_a_pending_read_from_the_clients_memory_teaches_nothing(tmp_path: Path) -> None:
    """GIFQ's order board answers "pending" from what the client already holds: that
    costs no request and says nothing of the provider's pace, so it moves no first poll."""
    w = world(tmp_path, [("GBP", "1.00")] * 6, submit_limit=1, wallets={"GBP": Decimal(100)},
              polls_to_complete=2, pending_from_cache=True)  # fmt: skip
    sent_at: dict[str, float] = {}
    first_after: dict[str, float] = {}
    submit, poll = w.provider.submit, w.provider.poll

    def timed_submit(key: str, payload: bytes, items: Any) -> SubmitResult:
        result = submit(key, payload, items)
        sent_at[result.request_id or ""] = w.clock.now
        return result

    def timed_poll(request_id: str, items: list[OrderItem]) -> PollResult:
        first_after.setdefault(request_id, w.clock.now - sent_at[request_id])
        w.clock.now += 0.01
        return poll(request_id, items)

    w.provider.submit = timed_submit  # type: ignore[method-assign]
    w.provider.poll = timed_poll  # type: ignore[method-assign]
    w.run(OPTIONS)
    assert_exactly_once(w)
    assert len(first_after) == 6
    assert max(first_after.values()) <= 1.2 + 6 * 0.01, first_after
