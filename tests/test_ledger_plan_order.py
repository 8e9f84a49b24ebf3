"""Planning writes a large batch's rows in the order the sheet sync inserted them.

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
    assert updated == [keys[n] for n in sorted(keys)]  # one sweep, in sheet order
    rows = {r.row_key: r for r in ledger.rows("b", state="planned")}
    assert {k: rows[k].chunk_key for k in rows} == {
        "k0": "c1", "k1": "c1", "k2": "c1", "k3": "c2", "k4": "c2", "k5": "c2",
    }  # fmt: skip
    ledger.close()
