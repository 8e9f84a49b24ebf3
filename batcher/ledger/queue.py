"""The work queue: batches `batcher enqueue` put in the shared ledger, for workers.

One table, `batch_queue` (schema.QUEUE_SCHEMA), on a PostgreSQL ledger only: a
queue exists so that several machines share the work. A worker claims the oldest
item that is due with `SELECT … FOR UPDATE SKIP LOCKED`, so two workers never
claim one item and neither waits for the other. A claimed item carries the
worker's id and a heartbeat the worker renews while it runs the batch.

An item whose worker died (SIGKILL, a lost machine) stays `running` with a
heartbeat that stops moving. It is claimed again once the heartbeat is older
than the claimer's `stale_after` *and* the batch's advisory lock (lock.py) is
free: the server drops that lock with the dead worker's session, so a live
worker whose heartbeat merely lags is never robbed. The run that resumes it
goes through the ledger's normal recovery, which never orders a row twice.

One batch per account runs at a time: a queued item waits while another item of
the same provider and account is running. The account's rate limit is per key
anyway, so a second concurrent batch would not finish sooner, and a run's
reconciliation ties its wallet's balance movement to its own orders, which
another batch debiting the same wallet at the same moment would blur. Batches
of different accounts run side by side, one per worker.

This module stores and moves items; it never runs a batch (execute/worker.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from batcher.core.clock import utc_now, utc_text
from batcher.core.errors import UsageError
from batcher.core.states import OPEN_QUEUE_STATES, QueueState
from batcher.ledger.backend import Database, write_transaction
from batcher.ledger.connection import LedgerConnection
from batcher.ledger.location import LedgerLocation
from batcher.ledger.lock import advisory_keys

#: The one-part advisory key claims serialise on (backend.LEDGER_WRITE_LOCK is another).
QUEUE_CLAIM_LOCK = 0x6261746368717565  # "batchque"
#: how many stale candidates one claim looks at before giving up for this poll
_STALE_CANDIDATES = 20
_COLUMNS = (
    "id, batch, provider, account, sheet_path, sheet_sha256, options, state, attempts,"
    " max_attempts, worker, heartbeat_at, not_before, enqueued_at, started_at, finished_at,"
    " exit_code, summary, message"
)


@dataclass(frozen=True)
class QueueItem:
    id: int
    batch: str
    provider: str
    account: str | None
    sheet_path: str
    sheet_sha256: str
    options: dict[str, Any]
    state: str
    attempts: int
    max_attempts: int
    worker: str | None
    heartbeat_at: str | None
    not_before: str
    enqueued_at: str
    started_at: str | None
    finished_at: str | None
    exit_code: int | None
    summary: dict[str, Any] | None
    message: str | None

    @classmethod
    def from_row(cls, row: Any) -> QueueItem:
        values = dict(zip(_COLUMNS.replace(" ", "").split(","), tuple(row), strict=True))
        values["options"] = json.loads(values["options"])
        values["summary"] = json.loads(values["summary"]) if values["summary"] else None
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _COLUMNS.replace(" ", "").split(",")}


def queue_needs_postgresql(location: LedgerLocation) -> None:
    """A usage error unless the ledger is PostgreSQL: the queue is shared by machines."""
    if location.backend != "postgresql":
        raise UsageError(
            f"the work queue needs a shared PostgreSQL ledger; {location.shown} is a SQLite "
            "file, which only one machine can use",
            hint="pass --ledger postgresql://user@host/db (or set BATCHER_LEDGER), or run the "
            "batch directly with `batcher run`",
        )


def _later(seconds: float) -> str:
    return utc_text(datetime.now(UTC) + timedelta(seconds=seconds))


class BatchQueue:
    """The queue on one PostgreSQL ledger, over a connection of its own."""

    def __init__(self, location: LedgerLocation) -> None:
        queue_needs_postgresql(location)
        self.location = location
        self._conn = LedgerConnection(location)  # refuses an unmigrated database
        self._db: Database = self._conn._db

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> BatchQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[Database]:
        # Only batch_queue is touched: row locks are enough, the ledger's write lock
        # (backend.write_begin) is not taken, so a claim never waits for a batch's writes.
        with write_transaction(self._db, ("BEGIN",)) as db:
            yield db

    # -- enqueue -----------------------------------------------------------------------

    def enqueue(
        self,
        *,
        batch: str,
        provider: str,
        account: str | None,
        sheet_path: str,
        sheet_sha256: str,
        options: Mapping[str, Any],
        max_attempts: int,
    ) -> QueueItem:
        """A new queued item; a usage error when the batch is already queued or running."""
        now = utc_now()
        with self._conn._tx() as db:  # the ledger's write lock: one enqueue at a time
            open_item = db.execute(
                "SELECT id, state, worker FROM batch_queue WHERE batch = ? AND state IN (?, ?)",
                (batch, *(s.value for s in OPEN_QUEUE_STATES)),
            ).fetchone()
            if open_item is not None:
                who = f" by worker {open_item[2]}" if open_item[2] else ""
                raise UsageError(
                    f"batch {batch!r} is already in the queue as item {open_item[0]} "
                    f"({open_item[1]}{who}); nothing was enqueued",
                    hint="wait for it to finish (`batcher queue`), or enqueue under another "
                    "--batch name",
                )
            row = db.execute(
                "INSERT INTO batch_queue(batch, provider, account, sheet_path, sheet_sha256,"
                " options, state, attempts, max_attempts, not_before, enqueued_at)"
                f" VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?) RETURNING {_COLUMNS}",
                (
                    batch,
                    provider,
                    account,
                    sheet_path,
                    sheet_sha256,
                    json.dumps(dict(options), sort_keys=True),
                    QueueState.QUEUED.value,
                    max_attempts,
                    now,
                    now,
                ),
            ).fetchone()
        return QueueItem.from_row(row)

    # -- claiming and running ------------------------------------------------------------

    def claim(self, worker: str, *, stale_after: float) -> QueueItem | None:
        """The next item for `worker`, marked running with a fresh heartbeat; None when
        nothing is due. A stale running item (its worker died) comes first."""
        now = utc_now()
        cutoff = _later(-stale_after)
        with self._tx() as db:
            # Claims queue on one lock (a claim takes milliseconds): each sees the one
            # before it, so two workers never start two batches of one account at once.
            db.execute("SELECT pg_advisory_xact_lock(?)", (QUEUE_CLAIM_LOCK,))
            picked = None
            previous = None
            stale = db.execute(
                f"SELECT {_COLUMNS} FROM batch_queue WHERE state = ? AND heartbeat_at < ?"
                " ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED",
                (QueueState.RUNNING.value, cutoff, _STALE_CANDIDATES),
            ).fetchall()
            for row in stale:
                if self._batch_locked(db, row[1]):
                    continue
                if row[8] >= row[9]:  # attempts >= max_attempts: its workers keep dying
                    db.execute(
                        "UPDATE batch_queue SET state = ?, finished_at = ?, message = ?"
                        " WHERE id = ?",
                        (
                            QueueState.FAILED.value,
                            now,
                            f"its worker stopped without an outcome {row[8]} time(s) (last "
                            f"{row[10]}, no heartbeat since {row[11]}); rerun it with "
                            "`batcher run` to see why, or queue it again",
                            row[0],
                        ),
                    )
                    continue
                picked, previous = row, row[10]
                break
            if picked is None:
                # one running batch per account: see the module docstring
                picked = db.execute(
                    f"SELECT {_COLUMNS} FROM batch_queue q WHERE state = ? AND not_before <= ?"
                    " AND NOT EXISTS (SELECT 1 FROM batch_queue r WHERE r.state = ?"
                    " AND r.provider = q.provider"
                    " AND COALESCE(r.account, '') = COALESCE(q.account, ''))"
                    " ORDER BY not_before, id LIMIT 1 FOR UPDATE SKIP LOCKED",
                    (QueueState.QUEUED.value, now, QueueState.RUNNING.value),
                ).fetchone()
            if picked is None:
                return None
            message = (
                f"reclaimed from worker {previous} (no heartbeat since {picked[11]})"
                if previous
                else picked[18]
            )
            row = db.execute(
                "UPDATE batch_queue SET state = ?, worker = ?, heartbeat_at = ?, started_at = ?,"
                " finished_at = NULL, attempts = attempts + 1, message = ?"
                f" WHERE id = ? RETURNING {_COLUMNS}",
                (QueueState.RUNNING.value, worker, now, now, message, picked[0]),
            ).fetchone()
        return QueueItem.from_row(row)

    @staticmethod
    def _batch_locked(db: Database, batch: str) -> bool:
        """Whether some session holds the batch's advisory lock (a run is alive)."""
        found = db.execute(
            "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND classid = ? AND objid = ? AND objsubid = 2",
            advisory_keys(batch),
        ).fetchone()
        return found is not None

    def heartbeat(self, item_id: int, worker: str) -> bool:
        """Renew the heartbeat; False when the item is no longer this worker's."""
        cursor = self._db.execute(
            "UPDATE batch_queue SET heartbeat_at = ? WHERE id = ? AND worker = ? AND state = ?",
            (utc_now(), item_id, worker, QueueState.RUNNING.value),
        )
        return cursor.rowcount == 1

    def finish(
        self,
        item_id: int,
        worker: str,
        state: QueueState,
        *,
        exit_code: int | None,
        summary: Mapping[str, Any] | None,
        message: str,
        retry_in: float = 0.0,
    ) -> bool:
        """Record the outcome of a claimed item; False when it was no longer this worker's
        (another worker reclaimed it: its outcome is the one that counts)."""
        now = utc_now()
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE batch_queue SET state = ?, exit_code = ?, summary = ?, message = ?,"
                " finished_at = ?, not_before = ?,"
                " worker = CASE WHEN ? = 'queued' THEN NULL ELSE worker END"
                " WHERE id = ? AND worker = ? AND state = ?",
                (
                    state.value,
                    exit_code,
                    json.dumps(dict(summary), sort_keys=True, default=str) if summary else None,
                    message,
                    now,
                    _later(retry_in),
                    state.value,
                    item_id,
                    worker,
                    QueueState.RUNNING.value,
                ),
            )
            return cursor.rowcount == 1

    # -- looking ------------------------------------------------------------------------

    def items(self, *, state: str | None = None, limit: int = 1000) -> list[QueueItem]:
        """The items, newest first; only those in `state` when given."""
        where, params = ("WHERE state = ?", (state,)) if state else ("", ())
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM batch_queue {where} ORDER BY id DESC LIMIT ?",
            (*params, limit),
        ).fetchall()
        return [QueueItem.from_row(r) for r in rows]

    def item(self, item_id: int) -> QueueItem | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM batch_queue WHERE id = ?", (item_id,)
        ).fetchone()
        return QueueItem.from_row(row) if row is not None else None
