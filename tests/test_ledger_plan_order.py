"""Planning writes a large batch's rows in the order they are stored in.

Chunks hold rows in row-key order, which is scattered over the table (and the batch's
indexes) in sheet order: updated chunk by chunk, a million-row batch's plan touched a
random table page per row. `save_plan` marks every planned row in one sweep in sheet
order instead, in the same transaction as the chunks (the plan is still durable, all
of it, before any send).
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from batcher.core.states import HELD_ELSEWHERE
from batcher.ledger.store import Ledger
from tests.test_ledger import _started, sheet_row

PLANNED = re.compile(r"^UPDATE rows SET state = 'planned'.*?row_key = '(\w+)'", re.DOTALL)


def test_planned_rows_are_written_in_sheet_order_across_chunks(tmp_path: Path) -> None:
    ledger = _started(Ledger.open(tmp_path))
    # Sheet rows 2..7; key order (what chunks follow) is not sheet order.
    keys = {2: "k5", 3: "k1", 4: "k4", 5: "k0", 6: "k3", 7: "k2"}
    ledger.sync_rows(
        "b", [sheet_row(key, n, ref=f"REF-{n}") for n, key in keys.items()], retry_failed=False
    )
    statements: list[str] = []
    db = ledger._db
    assert isinstance(db, sqlite3.Connection)
    db.set_trace_callback(statements.append)  # bound values expanded inline
    held = ledger.save_plan(
        "b",
        [
            ("c1", "GBP", 1, ["k0", "k1", "k2"], b"x"),  # sheet rows 5, 3, 7
            ("c2", "GBP", 1, ["k3", "k4", "k5"], b"y"),  # sheet rows 6, 4, 2
        ],
    )
    db.set_trace_callback(None)

    assert held == set()
    updated = [m.group(1) for s in statements if (m := PLANNED.match(s))]
    # one sweep, in the order stored (a new batch is stored in chunk order, connection.py)
    stored = [r[0] for r in db.execute("SELECT row_key FROM rows WHERE batch = 'b' ORDER BY rowid")]
    assert updated == stored
    # each by its rowid, read with the row: no search of the key's index per row
    assert all("WHERE rowid = " in s for s in statements if PLANNED.match(s))
    rows = {r.row_key: r for r in ledger.rows("b", state="planned")}
    assert {k: rows[k].chunk_key for k in rows} == {
        "k0": "c1", "k1": "c1", "k2": "c1", "k3": "c2", "k4": "c2", "k5": "c2",
    }  # fmt: skip
    ledger.close()


CLAIMED = re.compile(r"^INSERT INTO reference_claims\(.*?VALUES \('p', 'a', '([\w-]+)'", re.DOTALL)


def test_the_references_of_all_the_chunks_are_claimed_in_one_pass_in_key_order(
    tmp_path: Path,
) -> None:
    """The claims' primary key is in reference order, which a large batch's chunks
    scatter: they are claimed for the whole call at once, in that order."""
    ledger = _started(Ledger.open(tmp_path))
    refs = {"k0": "REF-E", "k1": "REF-B", "k2": "REF-F", "k3": "REF-A", "k4": "REF-D"}
    ledger.sync_rows(
        "b", [sheet_row(k, n, ref=refs[k]) for n, k in enumerate(refs, 2)], retry_failed=False
    )
    statements: list[str] = []
    db = ledger._db
    assert isinstance(db, sqlite3.Connection)
    db.set_trace_callback(statements.append)
    held = ledger.save_plan(
        "b", [("c1", "GBP", 1, ["k0", "k1", "k2"], b"x"), ("c2", "GBP", 1, ["k3", "k4"], b"y")]
    )
    db.set_trace_callback(None)

    assert held == set()
    claimed = [m.group(1) for s in statements if (m := CLAIMED.match(s))]
    assert claimed == sorted(refs.values())
    owners = dict(ledger._db.execute("SELECT reference, row_key FROM reference_claims"))
    assert owners == {ref: key for key, ref in refs.items()}
    ledger.close()


def test_another_writers_claim_holds_back_only_the_chunk_holding_that_reference(
    ledger: Ledger,
) -> None:
    """All claims at once fail on one foreign claim: the call then claims chunk by chunk,
    so the other chunks are saved with their claims and only that chunk waits."""
    ledger.ensure_batch(
        "elsewhere", provider="p", account_id="a", source_path="e.csv", source_sha256="e"
    )
    ledger._db.execute(
        "INSERT INTO reference_claims(provider, account_id, reference, batch, row_key,"
        " claimed_at) VALUES ('p', 'a', 'REF-3', 'elsewhere', 'ghost', '2024-01-01T00:00:00Z')"
    )
    rows = [sheet_row(f"r{i}", i + 1, ref=f"REF-{i}") for i in range(1, 5)]
    ledger.sync_rows("b", rows, retry_failed=False)

    held = ledger.save_plan(
        "b", [("c1", "GBP", 1, ["r1", "r2"], b"x"), ("c2", "GBP", 1, ["r3", "r4"], b"y")]
    )

    assert held == {"r3"}
    assert [c.chunk_key for c in ledger.chunks("b", ["planned"])] == ["c1"]
    owners = {
        r[0]: (r[1], r[2])
        for r in ledger._db.execute("SELECT reference, batch, row_key FROM reference_claims")
    }
    assert owners == {
        "REF-1": ("b", "r1"), "REF-2": ("b", "r2"), "REF-3": ("elsewhere", "ghost"),
    }  # fmt: skip
    after = ledger.rows_by_key("b", ["r1", "r2", "r3", "r4"])
    assert [after[k].state for k in ("r1", "r2", "r3", "r4")] == [
        "planned", "planned", "held", "pending",
    ]  # fmt: skip
    assert after["r3"].error_code == HELD_ELSEWHERE
