"""The ledger's SQLite schema and its migrations. `events` is append-only, enforced by triggers.

Every statement the runner issues per chunk or per row finds its rows through an
index that narrows them to that chunk or row, so a run costs the same per row at
any size (tests/test_ledger_plans.py holds every statement to that).
"""

from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    batch TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    account_id TEXT NOT NULL,
    source_path TEXT NOT NULL,
    source_sha256 TEXT NOT NULL,
    sheet_headers TEXT NOT NULL DEFAULT '[]',   -- JSON: the sheet's headers in file order
    sheet_columns TEXT NOT NULL DEFAULT '{}',   -- JSON: canonical field -> the user's header
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    recovered_at TEXT                -- when the provider was last asked about this batch's rows
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    batch TEXT NOT NULL REFERENCES batches(batch),
    command TEXT NOT NULL,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    exit_code INTEGER,
    summary TEXT
);
CREATE TABLE IF NOT EXISTS rows (
    batch TEXT NOT NULL REFERENCES batches(batch),
    row_key TEXT NOT NULL,
    source_row INTEGER NOT NULL,
    in_sheet INTEGER NOT NULL DEFAULT 1,
    reference TEXT,
    content_hash TEXT NOT NULL,
    fields TEXT NOT NULL,            -- JSON: canonical order fields as text
    passthrough TEXT NOT NULL,       -- JSON: the sheet's other columns
    currency TEXT NOT NULL,
    face_value TEXT NOT NULL,
    est_cost TEXT,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 1,
    retry_group TEXT NOT NULL DEFAULT '',
    failure_kind TEXT,               -- retryable | permanent
    error_code TEXT,
    error_message TEXT,
    provider_request_id TEXT,
    conflict TEXT,                   -- set when the sheet changed a row after it succeeded
    chunk_key TEXT,
    order_request_id TEXT,
    order_id TEXT,
    transaction_id TEXT,
    cost TEXT,
    cost_currency TEXT,
    voucher_last4 TEXT,              -- never the code itself: codes stay at the provider
    provider_status TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    succeeded_at TEXT,
    PRIMARY KEY (batch, row_key)
);
CREATE INDEX IF NOT EXISTS rows_by_state ON rows(batch, state);
CREATE INDEX IF NOT EXISTS rows_by_reference ON rows(reference, state);
-- every chunk transition updates its rows by chunk: without this, a scan of the batch
CREATE INDEX IF NOT EXISTS rows_by_chunk ON rows(batch, chunk_key);
CREATE TABLE IF NOT EXISTS chunks (
    chunk_key TEXT PRIMARY KEY,
    batch TEXT NOT NULL REFERENCES batches(batch),
    currency TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    state TEXT NOT NULL,             -- planned|sending|unknown|accepted|succeeded|failed
    payload BLOB NOT NULL,           -- the exact bytes; frozen once sent
    row_count INTEGER NOT NULL,
    request_id TEXT,
    send_count INTEGER NOT NULL DEFAULT 0,
    poll_count INTEGER NOT NULL DEFAULT 0,
    error_code TEXT,
    error_message TEXT,
    created_at TEXT NOT NULL,
    first_sent_at TEXT,
    last_sent_at TEXT,
    accepted_at TEXT,
    finished_at TEXT
);
CREATE INDEX IF NOT EXISTS chunks_by_state ON chunks(batch, state);
CREATE TABLE IF NOT EXISTS chunk_rows (
    chunk_key TEXT NOT NULL REFERENCES chunks(chunk_key),
    row_key TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (chunk_key, row_key)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL,
    batch TEXT NOT NULL,
    run_id TEXT,
    kind TEXT NOT NULL,
    chunk_key TEXT,
    row_key TEXT,
    detail TEXT
);
CREATE TRIGGER IF NOT EXISTS events_append_only_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_append_only_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
"""

#: One provider order (request) belongs to exactly one chunk, across restarts: the
#: index makes a second claim fail inside the transaction that would record it.
ONE_CHUNK_PER_REQUEST = (
    "CREATE UNIQUE INDEX IF NOT EXISTS chunks_one_per_request ON chunks(request_id)"
    " WHERE request_id IS NOT NULL"
)


def migrate(db: Any, found: int) -> list[str]:
    """Bring a ledger written at schema `found` up to SCHEMA_VERSION, inside the caller's
    transaction. Returns what was repaired, for the events table."""
    repaired: list[str] = []
    if found < 2:
        columns = {r[1] for r in db.execute("PRAGMA table_info(batches)")}
        if "recovered_at" not in columns:
            db.execute("ALTER TABLE batches ADD COLUMN recovered_at TEXT")
        # Version 1 could tie one payout order to two chunks (an in-memory claim set).
        # The chunk that claimed it later gives it up and is resolved again: its rows
        # go back to `unknown`, so the next run asks the provider instead of trusting it.
        doubled = db.execute(
            "SELECT chunk_key FROM chunks c WHERE request_id IS NOT NULL AND EXISTS ("
            " SELECT 1 FROM chunks o WHERE o.request_id = c.request_id"
            " AND (o.accepted_at, o.chunk_key) < (c.accepted_at, c.chunk_key))"
        ).fetchall()
        for (key,) in doubled:
            db.execute(
                "UPDATE chunks SET state = 'unknown', request_id = NULL, accepted_at = NULL,"
                " error_message = 'its provider order was also claimed by another chunk'"
                " WHERE chunk_key = ?",
                (key,),
            )
            db.execute(
                "UPDATE rows SET state = 'unknown', order_request_id = NULL"
                " WHERE chunk_key = ? AND state IN ('accepted', 'unknown', 'sending')",
                (key,),
            )
            repaired.append(key)
        # Each chunk's row updates scanned the whole batch: quadratic in the batch size.
        db.execute("CREATE INDEX IF NOT EXISTS rows_by_chunk ON rows(batch, chunk_key)")
    db.execute(ONE_CHUNK_PER_REQUEST)
    return repaired
