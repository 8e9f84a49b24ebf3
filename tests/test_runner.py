"""The runner's exactly-once state machine, driven without HTTP.

A real SQLite ledger in a temporary directory, an in-memory provider that keeps
its own books (tests/runner_fakes.py) and a fake clock, so every scenario is
deterministic and takes milliseconds. Each "run" opens the ledger afresh, as a
new process would; a `ProcessDied` escaping a run is a crash.
"""

from __future__ import annotations

import contextlib
import random
import tempfile
import threading
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batcher.execute.plan import chunk_key
from batcher.execute.recovery import before_planning
from batcher.execute.runner import Runner, RunOptions, RunStats
from batcher.ledger.store import ChunkRecord, Ledger, RowRecord, SheetRow
from batcher.providers.base import Provider
from tests.runner_fakes import (
    POLL_FAULTS,
    SUBMIT_FAULTS,
    FakeClock,
    FakeProvider,
    Fault,
    ProcessDied,
    sheet_rows,
)

BATCH = "gifts-2026-12"
ACCOUNT = "acct-fake"
OPTIONS = RunOptions(initial_poll_delay=1.0, max_poll_delay=8.0)


@dataclass
class World:
    """One batch, one provider, one clock, and as many runs as a test needs."""

    path: Path
    provider: FakeProvider
    rows: list[SheetRow]
    clock: FakeClock = field(default_factory=FakeClock)

    @contextlib.contextmanager
    def runner(
        self, options: RunOptions = OPTIONS, *, stop: threading.Event | None = None
    ) -> Iterator[tuple[Ledger, Runner]]:
        """A runner of the batch on a ledger connection of its own, closed after."""
        ledger = Ledger(self.path)
        try:
            ledger.ensure_batch(
                BATCH,
                provider=self.provider.name,
                account_id=ACCOUNT,
                source_path="gifts.csv",
                source_sha256="0" * 64,
            )
            yield (
                ledger,
                Runner(
                    self.provider,
                    ledger,
                    BATCH,
                    ACCOUNT,
                    options,
                    stop=stop,
                    clock=self.clock,
                    sleep=self.clock.sleep,
                    rng=random.Random(7),
                ),
            )
        finally:
            ledger.close()

    def run(
        self, options: RunOptions = OPTIONS, *, stop: threading.Event | None = None
    ) -> RunStats:
        with self.runner(options, stop=stop) as (_ledger, runner):
            runner.prepare(
                self.rows,
                recovery=lambda r: before_planning(
                    r, lookback=timedelta(days=30), sleep=self.clock.sleep
                ),
            )
            return runner.execute()

    def crash_run(self, options: RunOptions = OPTIONS) -> None:
        with pytest.raises(ProcessDied):
            self.run(options)

    def ledger_rows(self) -> dict[str, RowRecord]:
        ledger = Ledger(self.path)
        try:
            return {r.row_key: r for r in ledger.rows(BATCH)}
        finally:
            ledger.close()

    def chunks(self, *states: str) -> list[ChunkRecord]:
        ledger = Ledger(self.path)
        try:
            return ledger.chunks(BATCH, states)
        finally:
            ledger.close()

    def states(self) -> dict[str, str]:
        return {k: r.state for k, r in self.ledger_rows().items()}


def ahead_commit_done() -> None:
    """Wait for the runner's commit on its other thread (`_AheadCommit`), if one runs:
    what another connection sees during a request is then as it will stay."""
    for thread in threading.enumerate():
        if thread.name == "batcher-mark-ahead":
            thread.join()


def world(tmp: Path, spec: Sequence[tuple[str, str]], **provider: Any) -> World:
    fake = FakeProvider(**provider)
    return World(tmp / "state" / "ledger.sqlite", fake, sheet_rows(spec))


def assert_exactly_once(w: World) -> None:
    """Both ledgers agree: every row succeeded once, and the provider holds one order each."""
    rows = w.ledger_rows()
    assert {k: r.state for k, r in rows.items()} == dict.fromkeys(rows, "succeeded")
    assert w.provider.orders_per_row() == dict.fromkeys(rows, 1)
    assert {r.order_id for r in rows.values()} == {o.order_id for o in w.provider.created}
    assert w.provider.key_conflicts == []
    assert all(len(p) == 1 for p in w.provider.payloads_by_key().values())


GBP4 = [("GBP", "10.00")] * 4  # identical rows: distinct keys by occurrence


def test_the_fake_speaks_the_provider_protocol() -> None:
    assert isinstance(FakeProvider(), Provider)


@pytest.mark.parametrize("polls_to_complete", [0, 1, 3])
def test_a_clean_run_orders_every_row_once(tmp_path: Path, polls_to_complete: int) -> None:
    w = world(
        tmp_path,
        [*GBP4, ("EUR", "5")],
        wallets={"GBP": Decimal(100), "EUR": Decimal(100)},
        polls_to_complete=polls_to_complete,
    )
    stats = w.run()
    assert stats.stopped is None
    assert stats.submits == 3  # EUR x1, GBP 3+1
    assert_exactly_once(w)
    assert w.provider.wallets == {"GBP": Decimal(60), "EUR": Decimal(95)}
    # A rerun finds nothing to do and sends nothing.
    w.run()
    assert len(w.provider.sent) == 3


# ---------------------------------------------------------------------- crashes


@pytest.mark.parametrize("fault", [Fault.DIE_BEFORE, Fault.DIE_AFTER])
@pytest.mark.parametrize("lookup_finds", [False, True])
def test_a_crash_while_sending_is_resolved_with_the_same_key_and_bytes(
    tmp_path: Path, fault: Fault, lookup_finds: bool
) -> None:
    w = world(
        tmp_path,
        GBP4,
        wallets={"GBP": Decimal(100)},
        submit_faults=[None, fault],
        lookup_finds=lookup_finds,
    )
    w.crash_run()
    dead_key, dead_payload = w.provider.sent[-1]
    (stuck,) = w.chunks("sending")
    assert stuck.chunk_key == dead_key and stuck.payload == dead_payload
    assert {w.states()[k] for k in stuck.row_keys} == {"sending"}

    w.run()
    assert_exactly_once(w)
    resent = [p for k, p in w.provider.sent if k == dead_key]
    if fault is Fault.DIE_AFTER and lookup_finds:
        assert resent == [dead_payload]  # found by key: no need to send again
    else:
        assert resent == [dead_payload, dead_payload]
    assert len(w.provider.requests) == 2  # the resend created nothing new
    assert {w.ledger_rows()[k].attempt for k in stuck.row_keys} == {1}


def test_answers_lost_in_flight_are_retried_within_the_run(tmp_path: Path) -> None:
    w = world(
        tmp_path,
        GBP4,
        wallets={"GBP": Decimal(100)},
        submit_faults=[Fault.DROP_RESPONSE, Fault.DROP_REQUEST, Fault.DROP_RESPONSE],
    )
    stats = w.run()
    assert stats.stopped is None and stats.unknown_outcomes == 3
    assert_exactly_once(w)
    assert w.clock.slept, "retries back off on the injected clock"


def test_a_provider_that_never_answers_stops_the_run_with_the_chunk_unknown(
    tmp_path: Path,
) -> None:
    w = world(
        tmp_path,
        GBP4[:2],
        wallets={"GBP": Decimal(100)},
        submit_faults=[Fault.DROP_RESPONSE] * 3,
    )
    stats = w.run(RunOptions(max_send_attempts=3))
    assert stats.stopped == "provider_unavailable"
    (chunk,) = w.chunks("unknown")
    assert set(w.states().values()) == {"unknown"}
    w.run()
    assert_exactly_once(w)
    assert {k for k, _ in w.provider.sent} == {chunk.chunk_key}


# ---------------------------------------------------------------------- funds


def test_insufficient_funds_blocks_one_currency_while_the_other_goes_on(tmp_path: Path) -> None:
    # AUD sorts first, so its 402 comes before any EUR chunk is sent.
    spec = [("AUD", "10")] * 4 + [("EUR", "10")] * 4
    w = world(tmp_path, spec, submit_limit=2, wallets={"AUD": Decimal(15), "EUR": Decimal(100)})
    stats = w.run()
    assert list(stats.blocked_currencies) == ["AUD"]
    assert "needed 20" in stats.blocked_currencies["AUD"]
    rows = w.ledger_rows()
    aud = [r for r in rows.values() if r.currency == "AUD"]
    eur = [r for r in rows.values() if r.currency == "EUR"]
    assert {r.state for r in eur} == {"succeeded"}
    assert {(r.state, r.error_code) for r in aud} == {("pending", "insufficient_funds")}
    assert w.provider.orders_per_row().keys() == {r.row_key for r in eur}
    sent_aud = {k for k, p in w.provider.sent if b'"AUD"' in p}
    assert len(sent_aud) == 1, "the second AUD chunk is not sent after the 402"
    assert not w.chunks("planned"), "unsent AUD plans are discarded, not left behind"

    w.provider.wallets["AUD"] = Decimal(100)  # the finance team tops up
    w.run()
    assert_exactly_once(w)
    attempts = sorted(r.attempt for r in w.ledger_rows().values() if r.currency == "AUD")
    assert attempts == [1, 1, 2, 2]  # the 402'd chunk's rows were released as attempt 2


# ---------------------------------------------------------------------- polling


@pytest.mark.parametrize("lookup_finds", [False, True])
def test_polls_that_keep_failing_hand_the_chunk_back_and_a_later_run_settles_it(
    tmp_path: Path, lookup_finds: bool
) -> None:
    options = RunOptions(initial_poll_delay=1.0, max_poll_delay=8.0, max_poll_failures=4)
    w = world(
        tmp_path,
        GBP4[:3],
        wallets={"GBP": Decimal(100)},
        polls_to_complete=2,
        poll_faults=[Fault.DROP_REQUEST] * 4,
        lookup_finds=lookup_finds,
    )
    stats = w.run(options)
    assert stats.polls == 4 and stats.stopped is None
    (chunk,) = w.chunks("unknown")
    assert "polling failed" in (chunk.error_message or "")
    assert set(w.states().values()) == {"unknown"}
    assert not w.provider.created

    w.run(options)
    assert_exactly_once(w)
    assert len(w.provider.requests) == 1, "the same order request, never a second one"
    sends = [k for k, _ in w.provider.sent]
    assert sends == [chunk.chunk_key] * (1 if lookup_finds else 2)


def assert_slept_about(slept: Sequence[float], expected: Sequence[float]) -> None:
    """The runner slept these delays, each within its +-10 % jitter."""
    assert len(slept) == len(expected), slept
    for took, base in zip(slept, expected, strict=True):
        assert 0.9 * base <= took <= 1.1 * base, (slept, expected)


def _recording_calls(
    tmp_path: Path, *, chunks: int, submit_seconds: float
) -> tuple[World, list[str]]:
    """A world of `chunks` one-row chunks whose submits take `submit_seconds` on its
    clock, and the provider calls it gets, in order ("submit" or "poll")."""
    calls: list[str] = []
    w = world(tmp_path, [("GBP", "1.00")] * chunks, submit_limit=1,
              wallets={"GBP": Decimal(1000)}, polls_to_complete=1)  # fmt: skip

    def on_submit(_key: str) -> None:
        calls.append("submit")
        w.clock.now += submit_seconds

    w.provider.on_submit = on_submit
    real_poll = w.provider.poll

    def poll(request_id: str, items: Any) -> Any:
        calls.append("poll")
        return real_poll(request_id, items)

    w.provider.poll = poll  # type: ignore[method-assign]
    return w, calls


def test_while_chunks_wait_to_be_sent_polls_take_a_small_share_of_the_requests(
    tmp_path: Path,
) -> None:
    """Submits come first: while chunks remain, polls that fall due take at most
    POLLS_PER_SUBMIT requests per submit, so the submit phase ends sooner and the
    polls left over fill the time the last chunks take at the provider (the tail)."""
    from batcher.execute.runner import POLLS_PER_SUBMIT

    # each submit takes half a second: polls fall due meanwhile
    w, calls = _recording_calls(tmp_path, chunks=60, submit_seconds=0.5)
    w.run(RunOptions(initial_poll_delay=1.0, max_poll_delay=8.0))
    assert_exactly_once(w)
    last_submit = len(calls) - 1 - calls[::-1].index("submit")
    polls_before = calls[:last_submit].count("poll")
    assert 0 < polls_before <= 60 * POLLS_PER_SUBMIT
    assert polls_before < 30  # the old rule (one poll per submit) polled 53 times


def test_sends_that_take_milliseconds_all_go_before_the_polls_that_fall_due(
    tmp_path: Path,
) -> None:
    """A poll that falls due while chunks remain to be sent waits for them, up to
    POLL_WAITS_FOR_SENDS: sends of a few milliseconds start the provider's work on
    every chunk first, and no send waits behind a poll of a busy provider."""
    from batcher.execute.runner import POLL_WAITS_FOR_SENDS

    # 40 sends: 0.8 s, less than a poll waits for them
    w, calls = _recording_calls(tmp_path, chunks=40, submit_seconds=0.02)
    w.run(RunOptions(initial_poll_delay=0.2, max_poll_delay=8.0))
    assert_exactly_once(w)
    assert POLL_WAITS_FOR_SENDS > 40 * 0.02 - 0.2  # the sends end before a poll may go
    assert calls[:40] == ["submit"] * 40, calls[:45]
    assert calls.count("poll") == 40


def test_polls_back_off_on_the_clock_up_to_the_cap(tmp_path: Path) -> None:
    w = world(tmp_path, GBP4[:1], wallets={"GBP": Decimal(100)}, polls_to_complete=6)
    w.run(RunOptions(initial_poll_delay=1.0, max_poll_delay=4.0))
    assert_exactly_once(w)
    assert w.provider.polls == 6
    # 1, 2, 4, 4, 4, 4 with +-10 % jitter
    expected = [1, 2, 4, 4, 4, 4]
    assert_slept_about(w.clock.slept, expected)


@pytest.mark.parametrize("from_cache", [False, True])
def test_polls_answered_from_the_clients_memory_do_not_back_off(
    tmp_path: Path, from_cache: bool
) -> None:
    """A "pending" the provider client read from what it already held (GIFQ's order
    board) cost no request: the next poll keeps its delay instead of doubling it."""
    w = world(tmp_path, GBP4[:1], wallets={"GBP": Decimal(100)}, polls_to_complete=4,
              pending_from_cache=from_cache)  # fmt: skip
    w.run(RunOptions(initial_poll_delay=1.0, max_poll_delay=8.0))
    assert_exactly_once(w)
    expected = [1, 1, 1, 1] if from_cache else [1, 2, 4, 8]
    assert_slept_about(w.clock.slept, expected)


def test_a_pending_that_says_when_to_ask_again_is_polled_then(tmp_path: Path) -> None:
    """GIFQ's board, once nothing is being created, says when a list read may show more:
    the poll comes then, however long the back-off would have been."""
    w = world(tmp_path, GBP4[:1], wallets={"GBP": Decimal(100)}, polls_to_complete=4,
              pending_ask_again_in=0.25)  # fmt: skip
    w.run(RunOptions(initial_poll_delay=1.0, max_poll_delay=8.0))
    assert_exactly_once(w)
    expected = [1, 0.25, 0.25, 0.25]
    assert_slept_about(w.clock.slept, expected)


@pytest.mark.parametrize("news", [False, True])
def test_a_poll_with_news_for_the_others_brings_their_polls_forward(
    tmp_path: Path, news: bool
) -> None:
    """GIFQ's board, read in a run's tail, answers every order on the page: the other
    chunks' polls come at once instead of at their own (jittered) times."""
    w = world(tmp_path, GBP4[:2], submit_limit=1, wallets={"GBP": Decimal(100)},
              polls_to_complete=2, completed_news_for_others=news)  # fmt: skip
    w.run(RunOptions(initial_poll_delay=1.0, max_poll_delay=8.0))
    assert_exactly_once(w)
    assert len(w.clock.slept) == (3 if news else 4)  # the last chunk waits no more with news


# ---------------------------------------------------------------------- incomplete answers


def incomplete_world(tmp_path: Path, polls_to_complete: int) -> World:
    """Two rows whose submit (0 polls) or first poll answers for only one of them."""
    faults = {"submit_faults" if polls_to_complete == 0 else "poll_faults": [Fault.INCOMPLETE]}
    return world(
        tmp_path,
        GBP4[:2],
        wallets={"GBP": Decimal(100)},
        polls_to_complete=polls_to_complete,
        **faults,
    )


@pytest.mark.parametrize("polls_to_complete", [0, 1])
def test_an_incomplete_answer_settles_only_the_certain_rows(
    tmp_path: Path, polls_to_complete: int
) -> None:
    w = incomplete_world(tmp_path, polls_to_complete)
    w.run()
    states = sorted(w.states().values())
    assert states == ["succeeded", "unknown"], "certain rows settle; the rest are never guessed"
    unknown = next(r for r in w.ledger_rows().values() if r.state == "unknown")
    assert unknown.order_id is None
    assert w.provider.orders_per_row()[unknown.row_key] == 1  # it exists at the provider


@pytest.mark.parametrize("polls_to_complete", [0, 1])
def test_an_incomplete_answer_is_resolved_by_resending_the_same_key_and_bytes(
    tmp_path: Path, polls_to_complete: int
) -> None:
    w = incomplete_world(tmp_path, polls_to_complete)
    w.run()
    w.run()
    assert_exactly_once(w)
    # Resolved by a lookup or a resend, but only ever under the one key with the one body.
    assert len(set(w.provider.sent)) == 1
    (key,) = {k for k, _ in w.provider.sent}
    assert key == w.ledger_rows()[w.rows[0].row_key].chunk_key


# ---------------------------------------------------------------------- rejections


def test_a_retryable_rejection_is_retried_next_run_under_a_new_key(tmp_path: Path) -> None:
    w = world(tmp_path, GBP4[:2], wallets={"GBP": Decimal(100)}, submit_faults=[Fault.REJECT])
    w.run()
    rows = w.ledger_rows()
    assert {(r.state, r.failure_kind, r.error_code) for r in rows.values()} == {
        ("failed", "retryable", "out_of_stock")
    }
    assert not w.provider.created
    ((first_key, _),) = w.provider.sent
    assert first_key == chunk_key("fake", ACCOUNT, BATCH, rows, 1)

    w.run()
    assert_exactly_once(w)
    rows = w.ledger_rows()
    assert {r.attempt for r in rows.values()} == {2}
    second_key = chunk_key("fake", ACCOUNT, BATCH, rows, 2)
    assert second_key != first_key
    assert [k for k, _ in w.provider.sent] == [first_key, second_key]


def test_a_permanent_rejection_waits_for_retry_failed(tmp_path: Path) -> None:
    w = world(
        tmp_path,
        GBP4[:2],
        wallets={"GBP": Decimal(100)},
        submit_faults=[Fault.REJECT],
        reject_code="invalid_product",
        reject_message="product is not orderable",
    )
    w.run()
    w.run()
    assert set(w.states().values()) == {"failed"}
    assert len(w.provider.sent) == 1, "a permanent failure is not retried on its own"

    w.run(RunOptions(retry_failed=True))
    assert_exactly_once(w)
    assert {r.attempt for r in w.ledger_rows().values()} == {2}
    assert len({k for k, _ in w.provider.sent}) == 2


# ---------------------------------------------------------------------- stopping


def test_the_deadline_stops_sending_and_a_rerun_finishes(tmp_path: Path) -> None:
    w = world(tmp_path, [("GBP", "1")] * 10, submit_limit=1, wallets={"GBP": Decimal(100)})
    w.provider.on_submit = lambda _key: w.clock.sleep(2.0)  # each submission takes 2 s
    stats = w.run(RunOptions(deadline_seconds=5.0))
    assert stats.stopped == "deadline"
    assert stats.submits == 3  # sent at t=0, 2, 4; at t=6 the deadline has passed
    assert not w.chunks("sending", "unknown"), "nothing is left half-sent"
    assert sorted(set(w.states().values())) == ["planned", "succeeded"]

    w.run()
    assert_exactly_once(w)
    assert len(w.provider.sent) == 10


def test_the_stop_flag_stops_sending(tmp_path: Path) -> None:
    stop = threading.Event()
    w = world(tmp_path, [("GBP", "1")] * 6, submit_limit=1, wallets={"GBP": Decimal(100)})
    w.provider.on_submit = lambda _key: stop.set() if len(w.provider.sent) == 2 else None
    stats = w.run(stop=stop)
    assert stats.stopped == "interrupted"
    assert len(w.provider.sent) == 2
    assert sorted(w.states().values()).count("succeeded") == 2
    # The chunks committed `sending` with the first ones but never sent are planned
    # again, as they were: nothing in flight, nothing to ask the provider about.
    assert not w.chunks("sending", "unknown"), "nothing is left half-sent"
    unsent = w.chunks("planned")
    assert len(unsent) == 4
    assert {(c.send_count, c.first_sent_at, c.last_sent_at) for c in unsent} == {(0, None, None)}

    w.run()
    assert_exactly_once(w)
    assert w.provider.lookups == 0
    assert len(w.provider.sent) == 6


def test_a_crash_leaves_a_groups_unsent_chunks_in_flight_and_a_rerun_resolves_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed process never plans its group's unsent chunks again: they stay
    `sending`, the next run asks the provider about them and sends each under its
    key, with the bytes it committed."""
    w = world(tmp_path, [("GBP", "1")] * 6, submit_limit=1, wallets={"GBP": Decimal(100)},
              submit_faults=[None, None, None, Fault.DIE_BEFORE])  # fmt: skip
    with monkeypatch.context() as killed:
        killed.setattr(Runner, "_unmark_unsent", lambda self: None)  # no cleanup when killed
        w.crash_run()
    stuck = w.chunks("sending")
    # The third group (1, 2, then 3): the dead and the never sent; and the second
    # group's last chunk, whose answer was in memory (the third group's commit ran
    # while it was being sent).
    assert len(stuck) == 4
    committed = {c.chunk_key: c.payload for c in w.chunks("sending", "succeeded")}

    w.run()
    assert_exactly_once(w)
    assert w.provider.lookups == 4
    assert dict(w.provider.sent) == committed  # same keys, same bytes
    assert len(w.provider.requests) == 6


# ---------------------------------------------------------------------- any faults at all

_SUBMIT = st.sampled_from([None, *SUBMIT_FAULTS])
_POLL = st.sampled_from([None, *POLL_FAULTS])


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    submit_faults=st.lists(_SUBMIT, max_size=12),
    poll_faults=st.lists(_POLL, max_size=8),
    polls_to_complete=st.integers(0, 2),
    lookup_finds=st.booleans(),
    currencies=st.lists(st.sampled_from(["EUR", "GBP"]), min_size=1, max_size=7),
)
def test_whatever_the_faults_every_row_ends_with_exactly_one_order(
    submit_faults: list[Fault | None],
    poll_faults: list[Fault | None],
    polls_to_complete: int,
    lookup_finds: bool,
    currencies: list[str],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        w = world(
            Path(tmp),
            [(c, "10") for c in currencies],
            wallets={"EUR": Decimal(1000), "GBP": Decimal(1000)},
            submit_faults=list(submit_faults),
            poll_faults=list(poll_faults),
            polls_to_complete=polls_to_complete,
            lookup_finds=lookup_finds,
        )
        options = RunOptions(max_send_attempts=3, max_poll_failures=2)
        # Every fault is consumed by a call, and every run makes at least one call
        # until the batch is done, so this many runs always suffice.
        for _ in range(len(submit_faults) + len(poll_faults) + 2):
            if set(w.states().values()) == {"succeeded"}:
                break
            with contextlib.suppress(ProcessDied):
                w.run(options)
        assert_exactly_once(w)


# ---------------------------------------------------------------------------
# Between runs: a lost ledger, an edited sheet, claims that outlive the process


def test_a_lost_ledger_and_an_added_row_order_nothing_twice(tmp_path: Path) -> None:
    """Chunks are slices of the sorted pending rows: one added row re-slices them all
    under new keys, so only recovery from the provider stops a second order."""
    every = sheet_rows([("GBP", f"{10 + i}.00") for i in range(10)])
    w = world(tmp_path, [], lookup_finds=False, wallets={"GBP": Decimal(1000)})
    w.rows = every[1:]
    w.run()
    assert_exactly_once(w)
    w.path.unlink()
    for suffix in ("-wal", "-shm"):
        Path(str(w.path) + suffix).unlink(missing_ok=True)
    w.rows = every  # one row added; the chunks of three would all shift
    w.run()
    assert_exactly_once(w)
    assert len(w.provider.created) == 10


def test_a_lookup_is_told_which_orders_other_chunks_already_hold(tmp_path: Path) -> None:
    w = world(
        tmp_path, GBP4 * 2, polls_to_complete=3, wallets={"GBP": Decimal(1000)},
        submit_faults=[None, Fault.DIE_AFTER],
    )  # fmt: skip
    w.crash_run()  # the first chunk is accepted; the second died in flight
    (accepted,) = w.chunks("accepted")
    w.run()
    assert w.provider.claimed_seen and accepted.request_id in w.provider.claimed_seen[0]
    assert_exactly_once(w)


def test_paged_planning_orders_every_row_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pending rows planned a few at a time (pages of 7, items kept for the first 5
    rows only, the rest read back from the ledger) are each ordered exactly once,
    identical rows and two currencies included."""
    import batcher.execute.runner as runner_module

    monkeypatch.setattr(runner_module, "PLAN_PAGE_ROWS", 7)
    monkeypatch.setattr(runner_module, "KEEP_ITEMS_ROWS", 5)
    spec = [("GBP", "10.00")] * 12 + [("EUR", f"{n}.00") for n in range(5, 25)]
    w = world(tmp_path, spec, wallets={"GBP": Decimal(1000), "EUR": Decimal(1000)})
    stats = w.run(RunOptions(chunk_size=3, initial_poll_delay=1.0, max_poll_delay=8.0))
    assert stats.stopped is None
    assert_exactly_once(w)
    assert len(w.rows) == 32
    done = w.chunks("succeeded")
    assert all(len(c.row_keys) <= 3 for c in done)
    assert sum(len(c.row_keys) for c in done) == 32


@pytest.mark.parametrize("page_rows", [50_000, 7])
def test_the_funds_rule_sees_every_row_to_send_and_large_batches_are_decoded_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, page_rows: int
) -> None:
    """The funds rule is told each row about to be sent (sheet row, cost, paying wallet)
    the same way whether the pending rows fit one planning page (read whole, kept for
    planning) or not (only the columns it needs): and in neither case is a pending row
    decoded whole twice (at a million rows, a second full read costs minutes)."""
    import dataclasses

    import batcher.execute.runner as runner_module
    from batcher.execute.funds import Need
    from batcher.ledger.queries import LedgerQueries

    monkeypatch.setattr(runner_module, "PLAN_PAGE_ROWS", page_rows)
    decoded: Counter[str] = Counter()
    whole = LedgerQueries.rows_by_key

    def counted(self: LedgerQueries, batch: str, keys: Iterable[str]) -> dict[str, RowRecord]:
        found = whole(self, batch, keys)
        decoded.update(list(found))
        return found

    monkeypatch.setattr(LedgerQueries, "rows_by_key", counted)
    spec = [("GBP", "10.00")] * 6 + [("EUR", f"{n}.00") for n in range(5, 15)]
    w = world(tmp_path, spec, wallets={"GBP": Decimal(1000), "EUR": Decimal(1000)})
    paid_in_gbp = {r.row_key for r in w.rows[-3:]}
    w.rows = [
        dataclasses.replace(r, est_cost=Decimal("0"), fields={**r.fields, "payment_currency": "GBP"})
        if r.row_key in paid_in_gbp else r
        for r in w.rows
    ]  # fmt: skip
    seen: list[Need] = []

    def hold(needs: Iterable[Need]) -> Collection[str]:
        seen.extend(needs)
        return {seen[0].row_key}

    with w.runner() as (_ledger, runner):
        summary = runner.prepare(w.rows, hold=hold)
    assert [(n.source_row, n.row_key, n.currency, n.cost, n.paying) for n in seen] == [
        (r.source_row, r.row_key, r.currency, r.face_value,
         "GBP" if r.row_key in paid_in_gbp else r.currency)
        for r in w.rows
    ]  # fmt: skip
    assert summary.rows_to_send == len(w.rows) - 1
    assert max(decoded.values(), default=0) <= 1, f"pending rows decoded whole twice: {decoded}"


def test_a_plan_that_fits_one_page_reads_only_the_columns_it_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planning a batch of one page reads the pending rows once, as `PlanningRow`s (no
    whole `RowRecord`: 20,000 of them cost ~0.45 s CPU before the first request, the
    light read ~0.15 s), and the chunks it saves carry the same bytes and items as the
    same rows planned from whole records."""
    import dataclasses

    from batcher.ledger.queries import LedgerQueries

    spec = [("GBP", "10.00")] * 5 + [("EUR", f"{n}.50") for n in range(5, 12)]
    rows = sheet_rows(spec)
    rows[1] = dataclasses.replace(rows[1], est_cost=Decimal("9.41"),
                                  fields={**rows[1].fields, "message": "Joyeux Noël \u2028\"x\""})  # fmt: skip

    def plan(where: Path) -> list[tuple[str, bytes, list[Any]]]:
        w = World(where / "ledger.sqlite", FakeProvider(wallets={"GBP": Decimal(1000),
                  "EUR": Decimal(1000)}), rows)  # fmt: skip
        with w.runner(RunOptions(chunk_size=4)) as (ledger, runner):
            runner.prepare(w.rows, hold=lambda needs: [n for n in needs if False])
            chunks = ledger.chunks(BATCH, ["planned"])
            return [(c.chunk_key, c.payload, runner._planned_items[c.chunk_key]) for c in chunks]

    whole = LedgerQueries.rows_by_key
    calls: list[int] = []

    def counted(self: LedgerQueries, batch: str, keys: Iterable[str]) -> dict[str, RowRecord]:
        found = whole(self, batch, keys)
        calls.append(len(found))
        return found

    monkeypatch.setattr(LedgerQueries, "rows_by_key", counted)
    light = plan(tmp_path / "light")
    assert calls == [], "pending rows were decoded whole for a one-page plan"
    # The same rows planned from whole records (what planning read before)
    from batcher.ledger.planning import LedgerPlanning

    def as_records(
        self: LedgerPlanning, batch: str, keys: Sequence[str], page: int = 5_000
    ) -> Iterator[list[Any]]:
        return LedgerQueries.rows_in_pages(self, batch, keys, page)  # type: ignore[arg-type]

    def state_as_records(self: LedgerPlanning, batch: str, state: str) -> list[Any]:
        keys = self.row_keys(batch, state)  # type: ignore[attr-defined]
        return [r for page in as_records(self, batch, keys) for r in page]

    monkeypatch.setattr(LedgerPlanning, "planning_rows_in_pages", as_records)
    monkeypatch.setattr(LedgerPlanning, "planning_rows_in_state", state_as_records)
    assert plan(tmp_path / "whole") == light
    assert len(light) >= 4


# ---------------------------------------------------------------------- commits


def test_one_commit_per_group_of_chunks_and_sending_is_durable_before_each_request(
    tmp_path: Path,
) -> None:
    """Every chunk is durably `sending` when its request leaves: the chunks of a group
    are committed `sending` together (groups of 1, 2, 4... up to SEND_GROUP_CHUNKS while
    sends go back to back), while the group before is being sent, and the answers
    waiting then ride on that same commit: one commit per group, not three per chunk."""
    from batcher.execute.runner import FLUSH_AHEAD_WRITES, SEND_GROUP_CHUNKS

    sizes = [1]
    while sizes[-1] < SEND_GROUP_CHUNKS:
        sizes.append(min(SEND_GROUP_CHUNKS, 2 * sizes[-1]))
    sizes.append(SEND_GROUP_CHUNKS)  # and one more full group
    chunks = sum(sizes)
    w = world(tmp_path, [("GBP", "1.00")] * (3 * chunks), wallets={"GBP": Decimal(1000)},
              polls_to_complete=1)  # fmt: skip
    seen_at_submit: list[dict[str, str]] = []

    def committed_states(key: str) -> None:
        reader = Ledger(w.path)  # another connection sees only what is committed
        try:
            chunks = reader.chunks(BATCH, ["sending", "accepted", "succeeded"])
            seen_at_submit.append({c.chunk_key: c.state for c in chunks})
            assert {c.chunk_key: c.state for c in chunks}[key] == "sending"
        finally:
            reader.close()

    w.provider.on_submit = committed_states
    with w.runner() as (ledger, runner):
        runner.prepare(w.rows)
        commits = _traced_commits(ledger)
        stats = runner.execute()
    assert stats.submits == chunks and stats.stopped is None
    assert_exactly_once(w)
    sent = [key for key, _ in w.provider.sent]
    start = 0
    for i, size in enumerate(sizes):
        at_first = seen_at_submit[start]
        sending = {k for k, state in at_first.items() if state == "sending"}
        # The whole group was durably `sending` before its first request left ...
        assert set(sent[start : start + size]) <= sending
        # ... with the answers to every chunk up to the previous group's first: the
        # group's commit ran (on another thread) while the rest of that group was sent.
        previous = start - sizes[i - 1] if i else 0
        assert not set(sent[: previous + 1 if i else 0]) & sending
        assert sending <= set(sent[previous : start + size])
        start += size
    # One commit per group, the settles committed before the run waits for polls, a
    # batch of FLUSH_AHEAD_WRITES at a time while polls go on, and at its end: well
    # under the three per chunk that one commit per transition takes.
    assert len(commits) <= len(sizes) + 2 + chunks // FLUSH_AHEAD_WRITES, commits


def _traced_commits(ledger: Any) -> list[str]:
    """The COMMIT statements the ledger's connection runs from now on, as they run."""
    commits: list[str] = []
    ledger._db.set_trace_callback(
        lambda sql: commits.append(sql) if sql.strip().upper() == "COMMIT" else None
    )
    return commits


def test_a_long_back_to_back_run_commits_a_handful_of_times(tmp_path: Path) -> None:
    """200 chunks sent back to back take about a dozen durable commits (groups of 1, 2,
    4, 8, 16, then 32), not one per 8 chunks: a commit costs more than a request."""
    w = world(tmp_path, [("GBP", "1.00")] * 200, submit_limit=1,
              wallets={"GBP": Decimal(1000)})  # fmt: skip
    with w.runner() as (ledger, runner):
        runner.prepare(w.rows)
        commits = _traced_commits(ledger)
        stats = runner.execute()
    assert stats.submits == 200
    assert_exactly_once(w)
    assert len(commits) <= 13, len(commits)  # with groups of at most 8: 29


def test_the_next_groups_commit_runs_while_this_group_is_sent(tmp_path: Path) -> None:
    """A commit costs more than a request: the next group is committed `sending` on
    another thread as soon as this group's first answer is in, while the rest of this
    group is sent; each chunk still waits for its own group's commit before it leaves."""
    w = world(tmp_path, [("GBP", "1")] * 7, submit_limit=1, wallets={"GBP": Decimal(100)})
    sending_at: list[set[str]] = []

    def on_submit(_key: str) -> None:
        ahead_commit_done()
        reader = Ledger(w.path)
        try:
            sending_at.append({c.chunk_key for c in reader.chunks(BATCH, ["sending"])})
        finally:
            reader.close()

    w.provider.on_submit = on_submit
    assert w.run().stopped is None
    assert_exactly_once(w)
    sent = [key for key, _ in w.provider.sent]  # groups of 1, 2 and 4
    # While the second group's second chunk is sent, the third group is committed too,
    # with the answer to the second group's first chunk.
    assert sending_at[2] == {sent[2], *sent[3:7]}


def test_the_ledger_waits_for_the_commit_on_the_other_thread() -> None:
    """Whatever the runner asks of the ledger while the other thread commits waits for
    that commit first (one thread at a time on the connection); a poll's count does not."""
    from batcher.execute.runner import _AheadCommit, _LedgerAfterCommit

    order: list[str] = []
    release = threading.Event()

    class Ledgerish:
        def chunk(self, key: str) -> str:
            order.append("read")
            return key

        def count_poll(self, key: str) -> None:
            order.append("poll counted")

    ahead = _AheadCommit()

    def commit() -> None:
        release.wait(5)
        order.append("committed")

    ahead.start(commit)
    ledger: Any = _LedgerAfterCommit(Ledgerish(), ahead)  # type: ignore[arg-type]
    ledger.count_poll("k")  # no wait
    release.set()
    assert ledger.chunk("k") == "k"
    assert order == ["poll counted", "committed", "read"]

    def fails() -> None:
        raise OSError("disk full")

    ahead.start(fails)
    with pytest.raises(OSError, match="disk full"):  # raised where the ledger is used next
        ledger.chunk("k")


def test_a_failed_commit_on_the_other_thread_stops_the_group_it_runs_beside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the next group's commit fails on the other thread (a full disk, a claimed
    order), the run stops at its next request: the rest of the group being sent stays
    unsent, not sent on regardless until the ledger is next used."""
    w = world(tmp_path, [("GBP", "1")] * 15, submit_limit=1, wallets={"GBP": Decimal(100)})
    marked: list[str] = []
    real_mark = Ledger.mark_sending

    def mark_sending(self: Ledger, batch: str, key: str) -> None:
        marked.append(key)
        if len(marked) == 8:  # the fourth group's first chunk: it is committed ahead
            raise OSError("disk full")
        real_mark(self, batch, key)

    monkeypatch.setattr(Ledger, "mark_sending", mark_sending)
    w.provider.on_submit = lambda _key: ahead_commit_done()
    with pytest.raises(OSError, match="disk full"):
        w.run()
    # Groups of 1, 2, then 4 (chunks 4-7), the fourth group's commit running beside
    # the third. It starts while chunk 4 or chunk 5 is on the wire (the threads decide)
    # and has failed by the time that chunk is answered: the request after it is not
    # sent, so 4 or 5 chunks in all. Without the check all of group three, 7, would be.
    sent = [key for key, _ in w.provider.sent]
    assert len(sent) == len(set(sent)) and len(sent) in (4, 5), sent
    reader = Ledger(w.path)
    try:  # nothing unsent is left `sending`: the next run plans it as ever
        planned = {c.chunk_key for c in reader.chunks(BATCH, ["planned"])}
        assert not reader.chunks(BATCH, ["sending"])
    finally:
        reader.close()
    assert len(planned) == 15 - len(sent) and not planned & set(sent)


def test_a_send_that_waits_ends_the_group(tmp_path: Path) -> None:
    """When sends wait (a rate limit, a slow provider), groups start again from one
    chunk and each answer is committed while the next request goes on, so the earlier
    chunks' answers do not wait in memory."""
    w = world(tmp_path, [("GBP", "1")] * 6, submit_limit=1, wallets={"GBP": Decimal(100)})
    committed_sending: list[int] = []

    def slow_submit(_key: str) -> None:
        ahead_commit_done()
        reader = Ledger(w.path)
        try:
            committed_sending.append(len(reader.chunks(BATCH, ["sending"])))
        finally:
            reader.close()
        if len(committed_sending) >= 3:
            w.clock.sleep(1.0)  # from the third on, each submission takes 1 s

    w.provider.on_submit = slow_submit
    stats = w.run()
    assert stats.stopped is None
    assert_exactly_once(w)
    # Groups of 1, 2 and 4 (each committed while the group before it is sent), then
    # the third send waited: from there each answer is committed as soon as it comes,
    # so only the chunks marked and not sent yet are `sending`.
    assert committed_sending == [1, 2, 4, 3, 2, 1]


def test_a_run_reads_each_chunk_whole_only_to_send_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan's summary counts chunks and the send queue holds keys: a chunk's payload
    and rows are read when it is sent, not for every chunk of the batch up front (at a
    million rows, 10,000 payloads held and 20,000 statements before the first send)."""
    from batcher.ledger.queries import LedgerQueries

    reads: list[str] = []
    whole = LedgerQueries.chunk

    def counted(self: LedgerQueries, chunk_key: str) -> ChunkRecord:
        reads.append(chunk_key)
        return whole(self, chunk_key)

    monkeypatch.setattr(LedgerQueries, "chunk", counted)
    w = world(tmp_path, [("GBP", f"{n}.00") for n in range(5, 17)], wallets={"GBP": Decimal(1000)})
    w.run(RunOptions(chunk_size=3, initial_poll_delay=1.0, max_poll_delay=8.0))
    assert_exactly_once(w)
    assert len(set(reads)) == 4
    assert len(reads) <= 4, f"{len(reads)} whole-chunk reads for 4 chunks"


def test_the_sends_are_over_when_the_last_chunk_is_skipped(tmp_path: Path) -> None:
    """The run's end starts reading when the sends are over (`sends_done`), also when
    the last planned chunk is skipped rather than sent (discarded unsent)."""

    class Told:
        def __init__(self) -> None:
            self.times = 0

        def message(self, text: str) -> None:
            pass

        def advance(self, rows_settled: int) -> None:
            pass

        def sends_done(self) -> None:
            self.times += 1

    w = world(tmp_path, [("GBP", "1.00")] * 3, submit_limit=1,
              wallets={"GBP": Decimal(1000)}, polls_to_complete=1)  # fmt: skip
    told = Told()
    with w.runner(RunOptions(initial_poll_delay=0.2, max_poll_delay=8.0)) as (ledger, runner):
        runner.listener = told
        runner.prepare(w.rows)
        last = ledger.chunk_keys(BATCH, ["planned"])[-1]

        def on_submit(_key: str) -> None:  # the first send: the last chunk is queued
            if w.provider.on_submit is on_submit:
                w.provider.on_submit = None
                other = Ledger(w.path)
                try:
                    other.discard_unsent_plans(BATCH, [last])
                finally:
                    other.close()

        w.provider.on_submit = on_submit
        stats = runner.execute()
    assert stats.submits == 2
    assert told.times == 1
    assert stats.submit_finished is not None
