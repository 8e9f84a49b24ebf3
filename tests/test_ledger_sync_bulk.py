"""The bulk sheet sync against the per-row sync it replaced (tests/ledger_sync_oracle.py):
same counts, same rows, same events, on generated sheets, ledger states and edits;
and an unchanged sheet writes nothing."""

from __future__ import annotations

import json
import sqlite3
import tempfile
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batcher.ledger.store import Ledger, SheetRow
from batcher.ledger.sync import SYNC_SLICE_ROWS
from tests.ledger_sync_oracle import PerRowLedger

STATES = ["pending", "planned", "accepted", "unknown", "succeeded", "failed", "invalid", "skipped"]


def sheet_row(
    i: int, source_row: int, *, content: int, valid: bool, ref: bool, note: str
) -> SheetRow:
    return SheetRow(
        row_key=f"k{i}",
        source_row=source_row,
        reference=f"R-{i}" if ref else None,
        content_hash=f"h{i}-{content}",
        fields={"recipient_email": f"p{i}@x.com", "product_code": "P", "amount": str(content)},
        passthrough={"Cost centre": note},
        currency="GBP",
        face_value=Decimal(10 + content),
        est_cost=None if content % 2 else Decimal("9.50"),
        valid=valid,
        error_code="" if valid else "bad_email",
        error_message="" if valid else "not an email",
    )


row_spec = st.fixed_dictionaries(
    {
        "content": st.integers(0, 2),
        "valid": st.booleans(),
        "ref": st.booleans(),
        "note": st.sampled_from(["CC-1", "CC-2"]),
        # what happened to the row in the ledger between the two syncs
        "state": st.sampled_from(STATES),
        "kind": st.sampled_from([None, "retryable", "permanent"]),
        # and what the second sheet does with it
        "edit": st.sampled_from(["same", "content", "validity", "note", "gone"]),
    }
)


def _ledger(cls: type[Ledger], folder: Path) -> Ledger:
    led = cls.open(folder)
    for batch in ("b", "other"):
        led.ensure_batch(
            batch, provider="p", account_id="a", source_path="s.csv", source_sha256=batch * 8
        )
    led.start_run("b", "test")
    return led


def _snapshot(led: Ledger) -> tuple[list[dict[str, Any]], list[tuple[Any, ...]]]:
    db: sqlite3.Connection = led._db  # the test reads the tables as they are
    rows = [
        {k: v for k, v in dict(r).items() if k not in ("created_at", "updated_at")}
        for r in db.execute("SELECT * FROM rows ORDER BY batch, row_key")
    ]
    events = [
        (r["kind"], r["row_key"], r["detail"])
        for r in db.execute("SELECT * FROM events WHERE kind != 'rows_resynced' ORDER BY id")
    ]
    return rows, events


def _apply_states(led: Ledger, specs: list[dict[str, Any]]) -> None:
    """Put rows in the states a run would leave them in (the ledger's own writes are
    tested elsewhere; here only the sync's answer to each state matters)."""
    db: sqlite3.Connection = led._db
    for i, spec in enumerate(specs):
        kind = spec["kind"] if spec["state"] == "failed" else None
        db.execute(
            "UPDATE rows SET state = ?, failure_kind = ?, chunk_key = ? WHERE row_key = ?"
            " AND batch = 'b'",
            (spec["state"], kind, f"c{i}" if spec["state"] != "pending" else None, f"k{i}"),
        )
        if spec["state"] == "succeeded" and spec["ref"] and i % 3 == 0:
            # the same reference also ordered by another batch
            db.execute(
                "INSERT INTO rows(batch, row_key, source_row, reference, content_hash, fields,"
                " passthrough, currency, face_value, state, created_at, updated_at)"
                " VALUES ('other', ?, 1, ?, 'x', '{}', '{}', 'GBP', '1', 'succeeded', 't', 't')",
                (f"o{i}", f"R-{i + 1}"),
            )


def _second_sheet(specs: list[dict[str, Any]], extra: int) -> list[SheetRow]:
    rows = []
    for i, spec in enumerate(specs):
        edit = spec["edit"]
        if edit == "gone":
            continue
        rows.append(
            sheet_row(
                i,
                0,
                content=spec["content"] + (edit == "content"),
                valid=spec["valid"] != (edit == "validity"),
                ref=spec["ref"],
                note=spec["note"] + ("x" if edit == "note" else ""),
            )
        )
    rows += [
        sheet_row(len(specs) + j, 0, content=0, valid=True, ref=True, note="new")
        for j in range(extra)
    ]
    rows.reverse()  # rows move in the sheet: source_row follows
    return [replace(r, source_row=n + 2) for n, r in enumerate(rows)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=st.lists(row_spec, min_size=1, max_size=12),
    extra=st.integers(0, 3),
    retry_failed=st.booleans(),
    slice_rows=st.sampled_from([1, 2, 5, SYNC_SLICE_ROWS]),
)
def test_bulk_sync_matches_the_per_row_sync(
    specs: list[dict[str, Any]], extra: int, retry_failed: bool, slice_rows: int
) -> None:
    """The bulk sync reads the sheet as an iterator, a slice at a time (of every size
    down to one row): the ledger it leaves is the per-row oracle's."""
    first = [
        sheet_row(i, i + 2, content=s["content"], valid=s["valid"], ref=s["ref"], note=s["note"])
        for i, s in enumerate(specs)
    ]
    second = _second_sheet(specs, extra)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for cls in (Ledger, PerRowLedger):
            led = _ledger(cls, Path(tmp) / cls.__name__)
            feed = iter if cls is Ledger else list  # the oracle takes a list
            try:
                with mock.patch("batcher.ledger.sync.SYNC_SLICE_ROWS", slice_rows):
                    assert led.sync_rows("b", feed(first), retry_failed=False).new == len(first)
                    _apply_states(led, specs)
                    report = led.sync_rows("b", feed(second), retry_failed=retry_failed)
                    again = led.sync_rows("b", feed(second), retry_failed=False)
                results.append((report, again, _snapshot(led)))
            finally:
                led.close()
    bulk, per_row = results
    assert bulk[0] == per_row[0]  # the SyncReport of the edit
    assert bulk[1] == per_row[1]  # and of the rerun that follows
    assert bulk[2][0] == per_row[2][0]  # every column of every row but the times
    assert bulk[2][1] == per_row[2][1]  # the same events, in the same order


def test_an_unchanged_sheet_writes_nothing(tmp_path: Path) -> None:
    led = _ledger(Ledger, tmp_path)
    rows = [sheet_row(i, i + 2, content=0, valid=True, ref=True, note="n") for i in range(50)]
    led.sync_rows("b", rows, retry_failed=False)
    db: sqlite3.Connection = led._db
    before = db.total_changes
    last_event = db.execute("SELECT MAX(id) FROM events").fetchone()[0]
    report = led.sync_rows("b", rows, retry_failed=False)
    assert report.unchanged == 50 and report.new == report.changed == report.gone == 0
    assert db.total_changes == before
    assert db.execute("SELECT MAX(id) FROM events").fetchone()[0] == last_event


def test_a_moved_or_departed_row_is_recorded(tmp_path: Path) -> None:
    """Changes no row event names (a row moved, another column edited, a row left)
    still leave an event, so "nothing changed since the report" can be proven."""
    led = _ledger(Ledger, tmp_path)
    rows = [sheet_row(i, i + 2, content=0, valid=True, ref=True, note="n") for i in range(3)]
    led.sync_rows("b", rows, retry_failed=False)
    moved = [replace(rows[1], passthrough={"Cost centre": "m"}), rows[0]]
    report = led.sync_rows("b", moved, retry_failed=False)
    assert report.gone == 1 and report.unchanged == 2
    db: sqlite3.Connection = led._db
    detail = db.execute("SELECT detail FROM events ORDER BY id DESC LIMIT 1").fetchone()[0]
    assert json.loads(detail) == {"left_sheet": 1, "moved": 1}
    stored = {r[0]: r[1:] for r in db.execute("SELECT row_key, in_sheet, passthrough FROM rows")}
    assert stored["k2"][0] == 0 and json.loads(stored["k1"][1]) == {"Cost centre": "m"}
