"""PostgreSQL's plans for a run's per-chunk writes stay per chunk, on a fresh ledger too.

The SQLite twin is tests/test_ledger_plans.py. On PostgreSQL the risk is the
planner's statistics: a table filled by one sync has none until autovacuum
runs, and with none the planner reads a chunk's rows by `batch` alone and
filters the rest, so each chunk reads the whole batch (a 5,000-row run went
from seconds to over a minute). Here a fresh database gets one 2,000-row
sheet, its chunks are planned, sent, accepted and settled through the ledger
API with every statement traced, and each distinct statement is explained
against the real server: none may scan a growing table, and none may look up
rows by key or reference in a filter instead of an index condition.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import pytest

from batcher.ledger import postgres
from batcher.ledger.location import parse_ledger_url
from batcher.ledger.store import Ledger, RowOutcome
from tests.test_ledger import _started, sheet_row

GROWING = ("rows", "chunks", "chunk_rows", "reference_claims", "events")
SEQ_SCAN = re.compile(rf"Seq Scan on ({'|'.join(GROWING)})\b")
# a key list applied as a filter: the index was searched by a prefix (the batch) only
KEYS_FILTERED = re.compile(r"Filter: .*\b(row_key|reference|chunk_key) = ANY")
PER_CHUNK = re.compile(r"^\s*(SELECT|UPDATE|DELETE)\b", re.IGNORECASE)


def test_per_chunk_statements_use_their_indexes_on_a_fresh_database(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows, chunk = 2000, 100
    seen: dict[str, Sequence[Any]] = {}
    real_execute = postgres.PostgresDatabase.execute

    def traced(self: Any, sql: str, parameters: Sequence[Any] = (), /) -> Any:
        if PER_CHUNK.match(sql):
            seen[sql] = parameters  # the last call of each: the batch is full by then
        return real_execute(self, sql, parameters)

    ledger = _started(Ledger(parse_ledger_url(pg_url)))
    try:
        ledger.sync_rows(
            "b",
            [sheet_row(f"k{i}", i + 2, ref=f"REF-{i}") for i in range(rows)],
            retry_failed=False,
        )
        monkeypatch.setattr(postgres.PostgresDatabase, "execute", traced)
        for n in range(0, rows, chunk):
            keys = [f"k{i}" for i in range(n, n + chunk)]
            key = f"c{n}"
            ledger.save_plan("b", [(key, "GBP", 1, keys, b"{}")])
            ledger.mark_sending("b", key)
            ledger.mark_accepted("b", key, f"req-{n}")
            outcomes = [RowOutcome(k, "succeeded", order_id=f"o-{k}") for k in keys]
            ledger.settle_chunk("b", key, "succeeded", outcomes)
        monkeypatch.undo()
        assert len(seen) >= 5, sorted(seen)  # the trace saw the chunk statements
        bad = {}
        db = ledger._db
        for sql, parameters in seen.items():
            db.execute("BEGIN")
            try:
                plan = "\n".join(r[0] for r in db.execute("EXPLAIN " + sql, parameters))
            finally:
                db.execute("ROLLBACK")
            if SEQ_SCAN.search(plan) or KEYS_FILTERED.search(plan):
                bad[" ".join(sql.split())[:120]] = plan
        assert not bad, "\n\n".join(f"{s}\n{p}" for s, p in bad.items())
    finally:
        ledger.close()
