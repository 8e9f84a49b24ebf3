"""`save_plan(..., payloads=...)`: the payloads are made while the plan's rows are written.

On SQLite the claims, chunk rows and planned rows are written on a thread of their own,
each as one statement over a JSON array (it runs with the GIL released, start to end),
while the caller encodes the payloads; everything is still one transaction, committed
only once the payloads are in it. These tests hold that the result is the plan the
payloads-first call writes, on both backends, and that nothing of it stays when any
part fails.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from batcher.core.states import HELD_ELSEWHERE
from batcher.ledger import planning
from batcher.ledger.store import Ledger
from tests.test_ledger import _started, sheet_row

CHUNKS = [
    ("c1", "GBP", 1, ["k3", "k1", "k5"], b"one"),
    ("c2", "GBP", 1, ["k0", "k4"], b"two"),
    ("c3", "GBP", 2, ["k2"], b"three"),
]
SHEET = {2: "k5", 3: "k1", 4: "k4", 5: "k0", 6: "k3", 7: "k2"}  # sheet row -> key


def _synced(ledger: Ledger) -> Ledger:
    rows = [sheet_row(key, n, ref=f"REF-{n}") for n, key in SHEET.items()]
    ledger.sync_rows("b", rows, retry_failed=False)
    return ledger


def _deferred(chunks: list[Any]) -> list[Any]:
    return [(k, cur, att, keys, None) for k, cur, att, keys, _ in chunks]


def _plan_state(ledger: Ledger) -> dict[str, Any]:
    """Everything a plan writes, timestamps aside, in stored order."""
    db = ledger._db
    return {
        "rows": [
            tuple(r)
            for r in db.execute(
                "SELECT row_key, state, chunk_key, error_code FROM rows WHERE batch = 'b'"
                " ORDER BY source_row"
            )
        ],
        "chunks": [
            (r[0], r[1], r[2], r[3], bytes(r[4]), r[5])
            for r in db.execute(
                "SELECT chunk_key, currency, attempt, state, payload, row_count FROM chunks"
                " ORDER BY chunk_key"
            )
        ],
        "chunk_rows": [
            tuple(r)
            for r in db.execute(
                "SELECT chunk_key, row_key, position FROM chunk_rows ORDER BY chunk_key, position"
            )
        ],
        "claims": [
            tuple(r)
            for r in db.execute(
                "SELECT provider, account_id, reference, batch, row_key FROM reference_claims"
                " ORDER BY reference"
            )
        ],
        "events": [
            tuple(r)
            for r in db.execute(
                "SELECT kind, chunk_key, row_key, detail FROM events WHERE kind = 'chunk_planned'"
                " ORDER BY id"
            )
        ],
    }


def test_payloads_made_during_the_save_give_the_same_plan(ledger: Ledger, tmp_path: Path) -> None:
    eager = _synced(_started(Ledger.open(tmp_path / "eager")))
    assert eager.save_plan("b", CHUNKS) == set()

    calls: list[str] = []

    def payloads() -> list[bytes]:
        calls.append(threading.current_thread().name)
        return [c[4] for c in CHUNKS]

    assert _synced(ledger).save_plan("b", _deferred(CHUNKS), payloads=payloads) == set()
    assert calls == [threading.main_thread().name]  # once, on the caller's thread
    assert _plan_state(ledger) == _plan_state(eager)
    eager.close()


def test_a_failure_making_the_payloads_leaves_nothing_planned(ledger: Ledger) -> None:
    _synced(ledger)
    before = _plan_state(ledger)

    def payloads() -> list[bytes]:
        raise RuntimeError("encoder broke")

    with pytest.raises(RuntimeError, match="encoder broke"):
        ledger.save_plan("b", _deferred(CHUNKS), payloads=payloads)
    assert _plan_state(ledger) == before
    # and the ledger plans the same chunks afterwards, as if nothing had happened
    assert (
        ledger.save_plan("b", _deferred(CHUNKS), payloads=lambda: [c[4] for c in CHUNKS]) == set()
    )
    assert [c[0] for c in _plan_state(ledger)["chunks"]] == ["c1", "c2", "c3"]


def test_a_replanned_chunk_with_other_payload_bytes_rolls_the_whole_plan_back(
    ledger: Ledger,
) -> None:
    _synced(ledger)
    ledger.save_plan("b", [CHUNKS[0]])
    before = _plan_state(ledger)

    with pytest.raises(RuntimeError, match="re-planned with different bytes"):
        ledger.save_plan(
            "b", _deferred(CHUNKS), payloads=lambda: [b"changed", CHUNKS[1][4], CHUNKS[2][4]]
        )
    assert _plan_state(ledger) == before
    # the same bytes: the kept chunk stays, the others are planned
    assert (
        ledger.save_plan("b", _deferred(CHUNKS), payloads=lambda: [c[4] for c in CHUNKS]) == set()
    )
    assert [c[0] for c in _plan_state(ledger)["chunks"]] == ["c1", "c2", "c3"]


def test_another_writers_claim_holds_back_only_its_chunk_when_payloads_are_deferred(
    ledger: Ledger,
) -> None:
    ledger.ensure_batch(
        "elsewhere", provider="p", account_id="a", source_path="e.csv", source_sha256="e"
    )
    ledger._db.execute(
        "INSERT INTO reference_claims(provider, account_id, reference, batch, row_key,"
        " claimed_at) VALUES ('p', 'a', 'REF-4', 'elsewhere', 'ghost', '2024-01-01T00:00:00Z')"
    )
    _synced(ledger)  # REF-4 is k4's reference (sheet row 4), in chunk c2

    held = ledger.save_plan("b", _deferred(CHUNKS), payloads=lambda: [c[4] for c in CHUNKS])

    assert held == {"k4"}
    state = _plan_state(ledger)
    assert [c[0] for c in state["chunks"]] == ["c1", "c3"]
    assert {r[0]: r[1] for r in state["rows"]} == {
        "k5": "planned", "k1": "planned", "k4": "held", "k0": "pending", "k3": "planned",
        "k2": "planned",
    }  # fmt: skip
    assert next(r for r in state["rows"] if r[0] == "k4")[3] == HELD_ELSEWHERE
    assert [(c[0], c[1]) for c in state["chunk_rows"]] == [
        ("c1", "k3"), ("c1", "k1"), ("c1", "k5"), ("c3", "k2"),
    ]  # fmt: skip
    assert {c[2]: c[4] for c in state["claims"]}["REF-4"] == "ghost"


def test_sqlite_writes_the_plans_rows_in_a_few_statements_while_the_payloads_are_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per-row statements on the writing thread would wait for the GIL after every row;
    one statement per kind of write runs with the GIL released throughout. The payloads
    here are made only once all three ran on the writing thread: they run meanwhile."""
    if not planning._SQLITE_JSON:
        pytest.skip("this SQLite has no built-in JSON: the plan is written payloads first")
    monkeypatch.setattr(planning, "_SPARE_CPU", True)  # as on a machine with two
    ledger = _started(Ledger.open(tmp_path))
    rows = [sheet_row(f"k{i:04d}", i + 2, ref=f"REF-{i}") for i in range(1_000)]
    ledger.sync_rows("b", rows, retry_failed=False)
    chunks = [
        (f"c{n}", "GBP", 1, [r.row_key for r in rows[n * 100 : (n + 1) * 100]], None)
        for n in range(10)
    ]
    kinds = ("INSERT INTO reference_claims", "INSERT INTO chunk_rows", "UPDATE rows")
    writes: list[tuple[str, str]] = []
    all_written = threading.Event()

    def trace(statement: str) -> None:
        for kind in kinds:
            if statement.startswith(kind):
                writes.append((threading.current_thread().name, kind))
                if kind == kinds[-1]:
                    all_written.set()

    def payloads() -> list[bytes]:
        assert all_written.wait(10)
        return [b"p"] * len(chunks)

    db = ledger._db
    assert isinstance(db, sqlite3.Connection)
    db.set_trace_callback(trace)
    ledger.save_plan("b", chunks, payloads=payloads)
    db.set_trace_callback(None)

    # one statement each for 1,000 rows, all on the writing thread
    assert writes == [("batcher-plan-writes", kind) for kind in kinds]
    assert ledger.count_by_state("b")["planned"] == 1_000
    stored = [r[0] for r in db.execute("SELECT chunk_key FROM rows ORDER BY row_key")]
    assert stored == [f"c{n}" for n in range(10) for _ in range(100)]
    ledger.close()


class _Waiting(threading.Thread):
    """A thread that gets no CPU until `cpu` is set (a busy machine)."""

    cpu = threading.Event()

    def run(self) -> None:
        assert self.cpu.wait(10)
        super().run()


def test_steps_the_thread_has_not_started_are_run_by_the_caller(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _Waiting.cpu.clear()
    monkeypatch.setattr(planning.threading, "Thread", _Waiting)
    ran: list[tuple[str, str]] = []

    def step(name: str) -> Any:
        def run() -> bool:
            ran.append((name, threading.current_thread().name))
            if name == "third":
                _Waiting.cpu.set()  # the thread runs at last, and finds nothing left to do
            return True

        return run

    steps = planning._Steps([step("first"), step("second"), step("third")])

    steps.start()
    assert steps.finish() is True
    main = threading.main_thread().name
    assert ran == [("first", main), ("second", main), ("third", main)]


def test_steps_not_started_when_the_payloads_fail_are_never_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan rolls back: the writes the thread had not started are not made first."""
    if not planning._SQLITE_JSON:
        pytest.skip("this SQLite has no built-in JSON")
    monkeypatch.setattr(planning, "_SPARE_CPU", True)
    ledger = _synced(_started(Ledger.open(tmp_path)))
    _Waiting.cpu.clear()
    monkeypatch.setattr(planning.threading, "Thread", _Waiting)
    writes: list[str] = []
    db = ledger._db
    assert isinstance(db, sqlite3.Connection)
    db.set_trace_callback(
        lambda s: (
            writes.append(s.split("(")[0])
            if s.startswith(
                ("INSERT INTO reference_claims", "INSERT INTO chunk_rows", "UPDATE rows")
            )
            else None
        )
    )

    def payloads() -> list[bytes]:
        threading.Timer(0.2, _Waiting.cpu.set).start()  # the thread gets a CPU later
        raise RuntimeError("encoder broke")

    with pytest.raises(RuntimeError, match="encoder broke"):
        ledger.save_plan("b", _deferred(CHUNKS), payloads=payloads)
    db.set_trace_callback(None)
    assert writes == []
    assert ledger.count_by_state("b")["planned"] == 0
    ledger.close()


def test_a_step_returning_false_stops_the_steps_after_it_on_either_thread() -> None:
    ran: list[str] = []

    def step(name: str, result: bool) -> Any:
        def run() -> bool:
            ran.append(name)
            return result

        return run

    steps = planning._Steps([step("claims", False), step("rows", True), step("more", True)])

    steps.start()
    assert steps.finish() is False
    assert ran == ["claims"]


def test_a_step_that_raises_stops_the_rest_and_is_raised_by_finish() -> None:
    ran: list[str] = []

    def fails() -> bool:
        ran.append("fails")
        raise sqlite3.OperationalError("database or disk is full")

    def after() -> bool:
        ran.append("after")
        return True

    steps = planning._Steps([fails, after])

    steps.start()
    with pytest.raises(sqlite3.OperationalError, match="disk is full"):
        steps.finish()
    assert ran == ["fails"]


def test_the_planned_rows_statement_finds_each_row_by_its_rowid(tmp_path: Path) -> None:
    """Driven by the JSON array, a row at a time by rowid: a plan that scanned the
    batch's rows instead would read the whole array once per row (20,000 rows: minutes)."""
    if not planning._SQLITE_JSON:
        pytest.skip("this SQLite has no built-in JSON")
    ledger = _synced(_started(Ledger.open(tmp_path)))
    plan = [
        r[3]
        for r in ledger._db.execute("EXPLAIN QUERY PLAN " + planning._PLANNED_JSON, ("now", "[]"))
    ]
    assert any("SCAN p VIRTUAL TABLE" in step for step in plan)
    assert any("SEARCH rows USING INTEGER PRIMARY KEY (rowid=?)" in step for step in plan)
    ledger.close()


def test_with_one_cpu_the_same_statements_run_after_the_payloads_on_the_callers_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not planning._SQLITE_JSON:
        pytest.skip("this SQLite has no built-in JSON")
    monkeypatch.setattr(planning, "_SPARE_CPU", False)
    eager = _synced(_started(Ledger.open(tmp_path / "eager")))
    eager.save_plan("b", CHUNKS)
    ledger = _synced(_started(Ledger.open(tmp_path / "one-cpu")))
    order: list[str] = []
    db = ledger._db
    assert isinstance(db, sqlite3.Connection)
    db.set_trace_callback(
        lambda s: (
            order.append(threading.current_thread().name)
            if s.startswith("UPDATE rows SET state = 'planned'")
            else None
        )
    )

    def payloads() -> list[bytes]:
        order.append("payloads")
        return [c[4] for c in CHUNKS]

    assert ledger.save_plan("b", _deferred(CHUNKS), payloads=payloads) == set()
    db.set_trace_callback(None)
    assert order == ["payloads", threading.main_thread().name]
    assert _plan_state(ledger) == _plan_state(eager)
    ledger.close()
    eager.close()


def test_a_ctrl_c_while_the_writing_thread_starts_leaves_nothing_planned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupted as its thread starts (the thread already running), the plan still
    stops the thread's steps before the transaction rolls back: no claim is committed
    on its own."""
    if not planning._SQLITE_JSON:
        pytest.skip("this SQLite has no built-in JSON")
    monkeypatch.setattr(planning, "_SPARE_CPU", True)
    ledger = _synced(_started(Ledger.open(tmp_path)))
    real_start = planning._Steps.start

    def interrupted(self: Any) -> None:
        real_start(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(planning._Steps, "start", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ledger.save_plan("b", _deferred(CHUNKS), payloads=lambda: [b"{}"] * len(CHUNKS))
    assert ledger.count_by_state("b")["planned"] == 0
    claims = ledger._db.execute("SELECT COUNT(*) FROM reference_claims").fetchone()[0]
    assert claims == 0
    ledger.close()


def test_a_reference_holding_a_nul_is_claimed_whole(tmp_path: Path) -> None:
    """SQLite's `->>` ends text at a NUL: such a reference is claimed through bound
    parameters, so its claim is the whole reference, never the text before the NUL."""
    ledger = _started(Ledger.open(tmp_path))
    rows = [sheet_row(key, n, ref=f"REF-{n}\x00tail") for n, key in SHEET.items()]
    ledger.sync_rows("b", rows, retry_failed=False)
    ledger.save_plan("b", _deferred(CHUNKS), payloads=lambda: [c[4] for c in CHUNKS])
    claimed = sorted(r[0] for r in ledger._db.execute("SELECT reference FROM reference_claims"))
    assert claimed == sorted(f"REF-{n}\x00tail" for n in SHEET)
    assert ledger.count_by_state("b")["planned"] == len(SHEET)
    ledger.close()
