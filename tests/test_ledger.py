"""The ledger: transitions, crash recovery, conflicts and the batch lock.

Every test given the `ledger` fixture runs twice: on a real SQLite file and on a
real PostgreSQL database (a throwaway cluster, tests/pg.py). Tests of what only
SQLite has (its file, its pages, its online backup) take `sqlite_ledger`.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from batcher.core.errors import BatchLocked, ConfigError
from batcher.ledger.backend import connect
from batcher.ledger.location import parse_ledger_url
from batcher.ledger.lock import batch_lock
from batcher.ledger.store import (
    HELD_ELSEWHERE,
    Ledger,
    LedgerDamaged,
    LedgerDiskFull,
    OrderClaimed,
    RowOutcome,
    SheetRow,
)


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


def _started(led: Ledger) -> Ledger:
    led.ensure_batch("b", provider="p", account_id="a", source_path="s.csv", source_sha256="0" * 64)
    led.start_run("b", "test")
    return led


@pytest.fixture
def sqlite_ledger(tmp_path: Path) -> Iterator[Ledger]:
    led = _started(Ledger.open(tmp_path))
    yield led
    led.close()


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


def test_cost_lines_read_what_the_funds_rule_needs_in_sheet_order(ledger: Ledger) -> None:
    """The funds rule's narrow read agrees with the whole rows: sheet order, face value,
    estimated cost (None when absent) and the paying wallet only where a row names one."""
    import dataclasses

    rows = [
        sheet_row("k3", 4),
        dataclasses.replace(
            sheet_row("k1", 2), est_cost=None,
            fields={**sheet_row("k1", 2).fields, "payment_currency": "EUR"},
        ),
        sheet_row("k2", 3, valid=False),
        dataclasses.replace(sheet_row("k4", 5), face_value=Decimal("7.25")),
    ]  # fmt: skip
    ledger.sync_rows("b", rows, retry_failed=False)
    lines = list(ledger.cost_lines("b", "pending"))
    assert lines == [
        (2, "k1", "GBP", Decimal("10.00"), None, "EUR"),
        (4, "k3", "GBP", Decimal("10.00"), Decimal("9.50"), None),
        (5, "k4", "GBP", Decimal("7.25"), Decimal("9.50"), None),
    ]
    assert [str(line[3]) for line in lines] == ["10.00", "10.00", "7.25"]  # text kept
    assert list(ledger.cost_lines("b", "planned")) == []


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


def test_a_chunk_marked_sending_but_never_sent_is_planned_again_as_it_was(
    ledger: Ledger,
) -> None:
    ledger.sync_rows("b", [sheet_row("k1", 2), sheet_row("k2", 3)], retry_failed=False)
    plan_one(ledger, "c1", ["k1"])
    plan_one(ledger, "c2", ["k2"])
    before = {key: ledger.chunk(key) for key in ("c1", "c2")}
    ledger.mark_sending("b", "c1")
    ledger.mark_sending("b", "c2")
    # c2 went to another run meanwhile (a lost batch lock): unknown, then sent again.
    ledger.mark_unknown("b", "c2", "taken over")
    ledger.mark_sending("b", "c2")
    ledger.unmark_sending("b", list(before.values()))
    c1, c2 = ledger.chunk("c1"), ledger.chunk("c2")
    assert (c1.state, c1.send_count, c1.first_sent_at, c1.last_sent_at) == (
        "planned", 0, None, None,
    )  # fmt: skip
    assert ledger.rows_by_key("b", ["k1"])["k1"].state == "planned"
    assert (c2.state, c2.send_count) == ("sending", 2), "another run's send is left alone"
    assert ledger.rows_by_key("b", ["k2"])["k2"].state == "sending"


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


def test_events_are_append_only(ledger: Ledger) -> None:
    ledger.sync_rows("b", [sheet_row("k1", 2)], retry_failed=False)
    db = connect(ledger.location)  # another connection, past every batcher code path
    try:
        for statement in ("DELETE FROM events", "UPDATE events SET kind = 'x'"):
            with pytest.raises(Exception, match="append-only"):
                db.execute(statement)
        if ledger.backend == "postgresql":
            with pytest.raises(Exception, match="append-only"):
                db.execute("TRUNCATE events")
        assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] > 0
    finally:
        db.close()


def _hold_lock(where: str, ready: multiprocessing.Event, release: multiprocessing.Event) -> None:  # type: ignore[valid-type]
    location = parse_ledger_url(where) if "://" in where else None
    with batch_lock(Path(where) if location is None else Path("."), "nightly", location):
        ready.set()
        release.wait(10)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_batch_lock_names_holder_and_dies_with_its_process(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """flock beside SQLite; a session advisory lock on PostgreSQL: the server drops it
    when the holder's session dies, even from a SIGKILL."""
    where = request.getfixturevalue("pg_url") if backend == "postgresql" else str(tmp_path)
    location = parse_ledger_url(where) if backend == "postgresql" else None
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(where, ready, release))
    holder.start()
    assert ready.wait(10)
    with pytest.raises(BatchLocked) as info, batch_lock(tmp_path, "nightly", location):
        pass
    assert f"batch 'nightly' is locked by pid {holder.pid} on " in str(info.value)
    with batch_lock(tmp_path, "another batch", location):
        pass  # one batch's lock never holds another
    holder.kill()  # a dead run must not block the next one
    holder.join()
    deadline = time.monotonic() + 10  # the server notices the closed socket at once
    while True:
        try:
            with batch_lock(tmp_path, "nightly", location):
                break
        except BatchLocked:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


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


def test_a_new_row_and_a_known_one_skipped_elsewhere_are_recorded_alike(ledger: Ledger) -> None:
    """A reference another batch ordered: a row new to the ledger is skipped with the
    same code and message as a row the ledger knew (the store says why, not only the
    report, which adds where and when)."""
    ledger.sync_rows("b", [sheet_row("k1", 2, ref="R-9")], retry_failed=False)
    ledger.save_plan("b", [("c1", "GBP", 1, ["k1"], b"{}")])
    ledger.mark_sending("b", "c1")
    ledger.settle_chunk("b", "c1", "succeeded", [RowOutcome("k1", "succeeded", order_id="o9")])
    for batch in ("new", "known"):
        ledger.ensure_batch(
            batch, provider="p", account_id="a", source_path="f.csv", source_sha256="2" * 64
        )
    ledger.sync_rows("known", [sheet_row("k2", 2, ref="R-8")], retry_failed=False)
    ledger.sync_rows("known", [sheet_row("k2", 2, ref="R-9")], retry_failed=False)
    report = ledger.sync_rows("new", [sheet_row("k3", 2, ref="R-9")], retry_failed=False)
    assert report.skipped_elsewhere == 1
    (new,), (known,) = ledger.rows("new"), ledger.rows("known")
    assert (new.state, new.error_code, new.error_message) == (
        "skipped",
        "ordered_in_another_batch",
        "this reference was ordered by another batch",
    )
    assert (known.state, known.error_code, known.error_message) == (
        new.state,
        new.error_code,
        new.error_message,
    )


# ---------------------------------------------------------------------------
# Exactly once across runs, batches and damaged files


def test_one_provider_order_belongs_to_one_chunk(ledger: Ledger) -> None:
    ledger.sync_rows("b", [sheet_row("k1", 2), sheet_row("k2", 3)], retry_failed=False)
    plan_one(ledger, "c1", ["k1"])
    ledger.save_plan("b", [("c2", "GBP", 1, ["k2"], b'{"x":2}')])
    for key in ("c1", "c2"):
        ledger.mark_sending("b", key)
    ledger.mark_accepted("b", "c1", "po_1")
    with pytest.raises(OrderClaimed):
        ledger.mark_accepted("b", "c2", "po_1")
    assert ledger.chunk("c2").request_id is None
    assert ledger.claimed_request_ids("b", "c2") == {"po_1"}
    assert ledger.claimed_request_ids("b", "c1") == frozenset()
    ledger.mark_accepted("b", "c1", "po_1")  # the same chunk again is no second claim


def test_a_version_1_ledger_with_a_doubly_claimed_order_is_repaired(tmp_path: Path) -> None:
    led = Ledger.open(tmp_path)
    led.ensure_batch("b", provider="p", account_id="a", source_path="s", source_sha256="0")
    led.sync_rows("b", [sheet_row("k1", 2), sheet_row("k2", 3)], retry_failed=False)
    led.save_plan("b", [("c1", "GBP", 1, ["k1"], b"1"), ("c2", "GBP", 1, ["k2"], b"2")])
    led.close()
    db = sqlite3.connect(tmp_path / "ledger.sqlite")
    with db:  # what version 1 could leave behind: two chunks on one payout order
        db.execute("DROP INDEX chunks_one_per_request")
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
        db.execute(
            "UPDATE chunks SET state = 'accepted', request_id = 'po_1', accepted_at ="
            " CASE chunk_key WHEN 'c1' THEN '2026-01-01' ELSE '2026-01-02' END"
        )
        db.execute("UPDATE rows SET state = 'accepted'")
    db.close()
    led = Ledger.open(tmp_path)
    assert (led.chunk("c1").state, led.chunk("c1").request_id) == ("accepted", "po_1")
    assert (led.chunk("c2").state, led.chunk("c2").request_id) == ("unknown", None)
    assert led.rows_by_key("b", ["k2"])["k2"].state == "unknown"
    assert [e["chunk_key"] for e in led.events("b", "chunk_claim_repaired")] == ["c2"]


def test_a_damaged_ledger_is_named_and_never_opened(tmp_path: Path) -> None:
    led = Ledger.open(tmp_path)
    led.ensure_batch("b", provider="p", account_id="a", source_path="s", source_sha256="0")
    led.sync_rows("b", [sheet_row(f"k{i}", i) for i in range(200)], retry_failed=False)
    led.close()
    path = tmp_path / "ledger.sqlite"
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    data = bytearray(path.read_bytes())
    data[4096 * 2 : 4096 * 2 + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    with pytest.raises(LedgerDamaged, match=f"the ledger at {path} is damaged.*restore"):
        Ledger.open(tmp_path)
    path.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(LedgerDamaged):
        Ledger.open(tmp_path)


def test_a_zero_byte_ledger_is_a_new_one_whose_batches_need_recovery(tmp_path: Path) -> None:
    (tmp_path / "ledger.sqlite").write_bytes(b"")
    led = Ledger.open(tmp_path)
    assert led.ensure_batch("b", provider="p", account_id="a", source_path="s", source_sha256="0")
    assert led.needs_recovery("b")
    led.mark_recovered("b")
    assert not led.needs_recovery("b")
    assert not led.ensure_batch(
        "b", provider="p", account_id="a", source_path="s", source_sha256="0"
    )


def test_the_same_sheet_under_another_batch_name_is_refused(ledger: Ledger) -> None:
    same = {"provider": "p", "account_id": "a", "source_path": "s", "source_sha256": "0" * 64}
    with pytest.raises(ConfigError, match="already run as batch 'b'"):
        ledger.ensure_batch("other", allow_same_sheet=False, **same)
    assert ledger.batch_info("other") is None
    ledger.ensure_batch("other", allow_same_sheet=True, **same)
    ledger.ensure_batch("b", allow_same_sheet=False, **same)  # its own rerun is fine


def test_a_reference_planned_in_another_batch_is_held_not_planned(ledger: Ledger) -> None:
    ledger.sync_rows("b", [sheet_row("r1", 2, ref="REF-1")], retry_failed=False)
    plan_one(ledger, "c1", ["r1"])
    ledger.ensure_batch("b2", provider="p", account_id="a", source_path="t", source_sha256="1")
    ledger.sync_rows(
        "b2", [sheet_row("r1", 2, ref="REF-1"), sheet_row("k9", 3)], retry_failed=False
    )
    held = ledger.save_plan("b2", [("d1", "GBP", 1, ["k9", "r1"], b"x")])
    assert held == {"r1"}
    rows = ledger.rows_by_key("b2", ["r1", "k9"])
    assert rows["r1"].state == "held" and rows["r1"].error_code == HELD_ELSEWHERE
    assert "batch 'b'" in (rows["r1"].error_message or "")
    assert rows["k9"].state == "pending"  # the chunk was not saved; the caller re-plans it
    other_account = {"provider": "p", "account_id": "z", "source_path": "u", "source_sha256": "2"}
    ledger.ensure_batch("b3", **other_account)
    ledger.sync_rows("b3", [sheet_row("r1", 2, ref="REF-1")], retry_failed=False)
    assert ledger.save_plan("b3", [("e1", "GBP", 1, ["r1"], b"y")]) == set()


def test_planned_chunks_keep_their_composition_until_a_row_changes(ledger: Ledger) -> None:
    ledger.sync_rows("b", [sheet_row("k1", 2), sheet_row("k2", 3)], retry_failed=False)
    plan_one(ledger, "c1", ["k1", "k2"])
    ledger.sync_rows(
        "b", [sheet_row("k0", 1), sheet_row("k1", 2), sheet_row("k2", 3)], retry_failed=False
    )
    assert ledger.discard_unsent_plans("b", stale_only=True) == 0
    assert [c.chunk_key for c in ledger.chunks("b", ["planned"])] == ["c1"]
    ledger.sync_rows(
        "b", [sheet_row("k1", 2), sheet_row("k2", 3, content="new")], retry_failed=False
    )
    assert ledger.discard_unsent_plans("b", stale_only=True) == 1
    assert {r.state for r in ledger.rows("b")} == {"pending"}


def test_backup_is_a_checked_copy(sqlite_ledger: Ledger, tmp_path: Path) -> None:
    ledger = sqlite_ledger
    ledger.sync_rows("b", [sheet_row("k1", 2)], retry_failed=False)
    target = tmp_path / "backups" / "ledger-1.sqlite"
    assert ledger.backup(target) > 0
    copy = Ledger(target)
    assert [r.row_key for r in copy.rows("b")] == ["k1"]
    copy.close()


def test_a_full_disk_is_named_as_one(sqlite_ledger: Ledger) -> None:
    ledger = sqlite_ledger
    ledger.sync_rows("b", [sheet_row("k1", 2)], retry_failed=False)
    plan_one(ledger, "c1", ["k1"])
    pages = ledger._db.execute("PRAGMA page_count").fetchone()[0]
    ledger._db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own 'disk is full'
    with pytest.raises(LedgerDiskFull, match=r"is full.*nothing more was sent"):
        ledger.sync_rows("b", [sheet_row(f"k{i}", i) for i in range(2000)], retry_failed=False)
    assert ledger.chunk("c1").state == "planned"  # the failed commit left nothing behind


def test_held_rows_are_released_only_by_name_and_never_by_retry_failed(ledger: Ledger) -> None:
    rows = [sheet_row(f"k{n}", n) for n in (2, 3, 4)]
    ledger.sync_rows("b", rows, retry_failed=False)
    held = [
        RowOutcome(row_key=f"k{n}", state="held", error_code="held_possible_duplicate",
                   error_message="possible duplicate")
        for n in (2, 3)
    ]  # fmt: skip
    ledger.hold_rows("b", held)
    ledger.hold_rows("b", [RowOutcome(row_key="k4", state="held", error_code=HELD_ELSEWHERE)])
    ledger.sync_rows("b", rows, retry_failed=True)  # --retry-failed leaves held rows alone
    assert ledger.count_by_state("b")["held"] == 3
    assert ledger.release_held("b", {3, 9}, keep=HELD_ELSEWHERE) == [3]
    after = ledger.rows_by_key("b", ["k2", "k3", "k4"])
    assert after["k3"].state == "pending" and after["k3"].attempt == 2  # a new key
    assert after["k3"].error_code == "held_possible_duplicate"  # until the run is confirmed
    assert ledger.confirm_release("b") == 1
    assert ledger.rows_by_key("b", ["k3"])["k3"].error_code is None
    assert after["k2"].state == "held"
    assert ledger.release_held("b", None, keep=HELD_ELSEWHERE) == [2]  # all: not k4
    assert ledger.rows_by_key("b", ["k4"])["k4"].state == "held"


def test_polls_are_counted_with_the_chunks_next_transition(ledger: Ledger) -> None:
    ledger.sync_rows("b", [sheet_row("k1", 2)], retry_failed=False)
    plan_one(ledger, "c1", ["k1"])
    ledger.mark_sending("b", "c1")
    ledger.mark_accepted("b", "c1", "req-1")
    ledger.count_poll("c1")
    ledger.count_poll("c1")
    assert ledger.chunk("c1").poll_count == 0  # no commit of its own
    ledger.settle_chunk("b", "c1", "succeeded", [RowOutcome(row_key="k1", state="succeeded")])
    assert ledger.chunk("c1").poll_count == 2


def test_a_release_never_confirmed_is_held_again(ledger: Ledger) -> None:
    rows = [sheet_row(f"k{n}", n) for n in (2, 3, 4)]
    ledger.sync_rows("b", rows, retry_failed=False)
    hold = RowOutcome(row_key="k2", state="held", error_code="held_possible_duplicate",
                      error_message="possible duplicate of row 9")  # fmt: skip
    ledger.hold_rows("b", [hold])
    assert ledger.release_held("b", None, keep=HELD_ELSEWHERE) == [2]
    plan_one(ledger, "c1", ["k2", "k3"])  # the released row, planned with another
    assert {k: n for k, n in ledger.count_by_state("b").items() if n} == {
        "planned": 2,
        "pending": 1,
    }
    # declined at the prompt, refused, or killed before the confirmation
    assert ledger.undo_unconfirmed_release("b") == 1
    after = ledger.rows_by_key("b", ["k2", "k3"])
    assert (after["k2"].state, after["k2"].attempt) == ("held", 1)
    assert after["k2"].error_message == "possible duplicate of row 9"
    assert after["k3"].state == "pending" and after["k3"].chunk_key is None
    with pytest.raises(KeyError):
        ledger.chunk("c1")  # never sent: discarded
    assert ledger.undo_unconfirmed_release("b") == 0
    assert ledger.confirm_release("b") == 0  # nothing left to confirm
    assert ledger.rows_by_key("b", ["k2"])["k2"].state == "held"


def test_a_release_whose_chunk_was_sent_stands(ledger: Ledger) -> None:
    """A caller that executed without confirming: the send is never undone."""
    ledger.sync_rows("b", [sheet_row("k2", 2)], retry_failed=False)
    ledger.hold_rows("b", [RowOutcome(row_key="k2", state="held",
                                      error_code="held_possible_duplicate")])  # fmt: skip
    ledger.release_held("b", None, keep=HELD_ELSEWHERE)
    plan_one(ledger, "c1", ["k2"])
    ledger.mark_sending("b", "c1")
    assert ledger.undo_unconfirmed_release("b") == 0
    row = ledger.rows_by_key("b", ["k2"])["k2"]
    assert (row.state, row.error_code, row.failure_kind) == ("sending", None, None)
    assert ledger.chunk("c1").state == "sending"


def test_a_sqlite_ledger_keeps_a_page_cache_for_a_large_batch(sqlite_ledger: Ledger) -> None:
    """64 MiB of page cache, not SQLite's 2 MiB: a million rows' indexes are walked per
    chunk, and re-reading their pages from the OS every statement costs CPU per row."""
    from batcher.ledger.connection import LEDGER_CACHE_KIB

    (size,) = sqlite_ledger._db.execute("PRAGMA cache_size").fetchone()
    assert size == -LEDGER_CACHE_KIB and LEDGER_CACHE_KIB >= 64 * 1024


def test_an_accepted_chunks_rows_are_rewritten_once_and_settled_rows_keep_their_state(
    sqlite_ledger: Ledger,
) -> None:
    """`mark_accepted` sets the order request on every row of the chunk and `accepted` on
    those not settled, in one UPDATE of the chunk's rows (each row a write, not two): a
    resent chunk whose first row an incomplete answer already settled keeps that row."""
    import sqlite3

    ledger = sqlite_ledger
    ledger.sync_rows("b", [sheet_row(k, n) for n, k in enumerate(["k1", "k2", "k3"], 2)],
                     retry_failed=False)  # fmt: skip
    plan_one(ledger, "c1", ["k1", "k2", "k3"])
    ledger.mark_sending("b", "c1")
    ledger.settle_chunk("b", "c1", "unknown", [
        RowOutcome(row_key="k1", state="succeeded", order_id="o-1"),
        RowOutcome(row_key="k2", state="unknown", error_code="no_result"),
        RowOutcome(row_key="k3", state="unknown", error_code="no_result"),
    ])  # fmt: skip
    settled_at = ledger.rows_by_key("b", ["k1"])["k1"].updated_at
    ledger.mark_sending("b", "c1")  # resent with the same key and bytes
    statements: list[str] = []
    db = ledger._db
    assert isinstance(db, sqlite3.Connection)
    db.set_trace_callback(statements.append)
    ledger.mark_accepted("b", "c1", "req-9")
    db.set_trace_callback(None)
    assert len([s for s in statements if s.startswith("UPDATE rows")]) == 1, statements
    rows = ledger.rows_by_key("b", ["k1", "k2", "k3"])
    assert {k: (r.state, r.order_request_id) for k, r in rows.items()} == {
        "k1": ("succeeded", "req-9"),
        "k2": ("accepted", "req-9"),
        "k3": ("accepted", "req-9"),
    }
    assert rows["k1"].updated_at == settled_at
    assert ledger.chunk("c1").state == "accepted"
