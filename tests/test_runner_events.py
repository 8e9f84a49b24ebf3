"""The runner with webhook events: settles from an event without a poll, releases rows
on a `failed` event exactly as a failed poll does, and falls back to polls (after the
margin) when no event comes. Fake provider and clock; a real ledger and evidence table."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from batcher.execute.runner import Runner, RunOptions, RunStats
from batcher.execute.webhook_feed import EventFeed
from batcher.ledger.events import WebhookEvents
from batcher.ledger.store import Ledger
from batcher.providers.base import OrderItem, PollResult
from tests.runner_fakes import FakeClock, FakeProvider, sheet_rows

BATCH = "hooks"
OPTIONS = RunOptions(initial_poll_delay=1.0, max_poll_delay=8.0)
MARGIN = 120.0
ROWS = [("GBP", "10.00")] * 7  # three chunks of at most 3


class FakeEvents:
    """Parses events as the fake provider's poll would: one parser for both."""

    def __init__(self, provider: FakeProvider) -> None:
        self.provider = provider

    def order_request_result(
        self, data: Mapping[str, Any], items: Sequence[OrderItem]
    ) -> PollResult:
        if data["status"] == "failed":
            return PollResult(
                kind="failed", error_code="request_failed", error_message=data["error"]
            )
        request = self.provider.requests[data["orderRequestId"]]
        if request.results is None:
            self.provider._complete(request, items)
        assert request.results is not None
        return PollResult(kind="completed", items=request.results, provider_status="succeeded")


def run(tmp: Path, provider: FakeProvider, clock: FakeClock, *, deliver: str | None) -> RunStats:
    """One run; while it waits, the 'listener' records `deliver` events for new requests."""
    ledger = Ledger(tmp / "ledger.sqlite")
    events = WebhookEvents(tmp / "ledger.sqlite")
    ledger.ensure_batch(
        BATCH, provider=provider.name, account_id="a", source_path="s.csv", source_sha256="0" * 64
    )

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        for request_id in list(provider.requests) if deliver else []:
            payload: dict[str, Any] = {"orderRequestId": request_id, "status": deliver}
            if deliver == "failed":
                payload["error"] = "Upstream supplier error"
            body = json.dumps({"event": f"order.{deliver}", **payload}, sort_keys=True)
            events.record(
                "fake", hashlib.sha256(body.encode()).hexdigest(), event=f"order.{deliver}",
                request_id=request_id, status=deliver, terminal=True, order_ids=(),
                payload=body,
            )  # fmt: skip

    feed = EventFeed(events, FakeEvents(provider), poll_margin=MARGIN, clock=clock)
    runner = Runner(
        provider, ledger, BATCH, "a", OPTIONS, clock=clock, sleep=sleep,
        rng=random.Random(1), events=feed,
    )  # fmt: skip
    try:
        runner.prepare(sheet_rows(ROWS))
        return runner.execute()
    finally:
        events.close()
        ledger.close()


def states(tmp: Path) -> dict[str, str]:
    ledger = Ledger(tmp / "ledger.sqlite")
    try:
        return {r.row_key: r.state for r in ledger.rows(BATCH)}
    finally:
        ledger.close()


def test_events_settle_every_chunk_without_a_poll(tmp_path: Path) -> None:
    provider, clock = (
        FakeProvider(polls_to_complete=1, wallets={"GBP": Decimal("1000")}),
        FakeClock(),
    )
    stats = run(tmp_path, provider, clock, deliver="succeeded")
    assert (stats.submits, stats.polls, stats.settled_by_event) == (3, 0, 3)
    assert set(states(tmp_path).values()) == {"succeeded"}
    assert provider.orders_per_row() == dict.fromkeys(states(tmp_path), 1)
    assert clock.now - 1000.0 < MARGIN  # nobody waited for the fallback


def test_a_failed_event_releases_rows_as_a_failed_poll_does(tmp_path: Path) -> None:
    provider, clock = (
        FakeProvider(polls_to_complete=1, wallets={"GBP": Decimal("1000")}),
        FakeClock(),
    )
    stats = run(tmp_path, provider, clock, deliver="failed")
    assert (stats.polls, stats.settled_by_event) == (0, 3)
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        failed = ledger.rows(BATCH)
    finally:
        ledger.close()
    assert {(r.state, r.failure_kind, r.error_code) for r in failed} == {
        ("failed", "retryable", "request_failed")
    }
    # the next run releases them as attempt 2 under new keys, as after a failed poll
    stats = run(tmp_path, provider, clock, deliver="succeeded")
    assert stats.submits == 3 and set(states(tmp_path).values()) == {"succeeded"}
    assert provider.orders_per_row() == dict.fromkeys(states(tmp_path), 1)


def test_without_events_polls_resume_after_the_margin(tmp_path: Path) -> None:
    provider, clock = (
        FakeProvider(polls_to_complete=1, wallets={"GBP": Decimal("1000")}),
        FakeClock(),
    )
    stats = run(tmp_path, provider, clock, deliver=None)
    assert (stats.polls, stats.settled_by_event) == (3, 0)
    assert set(states(tmp_path).values()) == {"succeeded"}
    assert clock.now - 1000.0 >= MARGIN  # the first poll waited for a late event
