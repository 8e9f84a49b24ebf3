"""The work queue's claim rules on a real PostgreSQL ledger (tests/pg.py): oldest due
first, SKIP LOCKED, one running batch per account, stale items taken over only when
their batch lock is free, and an outcome recorded only by the item's own worker."""

from __future__ import annotations

import time
from typing import Any

import pytest

from batcher.core.errors import UsageError
from batcher.core.states import QueueState
from batcher.ledger.location import LedgerLocation, parse_ledger_url
from batcher.ledger.lock import PgBatchLock
from batcher.ledger.queue import BatchQueue
from tests.pg import PgCluster


@pytest.fixture
def location(pg_cluster: PgCluster) -> LedgerLocation:
    return parse_ledger_url(pg_cluster.url(pg_cluster.fresh_database()))


def put(queue: BatchQueue, batch: str, account: str | None = None) -> Any:
    return queue.enqueue(
        batch=batch, provider="ugiftme", account=account, sheet_path=f"/s/{batch}.csv",
        sheet_sha256="0" * 64, options={"chunk_size": 5}, max_attempts=3,
    )  # fmt: skip


def test_items_are_claimed_oldest_first_one_running_batch_per_account(
    location: LedgerLocation,
) -> None:
    with BatchQueue(location) as queue:
        a1, a2, b1 = put(queue, "a1", "acme"), put(queue, "a2", "acme"), put(queue, "b1", "beta")
        first = queue.claim("w1", stale_after=60)
        assert first is not None and first.id == a1.id and first.state == "running"
        assert first.worker == "w1" and first.attempts == 1
        second = queue.claim("w2", stale_after=60)  # a2 waits: acme is busy
        assert second is not None and second.id == b1.id
        assert queue.claim("w3", stale_after=60) is None
        assert queue.finish(a1.id, "w1", QueueState.DONE, exit_code=0, summary={"x": 1},
                            message="done")  # fmt: skip
        third = queue.claim("w3", stale_after=60)
        assert third is not None and third.id == a2.id


def test_a_batch_is_queued_once_at_a_time(location: LedgerLocation) -> None:
    with BatchQueue(location) as queue:
        item = put(queue, "night")
        with pytest.raises(UsageError, match=f"already in the queue as item {item.id}"):
            put(queue, "night")


def test_a_stale_item_is_taken_over_only_when_its_batch_lock_is_free(
    location: LedgerLocation,
) -> None:
    with BatchQueue(location) as queue:
        item = put(queue, "stale")
        assert queue.claim("w1", stale_after=60) is not None
        time.sleep(0.3)
        lock = PgBatchLock(location, "stale")
        lock.acquire()  # w1's run is alive, only its heartbeat lags
        try:
            assert queue.claim("w2", stale_after=0.1) is None
        finally:
            lock.release()  # w1's session ended: the server drops its lock (soon after)
        taken = None
        for _ in range(50):
            taken = taken or queue.claim("w2", stale_after=0.1)
            time.sleep(0.05)

        assert taken is not None and taken.id == item.id and taken.worker == "w2"
        assert taken.attempts == 2 and "reclaimed from worker w1" in (taken.message or "")
        # the dead worker's outcome no longer counts; the new owner's does
        assert not queue.heartbeat(item.id, "w1")
        assert not queue.finish(item.id, "w1", QueueState.FAILED, exit_code=4, summary=None,
                                message="late")  # fmt: skip
        assert queue.finish(item.id, "w2", QueueState.QUEUED, exit_code=3, summary=None,
                            message="again", retry_in=3600)  # fmt: skip
        again = queue.item(item.id)
        assert again is not None and again.state == "queued" and again.worker is None
        assert queue.claim("w3", stale_after=60) is None  # its backoff has not passed


def test_the_queue_refuses_a_sqlite_ledger(tmp_path: Any) -> None:
    with pytest.raises(UsageError, match="needs a shared PostgreSQL ledger"):
        BatchQueue(LedgerLocation.in_state_dir(tmp_path))


def test_an_item_whose_workers_keep_dying_fails_after_max_attempts(
    location: LedgerLocation,
) -> None:
    with BatchQueue(location) as queue:
        item = put(queue, "poison")  # max_attempts=3
        for worker in ("w1", "w2", "w3"):
            assert queue.claim(worker, stale_after=0.05) is not None
            time.sleep(0.1)  # the worker dies: no heartbeat, no outcome
        assert queue.claim("w4", stale_after=0.05) is None
        found = queue.item(item.id)
        assert found is not None and found.state == "failed"
        assert "stopped without an outcome 3 time(s)" in (found.message or "")
