"""The ledger: transitions, crash recovery, conflicts and the batch lock (real SQLite)."""

from __future__ import annotations

import multiprocessing
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from batcher.core.errors import BatchLocked
from batcher.ledger.store import BatchLock, Ledger, RowOutcome, SheetRow


def sheet_row(
    key: str, n: int, *, content: str = "c", valid: bool = True, ref: str | None = None
) -> SheetRow:
    return SheetRow(
        row_key=key,
        source_row=n,
        reference=ref,
        content_hash=content,
        fields={"recipient_email": f"{key}@x.com", "product_code": "P", "amount": "10.00"},
        passthrough={"Cost centre": "CC-1"},
        currency="GBP",
        face_value=Decimal("10.00"),
        est_cost=Decimal("9.50"),
        valid=valid,
    )


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    led = Ledger.open(tmp_path)
    led.ensure_batch("b", provider="p", account_id="a", source_path="s.csv", source_sha256="0" * 64)
    led.start_run("b", "test")
    return led


def plan_one(ledger: Ledger, key: str, rows: list[str]) -> None:
    ledger.save_plan("b", [(key, "GBP", 1, rows, b'{"x":1}')])


def test_sync_inserts_and_counts(ledger: Ledger) -> None:
    report = ledger.sync_rows(
        "b", [sheet_row("k1", 2), sheet_row("k2", 3, valid=False)], retry_failed=False
    )
    assert report.new == 2
    counts = ledger.count_by_state("b")
    assert counts["pending"] == 1 and counts["invalid"] == 1
    row = ledger.rows("b")[0]
    assert row.face_value == Decimal("10.00") and isinstance(row.est_cost, Decimal)


def test_sending_then_crash_becomes_unknown(ledger: Ledger) -> None:
    ledger.sync_rows("b", [sheet_row("k1", 2)], retry_failed=False)
    plan_one(ledger, "c1", ["k1"])
    ledger.mark_sending("b", "c1")
    assert ledger.count_by_state("b")["sending"] == 1
    assert ledger.recover_after_crash("b") == 1
    assert ledger.chunk("c1").state == "unknown"
    assert ledger.count_by_state("b")["unknown"] == 1
    # A resend is still the same bytes.
    assert ledger.chunk("c1").payload == b'{"x":1}'


def test_replanning_with_other_bytes_is_refused(ledger: Ledger) -> None:
    ledger.sync_rows("b", [sheet_row("k1", 2)], retry_failed=False)
    plan_one(ledger, "c1", ["k1"])
    ledger.mark_sending("b", "c1")
    with pytest.raises(RuntimeError):
        ledger.save_plan("b", [("c1", "GBP", 1, ["k1"], b'{"x":2}')])


def test_succeeded_row_that_changes_is_a_conflict(ledger: Ledger) -> None:
    ledger.sync_rows("b", [sheet_row("k1", 2)], retry_failed=False)
    plan_one(ledger, "c1", ["k1"])
    ledger.mark_sending("b", "c1")
    ledger.settle_chunk("b", "c1", "succeeded", [RowOutcome("k1", "succeeded", order_id="o1")])
    report = ledger.sync_rows("b", [sheet_row("k1", 2, content="changed")], retry_failed=False)
    assert report.conflicts == 1
    row = ledger.rows("b")[0]
    assert row.state == "succeeded" and row.conflict and row.order_id == "o1"


def test_permanent_failure_needs_retry_failed_or_a_change(ledger: Ledger) -> None:
    ledger.sync_rows("b", [sheet_row("k1", 2)], retry_failed=False)
    plan_one(ledger, "c1", ["k1"])
    ledger.mark_sending("b", "c1")
    ledger.settle_chunk(
        "b", "c1", "failed", [RowOutcome("k1", "failed", failure_kind="permanent", error_code="x")]
    )
    ledger.sync_rows("b", [sheet_row("k1", 2)], retry_failed=False)
    assert ledger.rows("b")[0].state == "failed"
    ledger.sync_rows("b", [sheet_row("k1", 2)], retry_failed=True)
    row = ledger.rows("b")[0]
    assert (row.state, row.attempt, row.retry_group) == ("pending", 2, "c1")


def test_retryable_failures_are_released_with_their_chunk_as_group(ledger: Ledger) -> None:
    ledger.sync_rows("b", [sheet_row("k1", 2), sheet_row("k2", 3)], retry_failed=False)
    plan_one(ledger, "c1", ["k1", "k2"])
    ledger.mark_sending("b", "c1")
    ledger.settle_chunk(
        "b",
        "c1",
        "failed",
        [
            RowOutcome(k, "failed", failure_kind="retryable", error_code="request_failed")
            for k in ("k1", "k2")
        ],
    )
    assert ledger.release_retryable("b") == 2
    rows = ledger.rows("b")
    assert {(r.state, r.attempt, r.retry_group) for r in rows} == {("pending", 2, "c1")}


def test_reference_succeeded_in_another_batch_is_skipped(ledger: Ledger) -> None:
    ledger.sync_rows("b", [sheet_row("k1", 2, ref="R-1")], retry_failed=False)
    plan_one(ledger, "c1", ["k1"])
    ledger.mark_sending("b", "c1")
    ledger.settle_chunk("b", "c1", "succeeded", [RowOutcome("k1", "succeeded", order_id="o1")])
    ledger.ensure_batch(
        "b2", provider="p", account_id="a", source_path="s2.csv", source_sha256="1" * 64
    )
    report = ledger.sync_rows("b2", [sheet_row("k1", 2, ref="R-1")], retry_failed=False)
    assert report.skipped_elsewhere == 1
    assert ledger.count_by_state("b2")["skipped"] == 1


def test_events_are_append_only(ledger: Ledger, tmp_path: Path) -> None:
    ledger.sync_rows("b", [sheet_row("k1", 2)], retry_failed=False)
    db = sqlite3.connect(tmp_path / "ledger.sqlite")
    with pytest.raises(sqlite3.DatabaseError):
        db.execute("DELETE FROM events")
    with pytest.raises(sqlite3.DatabaseError):
        db.execute("UPDATE events SET kind = 'x'")


def _hold_lock(
    state_dir: str, ready: multiprocessing.Event, release: multiprocessing.Event
) -> None:  # type: ignore[valid-type]
    with BatchLock(Path(state_dir), "nightly"):
        ready.set()
        release.wait(10)


def test_batch_lock_names_holder_and_dies_with_its_process(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    holder.start()
    assert ready.wait(10)
    with pytest.raises(BatchLocked) as info:
        BatchLock(tmp_path, "nightly").acquire()
    assert f"pid {holder.pid}" in str(info.value)
    holder.kill()  # a dead run must not block the next one
    holder.join()
    with BatchLock(tmp_path, "nightly"):
        pass


def test_failed_row_ordered_by_another_batch_is_never_retried(ledger: Ledger) -> None:
    """A row fixed and ordered through failed_rows.csv (a new batch) must not be
    ordered again when the original batch is rerun with --retry-failed."""
    ledger.sync_rows("b", [sheet_row("k1", 2, ref="R-9")], retry_failed=False)
    plan_one(ledger, "c1", ["k1"])
    ledger.mark_sending("b", "c1")
    ledger.settle_chunk(
        "b", "c1", "failed", [RowOutcome("k1", "failed", failure_kind="permanent", error_code="x")]
    )
    ledger.ensure_batch(
        "fix", provider="p", account_id="a", source_path="f.csv", source_sha256="2" * 64
    )
    ledger.sync_rows("fix", [sheet_row("k1", 2, ref="R-9")], retry_failed=False)
    ledger.save_plan("fix", [("c2", "GBP", 1, ["k1"], b"{}")])
    ledger.mark_sending("fix", "c2")
    ledger.settle_chunk("fix", "c2", "succeeded", [RowOutcome("k1", "succeeded", order_id="o9")])

    report = ledger.sync_rows("b", [sheet_row("k1", 2, ref="R-9")], retry_failed=True)
    assert report.skipped_elsewhere == 1
    row = ledger.rows("b")[0]
    assert row.state == "skipped" and row.error_code == "ordered_in_another_batch"
