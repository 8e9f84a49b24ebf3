"""The SQLite ledger: the single source of truth and the only module that writes state.

One database per state directory holds every batch, so a row that succeeded in
an earlier batch can be recognised. WAL mode, `synchronous=FULL`: a commit is on
disk before the HTTP request it guards leaves. Every transition appends to the
`events` table, which is never updated or deleted.

Row states: see `batcher.core.states`.
Money is stored as TEXT and read back as Decimal.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from batcher.core.clock import utc_now
from batcher.core.errors import ConfigError
from batcher.core.states import IN_FLIGHT_STATES, REPLANNABLE_STATES, ROW_STATES
from batcher.ledger.lock import BatchLock
from batcher.ledger.records import (
    ChunkRecord,
    RowOutcome,
    RowRecord,
    SheetRow,
    SyncReport,
    count_states,
    parse_ts,
)
from batcher.ledger.schema import SCHEMA_VERSION, install_schema


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open ledger {path}: {exc}") from None
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=30000")
        try:
            install_schema(self._db)
        except BaseException:
            self._db.close()
            raise
        self.run_id: str | None = None

    @classmethod
    def open(cls, state_dir: Path) -> Ledger:
        return cls(state_dir / "ledger.sqlite")

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")

    def _event(
        self,
        batch: str,
        kind: str,
        *,
        chunk_key: str | None = None,
        row_key: str | None = None,
        **detail: Any,
    ) -> None:
        self._db.execute(_INSERT_EVENT, self._event_values(batch, kind, chunk_key, row_key, detail))

    def _event_values(
        self,
        batch: str,
        kind: str,
        chunk_key: str | None,
        row_key: str | None,
        detail: dict[str, Any],
    ) -> tuple[Any, ...]:
        return (
            utc_now(),
            batch,
            self.run_id,
            kind,
            chunk_key,
            row_key,
            json.dumps(detail, default=str, sort_keys=True) if detail else None,
        )

    # ------------------------------------------------------------------ batches & runs

    def ensure_batch(
        self,
        batch: str,
        *,
        provider: str,
        account_id: str,
        source_path: str,
        source_sha256: str,
        sheet_headers: Sequence[str] = (),
        sheet_columns: dict[str, str] | None = None,
    ) -> None:
        now = utc_now()
        with self._tx() as db:
            existing = db.execute(
                "SELECT provider, account_id FROM batches WHERE batch = ?", (batch,)
            ).fetchone()
            if existing and (existing["provider"], existing["account_id"]) != (
                provider,
                account_id,
            ):
                raise ConfigError(
                    f"batch {batch!r} belongs to provider {existing['provider']} account "
                    f"{existing['account_id']}",
                    hint="use another --batch name for a different provider or account",
                )
            db.execute(
                "INSERT INTO batches(batch, provider, account_id, source_path, source_sha256,"
                " sheet_headers, sheet_columns, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(batch) DO UPDATE SET source_path = excluded.source_path,"
                " source_sha256 = excluded.source_sha256, sheet_headers = excluded.sheet_headers,"
                " sheet_columns = excluded.sheet_columns, updated_at = excluded.updated_at",
                (
                    batch,
                    provider,
                    account_id,
                    source_path,
                    source_sha256,
                    json.dumps(list(sheet_headers), ensure_ascii=False),
                    json.dumps(sheet_columns or {}, ensure_ascii=False),
                    now,
                    now,
                ),
            )

    def batch_info(self, batch: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM batches WHERE batch = ?", (batch,)).fetchone()
        if row is None:
            return None
        info = dict(row)
        info["sheet_headers"] = json.loads(info["sheet_headers"])
        info["sheet_columns"] = json.loads(info["sheet_columns"])
        return info

    def run_summary(self, run_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT summary FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return json.loads(row[0]) if row and row[0] else None

    def batches(self) -> list[dict[str, Any]]:
        return [
            dict(r)
            for r in self._db.execute(
                "SELECT batch, provider, account_id, source_path, source_sha256, created_at,"
                " updated_at FROM batches ORDER BY updated_at DESC"
            )
        ]

    def start_run(self, batch: str, command: str) -> str:
        run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
        with self._tx() as db:
            db.execute(
                "INSERT INTO runs(run_id, batch, command, pid, host, started_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, batch, command, os.getpid(), socket.gethostname(), utc_now()),
            )
            self.run_id = run_id
            self._event(batch, "run_started", command=command)
        return run_id

    def finish_run(self, run_id: str, batch: str, exit_code: int, summary: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE runs SET finished_at = ?, exit_code = ?, summary = ? WHERE run_id = ?",
                (utc_now(), exit_code, json.dumps(summary, default=str), run_id),
            )
            self._event(batch, "run_finished", exit_code=exit_code)

    def runs(self, batch: str, limit: int = 10) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT run_id, command, pid, host, started_at, finished_at, exit_code FROM runs"
            " WHERE batch = ? ORDER BY started_at DESC LIMIT ?",
            (batch, limit),
        )
        return [dict(r) for r in rows]

    def events(self, batch: str, kind: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM events WHERE batch = ?"
        params: list[Any] = [batch]
        if kind:
            sql += " AND kind = ?"
            params.append(kind)
        return [dict(r) for r in self._db.execute(sql + " ORDER BY id", params)]

    # ------------------------------------------------------------------ rows

    def sync_rows(
        self, batch: str, sheet_rows: Sequence[SheetRow], *, retry_failed: bool
    ) -> SyncReport:
        """Bring the ledger in line with the current sheet, without losing history.

        - new rows are inserted as pending (or invalid);
        - a row whose reference already succeeded in another batch is skipped;
        - a changed row that had not been sent is updated; one that failed is
          released for a new attempt; one that succeeded is flagged as a conflict
          and never ordered again;
        - rows no longer in the sheet stay in the ledger with in_sheet = 0.
        """
        now = utc_now()
        counts = dict.fromkeys(
            ("new", "unchanged", "changed", "conflicts", "skipped_elsewhere", "gone"), 0
        )
        existing = {
            r["row_key"]: r
            for r in self._db.execute(
                "SELECT row_key, content_hash, state, failure_kind, attempt, in_sheet, source_row"
                " FROM rows WHERE batch = ?",
                (batch,),
            )
        }
        done_elsewhere = self._references_succeeded_elsewhere(
            batch, [r.reference for r in sheet_rows if r.reference]
        )
        with self._tx() as db:
            db.execute("UPDATE rows SET in_sheet = 0 WHERE batch = ?", (batch,))
            for row in sheet_rows:
                old = existing.get(row.row_key)
                if old is None:
                    state = "pending" if row.valid else "invalid"
                    if row.valid and row.reference and row.reference in done_elsewhere:
                        state = "skipped"
                        counts["skipped_elsewhere"] += 1
                    counts["new"] += 1
                    self._insert_row(db, batch, row, state, now)
                    self._event(batch, "row_added", row_key=row.row_key, state=state)
                    continue
                if (
                    row.valid
                    and row.reference in done_elsewhere
                    and old["state"] in REPLANNABLE_STATES
                ):
                    # Ordered under another batch since (e.g. fed back via failed_rows.csv):
                    # retrying it here would order it twice.
                    counts["skipped_elsewhere"] += 1
                    db.execute(
                        "UPDATE rows SET state = 'skipped', in_sheet = 1, source_row = ?,"
                        " chunk_key = NULL, error_code = 'ordered_in_another_batch',"
                        " error_message = ?, updated_at = ? WHERE batch = ? AND row_key = ?",
                        (
                            row.source_row,
                            "this reference was ordered by another batch",
                            now,
                            batch,
                            row.row_key,
                        ),
                    )
                    self._event(batch, "row_skipped_elsewhere", row_key=row.row_key)
                    continue
                self._sync_existing(db, batch, row, old, retry_failed, counts, now)
            counts["gone"] = db.execute(
                "SELECT COUNT(*) FROM rows WHERE batch = ? AND in_sheet = 0", (batch,)
            ).fetchone()[0]
        return SyncReport(**counts)

    def _references_succeeded_elsewhere(self, batch: str, references: list[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(references), 500):
            part = references[start : start + 500]
            marks = ",".join("?" * len(part))
            found.update(
                r[0]
                for r in self._db.execute(
                    f"SELECT reference FROM rows WHERE reference IN ({marks})"
                    " AND state = 'succeeded' AND batch != ?",
                    (*part, batch),
                )
            )
        return found

    def _insert_row(
        self, db: sqlite3.Connection, batch: str, row: SheetRow, state: str, now: str
    ) -> None:
        db.execute(
            "INSERT INTO rows(batch, row_key, source_row, in_sheet, reference, content_hash,"
            " fields, passthrough, currency, face_value, est_cost, state, error_code,"
            " error_message, failure_kind, created_at, updated_at)"
            " VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                batch,
                row.row_key,
                row.source_row,
                row.reference,
                row.content_hash,
                json.dumps(row.fields, ensure_ascii=False),
                json.dumps(row.passthrough, ensure_ascii=False),
                row.currency,
                str(row.face_value),
                None if row.est_cost is None else str(row.est_cost),
                state,
                row.error_code or None,
                row.error_message or None,
                "permanent" if state == "invalid" else None,
                now,
                now,
            ),
        )

    def _sync_existing(
        self,
        db: sqlite3.Connection,
        batch: str,
        row: SheetRow,
        old: sqlite3.Row,
        retry_failed: bool,
        counts: dict[str, int],
        now: str,
    ) -> None:
        key = row.row_key
        state = old["state"]
        changed = old["content_hash"] != row.content_hash
        common = (
            "source_row = ?, in_sheet = 1, passthrough = ?, updated_at = ?",
            [row.source_row, json.dumps(row.passthrough, ensure_ascii=False), now],
        )
        if not changed:
            counts["unchanged"] += 1
            db.execute(
                f"UPDATE rows SET {common[0]} WHERE batch = ? AND row_key = ?",
                (*common[1], batch, key),
            )
            if state == "invalid" and row.valid:
                # The same content is valid now (the catalog changed): give it a chance.
                self._set_row_state(db, batch, key, "pending", clear_error=True)
            elif state == "failed" and old["failure_kind"] == "permanent" and retry_failed:
                self._release_for_retry(db, batch, key, reason="--retry-failed")
            return
        counts["changed"] += 1
        if state in ("succeeded", "skipped"):
            counts["conflicts"] += 1
            db.execute(
                f"UPDATE rows SET {common[0]}, conflict = ? WHERE batch = ? AND row_key = ?",
                (
                    *common[1],
                    "the sheet changed this row after it was ordered; it will not be ordered again",
                    batch,
                    key,
                ),
            )
            self._event(batch, "row_conflict", row_key=key, new_content_hash=row.content_hash)
            return
        if state in IN_FLIGHT_STATES:
            # Frozen: the sent bytes decide. Record the change but order what was sent.
            counts["conflicts"] += 1
            db.execute(
                f"UPDATE rows SET {common[0]}, conflict = ? WHERE batch = ? AND row_key = ?",
                (
                    *common[1],
                    "the sheet changed this row while its order was in flight",
                    batch,
                    key,
                ),
            )
            self._event(batch, "row_conflict", row_key=key, new_content_hash=row.content_hash)
            return
        # pending, planned, failed or invalid: take the new content.
        new_state = "pending" if row.valid else "invalid"
        attempt = old["attempt"] + 1 if state == "failed" else old["attempt"]
        db.execute(
            f"UPDATE rows SET {common[0]}, content_hash = ?, fields = ?, currency = ?,"
            " face_value = ?, est_cost = ?, state = ?, attempt = ?, retry_group = '',"
            " failure_kind = ?, error_code = ?, error_message = ?, chunk_key = NULL,"
            " conflict = NULL WHERE batch = ? AND row_key = ?",
            (
                *common[1],
                row.content_hash,
                json.dumps(row.fields, ensure_ascii=False),
                row.currency,
                str(row.face_value),
                None if row.est_cost is None else str(row.est_cost),
                new_state,
                attempt,
                "permanent" if new_state == "invalid" else None,
                row.error_code or None,
                row.error_message or None,
                batch,
                key,
            ),
        )
        self._event(batch, "row_changed", row_key=key, state=new_state, attempt=attempt)

    def _set_row_state(
        self, db: sqlite3.Connection, batch: str, row_key: str, state: str, *, clear_error: bool
    ) -> None:
        extra = (
            ", error_code = NULL, error_message = NULL, failure_kind = NULL" if clear_error else ""
        )
        db.execute(
            f"UPDATE rows SET state = ?, updated_at = ?{extra} WHERE batch = ? AND row_key = ?",
            (state, utc_now(), batch, row_key),
        )
        self._event(batch, "row_state", row_key=row_key, state=state)

    def _release_for_retry(
        self, db: sqlite3.Connection, batch: str, row_key: str, reason: str
    ) -> None:
        db.execute(
            "UPDATE rows SET state = 'pending', attempt = attempt + 1,"
            " retry_group = COALESCE(chunk_key, ''), chunk_key = NULL,"
            " updated_at = ? WHERE batch = ? AND row_key = ?",
            (utc_now(), batch, row_key),
        )
        self._event(batch, "row_released", row_key=row_key, reason=reason)

    def release_retryable(self, batch: str) -> int:
        """Failed rows whose failure is retryable become pending for the next attempt."""
        with self._tx() as db:
            keys = [
                r[0]
                for r in db.execute(
                    "SELECT row_key FROM rows WHERE batch = ? AND in_sheet = 1 AND state = 'failed'"
                    " AND failure_kind = 'retryable'",
                    (batch,),
                )
            ]
            for key in keys:
                self._release_for_retry(db, batch, key, reason="retryable failure")
        return len(keys)

    def rows(
        self, batch: str, *, in_sheet_only: bool = True, state: str | None = None
    ) -> list[RowRecord]:
        """The batch's rows in sheet order; only those in the latest sheet unless told,
        and only those in `state` if given."""
        sql, args = "SELECT * FROM rows WHERE batch = ?", [batch]
        if in_sheet_only:
            sql += " AND in_sheet = 1"
        if state is not None:
            sql += " AND state = ?"
            args.append(state)
        return [RowRecord.from_sql(r) for r in self._db.execute(sql + " ORDER BY source_row", args)]

    def rows_by_key(self, batch: str, keys: Iterable[str]) -> dict[str, RowRecord]:
        wanted = list(keys)
        found: dict[str, RowRecord] = {}
        for start in range(0, len(wanted), 500):
            part = wanted[start : start + 500]
            marks = ",".join("?" * len(part))
            for r in self._db.execute(
                f"SELECT * FROM rows WHERE batch = ? AND row_key IN ({marks})", (batch, *part)
            ):
                found[r["row_key"]] = RowRecord.from_sql(r)
        return found

    def orders_elsewhere(
        self, batch: str, references: Sequence[str]
    ) -> dict[str, tuple[str, str | None, str | None]]:
        """Reference -> (batch, order id, succeeded at) of its order in another batch.

        Read-only: says where a row skipped as "ordered in another batch" was ordered.
        """
        found: dict[str, tuple[str, str | None, str | None]] = {}
        wanted = sorted(set(references))
        for start in range(0, len(wanted), 500):
            part = wanted[start : start + 500]
            marks = ",".join("?" * len(part))
            for r in self._db.execute(
                "SELECT reference, batch, order_id, succeeded_at FROM rows"
                f" WHERE reference IN ({marks}) AND state = 'succeeded' AND batch != ?"
                " ORDER BY succeeded_at",
                (*part, batch),
            ):
                found.setdefault(r[0], (r[1], r[2], r[3]))
        return found

    def orders_not_in_sheet(self, batch: str) -> int:
        """Orders the batch paid for rows no longer in its sheet (earlier sheets, same name)."""
        row = self._db.execute(
            "SELECT COUNT(*) FROM rows WHERE batch = ? AND in_sheet = 0 AND state = 'succeeded'"
            " AND order_id IS NOT NULL",
            (batch,),
        ).fetchone()
        return int(row[0])

    def batches_ordering_between(self, start: str, end: str) -> list[str]:
        """Batches with an order that succeeded in [start, end) (ledger timestamps, UTC)."""
        return [
            r[0]
            for r in self._db.execute(
                "SELECT DISTINCT batch FROM rows WHERE state = 'succeeded'"
                " AND succeeded_at >= ? AND succeeded_at < ? ORDER BY batch",
                (start, end),
            )
        ]

    def count_by_state(self, batch: str) -> dict[str, int]:
        counts: dict[str, int] = dict.fromkeys(map(str, ROW_STATES), 0)
        for r in self._db.execute(
            "SELECT state, COUNT(*) FROM rows WHERE batch = ? AND in_sheet = 1 GROUP BY state",
            (batch,),
        ):
            counts[r[0]] = r[1]
        return counts

    def mark_pending_reason(self, batch: str, currency: str, code: str, message: str) -> int:
        """Annotate the pending rows paid from a wallet (e.g. insufficient funds)."""
        paying = "COALESCE(NULLIF(json_extract(fields, '$.payment_currency'), ''), currency)"
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE rows SET error_code = ?, error_message = ?, failure_kind = 'retryable',"
                f" updated_at = ? WHERE batch = ? AND {paying} = ? AND in_sheet = 1"
                " AND state = 'pending'",
                (code, message, utc_now(), batch, currency),
            )
            self._event(batch, "rows_held", currency=currency, code=code, count=cursor.rowcount)
            return cursor.rowcount

    # ------------------------------------------------------------------ chunks

    def discard_unsent_plans(self, batch: str, chunk_keys: Sequence[str] | None = None) -> int:
        """Planned chunks that never left can be re-planned freely: nothing was sent.

        All of the batch's planned chunks, or only those of `chunk_keys`.
        """
        with self._tx() as db:
            planned = [
                r[0]
                for r in db.execute(
                    "SELECT chunk_key FROM chunks WHERE batch = ? AND state = 'planned'", (batch,)
                )
            ]
            keys = planned if chunk_keys is None else [k for k in planned if k in set(chunk_keys)]
            for key in keys:
                db.execute(
                    "UPDATE rows SET state = 'pending', chunk_key = NULL, updated_at = ?"
                    " WHERE batch = ? AND chunk_key = ? AND state = 'planned'",
                    (utc_now(), batch, key),
                )
                db.execute("DELETE FROM chunk_rows WHERE chunk_key = ?", (key,))
                db.execute("DELETE FROM chunks WHERE chunk_key = ?", (key,))
                self._event(batch, "chunk_discarded", chunk_key=key)
        return len(keys)

    def recover_after_crash(self, batch: str) -> int:
        """A chunk left `sending` by a dead run may or may not have reached the provider."""
        with self._tx() as db:
            keys = [
                r[0]
                for r in db.execute(
                    "SELECT chunk_key FROM chunks WHERE batch = ? AND state = 'sending'", (batch,)
                )
            ]
            for key in keys:
                self._set_chunk_state(db, batch, key, "unknown", row_state="unknown")
                self._event(batch, "chunk_unknown_after_crash", chunk_key=key)
        return len(keys)

    def save_plan(
        self, batch: str, chunks: Sequence[tuple[str, str, int, Sequence[str], bytes]]
    ) -> None:
        """Record planned chunks (key, currency, attempt, row keys, payload) and their rows."""
        now = utc_now()
        with self._tx() as db:
            for key, currency, attempt, keys, payload in chunks:
                existing = db.execute(
                    "SELECT state, payload FROM chunks WHERE chunk_key = ?", (key,)
                ).fetchone()
                if existing is not None:
                    # The same rows and attempt were planned before: the key is a promise
                    # to the provider, so the bytes must match what may have been sent.
                    if bytes(existing["payload"]) != payload:
                        raise RuntimeError(f"chunk {key} re-planned with different bytes")
                    continue
                db.execute(
                    "INSERT INTO chunks(chunk_key, batch, currency, attempt, state, payload,"
                    " row_count, created_at) VALUES (?, ?, ?, ?, 'planned', ?, ?, ?)",
                    (key, batch, currency, attempt, payload, len(keys), now),
                )
                db.executemany(
                    "INSERT INTO chunk_rows(chunk_key, row_key, position) VALUES (?, ?, ?)",
                    [(key, rk, i) for i, rk in enumerate(keys)],
                )
                marks = ",".join("?" * len(keys))
                db.execute(
                    f"UPDATE rows SET state = 'planned', chunk_key = ?, updated_at = ?"
                    f" WHERE batch = ? AND row_key IN ({marks})",
                    (key, now, batch, *keys),
                )
                self._event(batch, "chunk_planned", chunk_key=key, rows=len(keys), attempt=attempt)

    def chunk(self, chunk_key: str) -> ChunkRecord:
        row = self._db.execute("SELECT * FROM chunks WHERE chunk_key = ?", (chunk_key,)).fetchone()
        if row is None:
            raise KeyError(chunk_key)
        keys = [
            r[0]
            for r in self._db.execute(
                "SELECT row_key FROM chunk_rows WHERE chunk_key = ? ORDER BY position", (chunk_key,)
            )
        ]
        return ChunkRecord.from_sql(row, keys)

    def chunks(self, batch: str, states: Sequence[str]) -> list[ChunkRecord]:
        marks = ",".join("?" * len(states))
        keys = [
            r[0]
            for r in self._db.execute(
                f"SELECT chunk_key FROM chunks WHERE batch = ? AND state IN ({marks})"
                " ORDER BY created_at, chunk_key",
                (batch, *states),
            )
        ]
        return [self.chunk(k) for k in keys]

    def _set_chunk_state(
        self,
        db: sqlite3.Connection,
        batch: str,
        chunk_key: str,
        state: str,
        *,
        row_state: str | None = None,
        **columns: Any,
    ) -> None:
        sets = ["state = ?"] + [f"{c} = ?" for c in columns]
        db.execute(
            f"UPDATE chunks SET {', '.join(sets)} WHERE chunk_key = ?",
            (state, *columns.values(), chunk_key),
        )
        if row_state:
            db.execute(
                "UPDATE rows SET state = ?, updated_at = ? WHERE batch = ? AND chunk_key = ?"
                " AND state NOT IN ('succeeded', 'failed')",
                (row_state, utc_now(), batch, chunk_key),
            )

    def mark_sending(self, batch: str, chunk_key: str) -> None:
        """Committed before the HTTP request leaves: a crash now means 'unknown', not 'lost'."""
        now = utc_now()
        with self._tx() as db:
            db.execute(
                "UPDATE chunks SET send_count = send_count + 1, last_sent_at = ?,"
                " first_sent_at = COALESCE(first_sent_at, ?) WHERE chunk_key = ?",
                (now, now, chunk_key),
            )
            self._set_chunk_state(db, batch, chunk_key, "sending", row_state="sending")
            self._event(batch, "chunk_sending", chunk_key=chunk_key)

    def mark_unknown(self, batch: str, chunk_key: str, reason: str) -> None:
        with self._tx() as db:
            self._set_chunk_state(
                db, batch, chunk_key, "unknown", row_state="unknown", error_message=reason
            )
            self._event(batch, "chunk_unknown", chunk_key=chunk_key, reason=reason)

    def mark_accepted(self, batch: str, chunk_key: str, request_id: str) -> None:
        now = utc_now()
        with self._tx() as db:
            self._set_chunk_state(
                db,
                batch,
                chunk_key,
                "accepted",
                row_state="accepted",
                request_id=request_id,
                accepted_at=now,
                error_message=None,
            )
            db.execute(
                "UPDATE rows SET order_request_id = ? WHERE batch = ? AND chunk_key = ?",
                (request_id, batch, chunk_key),
            )
            self._event(batch, "chunk_accepted", chunk_key=chunk_key, request_id=request_id)

    def count_poll(self, chunk_key: str) -> None:
        self._db.execute(
            "UPDATE chunks SET poll_count = poll_count + 1 WHERE chunk_key = ?", (chunk_key,)
        )

    def settle_chunk(
        self,
        batch: str,
        chunk_key: str,
        chunk_state: str,
        outcomes: Sequence[RowOutcome],
        *,
        error_code: str | None = None,
        error_message: str | None = None,
    ) -> None:
        """Record a definite answer for a chunk and each of its rows, atomically."""
        now = utc_now()
        with self._tx() as db:
            self._set_chunk_state(
                db,
                batch,
                chunk_key,
                chunk_state,
                finished_at=now,
                error_code=error_code,
                error_message=error_message,
            )
            # One statement per kind of row, run over the whole chunk.
            for release in (False, True):
                db.executemany(
                    _SETTLE_RELEASED_ROW if release else _SETTLE_ROW,
                    [
                        _settle_values(out, now, chunk_key, batch)
                        for out in outcomes
                        if bool(out.release) == release
                    ],
                )
            db.executemany(
                _INSERT_EVENT,
                [
                    self._event_values(
                        batch,
                        "row_settled",
                        chunk_key,
                        out.row_key,
                        {"state": out.state, "code": out.error_code, "order_id": out.order_id},
                    )
                    for out in outcomes
                ],
            )
            self._event(batch, "chunk_settled", chunk_key=chunk_key, state=chunk_state)


_INSERT_EVENT = (
    "INSERT INTO events(ts, batch, run_id, kind, chunk_key, row_key, detail)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_SETTLE_SETS = (
    "UPDATE rows SET state = ?, failure_kind = ?, error_code = ?,"
    " error_message = ?, provider_request_id = ?, order_id = ?,"
    " transaction_id = ?, cost = ?, cost_currency = ?, voucher_last4 = ?,"
    " provider_status = ?, updated_at = ?,"
    " succeeded_at = CASE WHEN ? = 'succeeded' THEN ? ELSE succeeded_at END,"
    " chunk_key = CASE WHEN ? THEN NULL ELSE chunk_key END"
)
_SETTLE_ROW = _SETTLE_SETS + " WHERE batch = ? AND row_key = ?"
#: A row released for retry starts its next attempt in a retry group named by this chunk.
_SETTLE_RELEASED_ROW = (
    _SETTLE_SETS + ", attempt = attempt + 1, retry_group = ? WHERE batch = ? AND row_key = ?"
)


def _settle_values(out: RowOutcome, now: str, chunk_key: str, batch: str) -> tuple[Any, ...]:
    """The parameters of _SETTLE_ROW (or _SETTLE_RELEASED_ROW) for one row."""
    return (
        out.state,
        out.failure_kind,
        out.error_code,
        out.error_message,
        out.provider_request_id,
        out.order_id,
        out.transaction_id,
        None if out.cost is None else str(out.cost),
        out.cost_currency,
        out.voucher_last4,
        out.provider_status,
        now,
        out.state,
        now,
        out.release,
        *((chunk_key,) if out.release else ()),
        batch,
        out.row_key,
    )


# Importers name these from here; they live in the modules above.
__all__ = [
    "SCHEMA_VERSION",
    "BatchLock",
    "ChunkRecord",
    "Ledger",
    "RowOutcome",
    "RowRecord",
    "SheetRow",
    "SyncReport",
    "count_states",
    "parse_ts",
]
