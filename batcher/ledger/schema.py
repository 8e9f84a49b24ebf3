"""The ledger's schema, written once in SQLite's dialect, and its versioned migrations.

`events` is append-only, enforced by triggers. Every statement the runner issues
per chunk or per row finds its rows through an index that narrows them to that
chunk or row, so a run costs the same per row at any size
(tests/test_ledger_plans.py holds every statement to that).

Migrations: the version is `meta.schema_version`. The script below is the
schema as of BASE_VERSION; a new database gets it (in its dialect) and starts
there. Each later version is one step in STEPS, run in order inside the same
write transaction that records the new version, so an upgrade is all or
nothing on both backends. Version 1 existed only on SQLite. The PostgreSQL DDL
is derived from the SQLite script by `postgres_statements` (BLOB -> BYTEA,
AUTOINCREMENT -> identity, TEXT compared byte-wise like SQLite, triggers in
PL/pgSQL), so a column is declared in one place. A later step (a work queue, a
shared rate limit) adds its tables for both dialects the same way.

When they run: SQLite migrates on open, as an embedded single-user file must
(`make demo` needs nothing). PostgreSQL refuses to open an older or empty
database and says to run `batcher ledger migrate`: a shared database is used by
several processes on several machines, possibly of different versions, and one
of them upgrading the schema under the others on start-up is how a fleet breaks
at 2 a.m.; it also keeps DDL rights away from the workers' role.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable

from batcher.core.clock import utc_now
from batcher.core.states import CLAIMING_STATES, HELD_ELSEWHERE, RowState
from batcher.ledger.backend import Database
from batcher.ledger.location import Backend

SCHEMA_VERSION = 7
#: The version the SCHEMA script below creates: a new database starts here.
BASE_VERSION = 2
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
-- The three row indexes as of version 7 (ROW_INDEXES_V7 says why these columns).
CREATE INDEX IF NOT EXISTS rows_by_state ON rows(batch, state, chunk_key);
CREATE INDEX IF NOT EXISTS rows_by_reference ON rows(reference, batch);
-- every chunk transition updates its rows by chunk: without this, a scan of the batch
CREATE INDEX IF NOT EXISTS rows_by_chunk ON rows(batch, chunk_key, state);
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


WEBHOOK_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_events (
    id INTEGER PRIMARY KEY,
    delivery_key TEXT UNIQUE,        -- sha256 of the raw body; NULL when rejected
    provider TEXT NOT NULL,
    verdict TEXT NOT NULL,           -- accepted | rejected
    reason TEXT,                     -- why it was rejected
    event TEXT,
    request_id TEXT,
    status TEXT,
    terminal INTEGER NOT NULL DEFAULT 0,
    order_ids TEXT,                  -- JSON array
    payload TEXT,                    -- redacted JSON; NULL when rejected
    received_at TEXT NOT NULL,
    last_received_at TEXT NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS webhook_events_by_request ON webhook_events(request_id, terminal);
"""

#: Version 4: one claim per provider account and reference, taken in the write
#: transaction that plans the row (see `planning.py`). The primary key is what makes
#: two plans of one reference impossible, whichever process or machine writes them.
CLAIMS_SCHEMA = """
CREATE TABLE IF NOT EXISTS reference_claims (
    provider TEXT NOT NULL,
    account_id TEXT NOT NULL,
    reference TEXT NOT NULL,
    batch TEXT NOT NULL REFERENCES batches(batch),
    row_key TEXT NOT NULL,           -- the row of `batch` that holds the reference
    claimed_at TEXT NOT NULL,
    PRIMARY KEY (provider, account_id, reference)
);
CREATE INDEX IF NOT EXISTS reference_claims_by_row ON reference_claims(batch, row_key);
"""

#: Version 5: the request schedule processes on one key share (`rate_slots.py`).
#: Used on PostgreSQL only; SQLite has the table too, so both schemas stay one.
RATE_SLOTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS rate_slots (
    key_fingerprint TEXT PRIMARY KEY,       -- SHA-256 of base URL and key: never the key
    last_slot DOUBLE PRECISION NOT NULL,    -- epoch seconds, on the database's clock
    interval_seconds DOUBLE PRECISION NOT NULL,  -- the last asker's spacing
    updated_at TEXT NOT NULL
);
"""

#: Tables in the order their foreign keys allow them to be filled.
TABLES = (
    "meta",
    "batches",
    "runs",
    "rows",
    "reference_claims",
    "chunks",
    "chunk_rows",
    "events",
    "webhook_events",
)

_PG_APPEND_ONLY = (
    "CREATE OR REPLACE FUNCTION batcher_events_append_only() RETURNS trigger"
    " LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'events are append-only'; END $$",
    "CREATE OR REPLACE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events"
    " FOR EACH ROW EXECUTE FUNCTION batcher_events_append_only()",
    "CREATE OR REPLACE TRIGGER events_append_only_truncate BEFORE TRUNCATE ON events"
    " FOR EACH STATEMENT EXECUTE FUNCTION batcher_events_append_only()",
)
# (SQLite spelling, PostgreSQL spelling), applied in order to each statement.
_PG_SPELLINGS = (
    (re.compile(r"--[^\n]*"), ""),
    (re.compile(r"\bINTEGER PRIMARY KEY( AUTOINCREMENT)?"),
     "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
    # byte order, as SQLite compares text: keys and timestamps sort the same on both
    (re.compile(r"\bTEXT\b"), 'TEXT COLLATE "C"'),
)  # fmt: skip


def statements(script: str) -> list[str]:
    """The script's statements, one by one (triggers hold inner semicolons)."""
    found, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            found.append(current.strip())
            current = ""
    return [s for s in found if s]


def postgres_statements(script: str) -> list[str]:
    """The SQLite DDL `script` in PostgreSQL's dialect (its triggers are replaced)."""
    out = []
    for statement in statements(script):
        if statement.upper().startswith("CREATE TRIGGER"):
            continue  # SQLite's append-only triggers: see _PG_APPEND_ONLY
        for pattern, spelling in _PG_SPELLINGS:
            statement = pattern.sub(spelling, statement)
        out.append(statement.rstrip(";").strip())
    return out


def base_statements(backend: Backend) -> list[str]:
    """The schema as of BASE_VERSION, webhook evidence included, in `backend`'s dialect."""
    if backend == "postgresql":
        return [
            *postgres_statements(SCHEMA + WEBHOOK_SCHEMA),
            ONE_CHUNK_PER_REQUEST,
            *_PG_APPEND_ONLY,
        ]
    return statements(SCHEMA + WEBHOOK_SCHEMA)


#: Names the columns of a table: the dialect's catalog lookup, given by the caller.
ColumnsOf = Callable[[str], set[str]]


def _to_v2(db: Database, backend: Backend, columns_of: ColumnsOf) -> list[str]:
    """Version 1 -> 2 (SQLite only: PostgreSQL starts at 2). Returns the chunks whose
    order claim was repaired, for the events table."""
    repaired: list[str] = []
    if "recovered_at" not in columns_of("batches"):
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
    return repaired


#: The work queue of `batcher enqueue` and `batcher worker` (schema version 3). It is
#: used on PostgreSQL only (a queue is for several machines), but exists on both
#: backends so that the schema stays one. One open item (queued or running) per batch.
QUEUE_SCHEMA = """
CREATE TABLE IF NOT EXISTS batch_queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    batch TEXT NOT NULL,
    provider TEXT NOT NULL,
    account TEXT,                    -- a named account of batcher.toml; NULL: the defaults
    sheet_path TEXT NOT NULL,        -- absolute, as the workers will read it
    sheet_sha256 TEXT NOT NULL,      -- the bytes that were validated at enqueue
    options TEXT NOT NULL,           -- JSON: the run options; never a key or secret
    state TEXT NOT NULL,             -- queued | running | done | failed | held
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    worker TEXT,                     -- the claiming worker's id
    heartbeat_at TEXT,
    not_before TEXT NOT NULL,        -- a retry's backoff: not claimed before this
    enqueued_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    exit_code INTEGER,
    summary TEXT,                    -- JSON: the last run's outcome in brief
    message TEXT
);
CREATE INDEX IF NOT EXISTS batch_queue_by_state ON batch_queue(state, not_before, id);
CREATE UNIQUE INDEX IF NOT EXISTS batch_queue_one_open ON batch_queue(batch)
    WHERE state IN ('queued', 'running');
"""


def _to_v3_queue(db: Database, backend: Backend, columns_of: ColumnsOf) -> list[str]:
    """Version 2 -> 3: the work queue (self-contained: its DDL is QUEUE_SCHEMA)."""
    del columns_of
    create_tables(db, backend, QUEUE_SCHEMA)
    return []


def create_tables(db: Database, backend: Backend, script: str) -> None:
    """Run a step's DDL `script` (SQLite's dialect) in `backend`'s dialect."""
    for statement in postgres_statements(script) if backend == "postgresql" else statements(script):
        db.execute(statement)


def in_claiming_states() -> str:
    """The SQL list of CLAIMING_STATES, for `state IN (...)` (fixed names, no input)."""
    return ", ".join(f"'{state.value}'" for state in CLAIMING_STATES)


def _to_v4_claims(db: Database, backend: Backend, columns_of: ColumnsOf) -> list[str]:
    """Version 3 -> 4: the `reference_claims` table, filled from the rows already there.

    Every row with a reference in a claiming state (CLAIMING_STATES) gets its account's
    claim, unless another row of the account already stands for that reference. Until
    version 4 two such rows in different batches could only come from ledgers that
    were merged (`batcher ledger copy` of two operators' files into one database) or
    from runs that did not share a ledger; the claim then goes to one of them, chosen
    so that nothing already at the provider is stopped or ordered again:

    1. a row that was sent (in flight or succeeded) before one that is only planned:
       a planned row can still be stopped, a sent one cannot;
    2. then the earliest batch (its `created_at`, then its name), then the row key.

    The other rows are never rewritten as if they had not happened:
    - a later duplicate that is only `planned` (its bytes never left) becomes `held`
      with HELD_ELSEWHERE, naming the batch that holds the claim, exactly as if the
      claim had existed when it was planned; its chunk no longer holds its rows as
      planned, so the next run discards that chunk and plans the rest again;
    - a later duplicate that was sent (in flight, or succeeded) stays as it is: the
      provider has it, and the run resolves it as usual. It may well be a real second
      order of that reference, placed before this version existed: a
      `reference_claim_duplicate` event in its batch names the batch holding the
      claim, so the report shows it to a person.
    Rows of the same batch never compete (a sheet cannot repeat a reference).
    """
    create_tables(db, backend, CLAIMS_SCHEMA)
    found = db.execute(
        "SELECT b.provider, b.account_id, r.reference, r.batch, r.row_key, r.state,"
        " b.created_at FROM rows r JOIN batches b ON b.batch = r.batch"
        f" WHERE r.reference IS NOT NULL AND r.state IN ({in_claiming_states()})"
    ).fetchall()
    now = utc_now()

    def rank(r: tuple[str, ...]) -> tuple[str, ...]:
        unsent = "1" if r[5] == RowState.PLANNED else "0"
        return (r[0], r[1], r[2], unsent, r[6], r[3], r[4])

    winner: dict[tuple[str, str, str], tuple[str, ...]] = {}
    for row in sorted((tuple(r) for r in found), key=rank):
        provider, account, reference, batch, row_key, state, _created = row
        held_by = winner.get((provider, account, reference))
        if held_by is None:
            winner[(provider, account, reference)] = row
            db.execute(
                "INSERT INTO reference_claims(provider, account_id, reference, batch, row_key,"
                " claimed_at) VALUES (?, ?, ?, ?, ?, ?)",
                (provider, account, reference, batch, row_key, now),
            )
            continue
        other = held_by[3]
        if other == batch:
            continue
        if state == RowState.PLANNED:
            db.execute(
                "UPDATE rows SET state = 'held', error_code = ?, error_message = ?,"
                " failure_kind = NULL, updated_at = ? WHERE batch = ? AND row_key = ?",
                (HELD_ELSEWHERE, held_elsewhere_message(reference, "claimed", other), now,
                 batch, row_key),
            )  # fmt: skip
            kind = "row_held"
        else:
            kind = "reference_claim_duplicate"
        db.execute(
            "INSERT INTO events(ts, batch, kind, row_key, detail) VALUES (?, ?, ?, ?, ?)",
            (now, batch, kind, row_key,
             json.dumps({"code": HELD_ELSEWHERE, "other_batch": other}, sort_keys=True)),
        )  # fmt: skip
    return []


def held_elsewhere_message(reference: str, state: str, other: str) -> str:
    """The message of a row held because batch `other` holds its reference."""
    return (
        f"reference {reference!r} is {state} in batch {other!r}; it is not ordered here:"
        f" finish or check batch {other!r}, then rerun this batch (it is then skipped,"
        " or ordered if it failed there)"
    )


def _to_v5_rate_slots(db: Database, backend: Backend, columns_of: ColumnsOf) -> list[str]:
    """Version 4 -> 5: the `rate_slots` table, empty (a schedule starts with its first
    request). Not in TABLES: a schedule is of the moment, never copied."""
    create_tables(db, backend, RATE_SLOTS_SCHEMA)
    return []


#: error_codes older builds gave rows they held for a person, as `failed` rows
_HELD_AS_FAILED = ("held_possible_duplicate", "held_ambiguous_provider_match")
#: ... and as `pending` rows (a reference another batch of the account held)
_HELD_AS_PENDING = ("held_reference_in_another_batch",)


def _held_rows_to_held_state(db: Database) -> None:
    """Rows older builds held for a person move to `held`, the state that means it.

    Before `held` existed, a possible duplicate or an ambiguous provider match was a
    `failed` row (which `--retry-failed` would order, and `failed_rows.csv` would feed
    into a new sheet) and a reference another batch held was a `pending` row with a
    reason (which a run could plan). Each batch whose rows moved gets an event, so a
    kept report is not taken for the ledger's current state.
    """
    batches = [r[0] for r in db.execute("SELECT batch FROM batches ORDER BY batch")]
    for states, codes in (("failed", _HELD_AS_FAILED), ("pending", _HELD_AS_PENDING)):
        where = f"batch = ? AND state = ? AND error_code IN ({','.join('?' * len(codes))})"
        for batch in batches:  # by batch and state: the rows_by_state index, no scan
            moved = db.execute(
                f"UPDATE rows SET state = 'held', failure_kind = NULL WHERE {where}",
                (batch, states, *codes),
            ).rowcount
            if moved:
                db.execute(
                    "INSERT INTO events(ts, batch, kind, detail)"
                    " VALUES (?, ?, 'rows_held_migrated', ?)",
                    (utc_now(), batch, json.dumps({"count": moved, "from": states})),
                )


def _to_v6_held(db: Database, backend: Backend, columns_of: ColumnsOf) -> list[str]:
    """Version 5 -> 6: held rows of older builds get the `held` state."""
    _held_rows_to_held_state(db)
    return []


#: Version 7's row indexes: each keeps a chunk's rows together, or holds no column a
#: transition changes. See `_to_v7_row_indexes`.
ROW_INDEXES_V7 = """
CREATE INDEX IF NOT EXISTS rows_by_state ON rows(batch, state, chunk_key);
CREATE INDEX IF NOT EXISTS rows_by_reference ON rows(reference, batch);
CREATE INDEX IF NOT EXISTS rows_by_chunk ON rows(batch, chunk_key, state);
"""


def _to_v7_row_indexes(db: Database, backend: Backend, columns_of: ColumnsOf) -> list[str]:
    """Version 6 -> 7: a chunk's transitions rewrite one stretch of each row index,
    not one random page per row.

    Chunks hold rows in row-key order, which is scattered over the sheet (rowid)
    order. Up to version 6 `rows_by_state` was `(batch, state)`, where a state's
    entries lie in rowid order, and `rows_by_reference` was `(reference, state)`: each
    transition of a chunk (planned, sending, settled) moved each of its rows' entries
    to a random page of both. At a million rows that is thousands of distinct pages per
    group commit, each written to the WAL and checkpointed again, where a 20,000-row
    batch rewrote the same few hundred. Now `rows_by_state` is `(batch, state,
    chunk_key)`, so a chunk's rows lie together within each state, and
    `rows_by_reference` is `(reference, batch)`, columns no transition changes (the
    searches by reference exclude their own batch in the index, and read the state of
    the few other rows found). `rows_by_chunk` gains `state`: SQLite, without
    statistics, would otherwise search a chunk's rows with a `state NOT IN` check by
    `rows_by_state` on `batch` alone (a scan of the batch per chunk); with it, both
    conditions are answered inside `rows_by_chunk`. Every query keeps its indexes'
    leading columns. The first open of a large ledger at this version rebuilds the
    three indexes once (seconds per million rows), inside the migration's transaction.
    """
    del columns_of
    for name in ("rows_by_state", "rows_by_reference", "rows_by_chunk"):
        db.execute(f"DROP INDEX IF EXISTS {name}")
    create_tables(db, backend, ROW_INDEXES_V7)
    return []


#: version -> the step that brings the version before it up to it.
STEPS: dict[int, Callable[[Database, Backend, ColumnsOf], list[str]]] = {
    2: _to_v2,
    3: _to_v3_queue,
    4: _to_v4_claims,
    5: _to_v5_rate_slots,
    6: _to_v6_held,
    7: _to_v7_row_indexes,
}
