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
from batcher.ledger.schema import SCHEMA, SCHEMA_VERSION, migrate

#: error_code of a pending row whose reference another batch of the account holds
HELD_ELSEWHERE = "held_reference_in_another_batch"


class LedgerDamaged(ConfigError):
    """The ledger file cannot be trusted: never continue from it, never call it intact."""


class LedgerDiskFull(ConfigError):
    """SQLite could not commit because the disk is full: nothing after this was sent."""


class OrderClaimed(RuntimeError):
    """A provider order is already tied to another chunk: recording it again would
    make one order answer for two chunks' rows."""


def _damaged(path: Path, exc: BaseException | str) -> LedgerDamaged:
    detail = " ".join(str(exc).split())[:200]  # SQLite's check spans lines
    return LedgerDamaged(
        f"the ledger at {path} is damaged ({detail}): restore it from backup (see README,"
        " 'Backups'); nothing was sent",
        hint="restore the newest backup over it, or move it aside to recover from the provider",
    )


def _is_disk_full(exc: sqlite3.Error) -> bool:
    return "full" in str(exc).lower()


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open ledger {path}: {exc}") from None
        self._db.row_factory = sqlite3.Row
        try:
            self._open_checked()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            if isinstance(exc, sqlite3.OperationalError) and _is_disk_full(exc):
                raise LedgerDiskFull(
                    f"the disk holding the ledger {path} is full; nothing was sent",
                    hint="free some space and rerun",
                ) from None
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc).lower():
                raise
            raise _damaged(path, exc) from None
        self.run_id: str | None = None

    def _open_checked(self) -> None:
        """Open, check integrity, create or migrate. A 0-byte file is an empty ledger:
        every batch in it is new, so the run recovers its rows from the provider."""
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        # quick_check reads every page: a truncated or scribbled file fails here, before
        # any of its rows can be believed.
        verdict = [r[0] for r in self._db.execute("PRAGMA quick_check(5)")]
        if verdict != ["ok"]:
            raise sqlite3.DatabaseError("; ".join(verdict))
        with self._tx() as db:
            found_row = None
            if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone():
                found_row = db.execute(
                    "SELECT value FROM meta WHERE key = 'schema_version'"
                ).fetchone()
            for statement in _statements(SCHEMA):
                db.execute(statement)
            found = int(found_row[0]) if found_row else SCHEMA_VERSION
            if found > SCHEMA_VERSION:
                raise ConfigError(
                    f"the ledger {self.path} was written by a newer batcher (schema {found})",
                    hint="upgrade batcher",
                )
            repaired = migrate(db, found)
            db.execute(
                "INSERT INTO meta(key, value) VALUES ('schema_version', ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )
            for key in repaired:
                db.execute(
                    "INSERT INTO events(ts, batch, kind, chunk_key, detail)"
                    " SELECT ?, batch, 'chunk_claim_repaired', chunk_key, NULL FROM chunks"
                    " WHERE chunk_key = ?",
                    (utc_now(), key),
                )

    @classmethod
    def open(cls, state_dir: Path) -> Ledger:
        return cls(state_dir / "ledger.sqlite")

    def close(self) -> None:
        self._db.close()

    def backup(self, target: Path) -> int:
        """A consistent copy through SQLite's online backup, safe while a run writes.
        Returns the pages copied."""
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        partial.unlink(missing_ok=True)
        dest = sqlite3.connect(partial)
        try:
            self._db.backup(dest)
            pages = int(dest.execute("PRAGMA page_count").fetchone()[0])
            dest.execute("PRAGMA journal_mode=DELETE")
            if [r[0] for r in dest.execute("PRAGMA quick_check(1)")] != ["ok"]:
                raise LedgerDamaged(f"the backup written to {partial} does not check out")
        finally:
            dest.close()
        os.replace(partial, target)  # a half-written backup never takes the name
        return pages

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError) and _is_disk_full(exc):
                # Every send is committed first, so this names a full disk before the send.
                raise LedgerDiskFull(
                    f"the disk holding the ledger {self.path} is full; the last change was"
                    " not recorded and nothing more was sent",
                    hint="free some space and rerun",
                ) from None
            if isinstance(exc, sqlite3.DatabaseError) and not isinstance(
                exc, sqlite3.OperationalError | sqlite3.IntegrityError
            ):
                raise _damaged(self.path, exc) from None
            raise

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
        allow_same_sheet: bool = True,
    ) -> bool:
        """Record the batch; True when it is new to this ledger.

        Unless `allow_same_sheet`, a sheet whose bytes another batch of the same
        account already ran (or is running) is refused, in the same transaction
        that records this batch, so two runs started at once cannot both pass.
        """
        now = utc_now()
        with self._tx() as db:
            existing = db.execute(
                "SELECT provider, account_id, source_sha256 FROM batches WHERE batch = ?",
                (batch,),
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
            rerun = existing is not None and existing["source_sha256"] == source_sha256
            if not allow_same_sheet and not rerun:
                twin = db.execute(
                    "SELECT batch FROM batches WHERE source_sha256 = ? AND provider = ?"
                    " AND account_id = ? AND batch != ? ORDER BY created_at LIMIT 1",
                    (source_sha256, provider, account_id, batch),
                ).fetchone()
                if twin is not None:
                    raise ConfigError(
                        f"this sheet (the same bytes) was already run as batch {twin[0]!r};"
                        f" running it as {batch!r} would order its rows again; nothing was sent",
                        hint=f"rerun it as --batch {twin[0]}, or pass --same-sheet-ok if a"
                        " second set of orders is really wanted",
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
        return existing is None

    def needs_recovery(self, batch: str) -> bool:
        """True until the provider has been asked about this batch's rows once."""
        row = self._db.execute(
            "SELECT recovered_at FROM batches WHERE batch = ?", (batch,)
        ).fetchone()
        return row is not None and row[0] is None

    def mark_recovered(self, batch: str, **detail: Any) -> None:
        with self._tx() as db:
            db.execute("UPDATE batches SET recovered_at = ? WHERE batch = ?", (utc_now(), batch))
            self._event(batch, "recovery_done", **detail)

    def claimed_order_ids(self, provider: str, account_id: str) -> set[str]:
        """Every provider order some row of this account already stands for."""
        return {
            r[0]
            for r in self._db.execute(
                "SELECT r.order_id FROM rows r JOIN batches b ON b.batch = r.batch"
                " WHERE r.order_id IS NOT NULL AND b.provider = ? AND b.account_id = ?",
                (provider, account_id),
            )
        }

    def claimed_request_ids(self, batch: str, except_chunk: str | None = None) -> frozenset[str]:
        """Provider order requests already tied to a chunk of this batch's account."""
        return frozenset(
            r[0]
            for r in self._db.execute(
                "SELECT c.request_id FROM chunks c JOIN batches b ON b.batch = c.batch"
                " JOIN batches mine ON mine.batch = ?"
                " WHERE c.request_id IS NOT NULL AND b.provider = mine.provider"
                " AND b.account_id = mine.account_id AND c.chunk_key != ?",
                (batch, except_chunk or ""),
            )
        )

    def record_recovered(self, batch: str, found: Sequence[RowOutcome], window: str) -> None:
        """Rows the provider already holds an order for: recorded as ordered, never sent."""
        now = utc_now()
        with self._tx() as db:
            for out in found:
                cursor = db.execute(
                    "UPDATE rows SET state = 'succeeded', order_id = ?, order_request_id = ?,"
                    " cost = ?, cost_currency = ?, provider_status = ?, error_code = NULL,"
                    " error_message = NULL, failure_kind = NULL, chunk_key = NULL,"
                    " updated_at = ?, succeeded_at = ? WHERE batch = ? AND row_key = ?"
                    " AND state = 'pending'",
                    (
                        out.order_id,
                        out.provider_request_id,
                        None if out.cost is None else str(out.cost),
                        out.cost_currency,
                        out.provider_status,
                        now,
                        now,
                        batch,
                        out.row_key,
                    ),
                )
                if cursor.rowcount:
                    self._event(
                        batch, "row_recovered", row_key=out.row_key, order_id=out.order_id,
                        window=window,
                    )  # fmt: skip

    def hold_rows(self, batch: str, held: Sequence[RowOutcome]) -> None:
        """Rows a person must look at before they are ordered: failed, permanent, with
        the reason and the way out (`--retry-failed` once resolved) in their message."""
        now = utc_now()
        with self._tx() as db:
            for out in held:
                cursor = db.execute(
                    "UPDATE rows SET state = 'failed', failure_kind = 'permanent',"
                    " error_code = ?, error_message = ?, chunk_key = NULL, updated_at = ?"
                    " WHERE batch = ? AND row_key = ? AND state = 'pending'",
                    (out.error_code, out.error_message, now, batch, out.row_key),
                )
                if cursor.rowcount:
                    self._event(batch, "row_held", row_key=out.row_key, code=out.error_code)

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

    def discard_unsent_plans(
        self, batch: str, chunk_keys: Sequence[str] | None = None, *, stale_only: bool = False
    ) -> int:
        """Planned chunks that never left can be re-planned freely: nothing was sent.

        All of the batch's planned chunks, only those of `chunk_keys`, or (stale_only)
        only those that no longer hold exactly their rows as planned (a row changed,
        left the sheet or was held). The others keep their composition and key, so a
        row added to the sheet later never re-slices them: if a restored ledger calls a
        sent chunk `planned`, it goes out again under the key the provider knows.
        """
        with self._tx() as db:
            if stale_only:
                planned = [
                    r[0]
                    for r in db.execute(
                        "SELECT c.chunk_key FROM chunks c WHERE c.batch = ? AND c.state = 'planned'"
                        " AND (c.row_count != (SELECT COUNT(*) FROM rows r WHERE r.batch = c.batch"
                        " AND r.chunk_key = c.chunk_key AND r.state = 'planned' AND r.in_sheet = 1)"
                        " OR c.row_count != (SELECT COUNT(*) FROM chunk_rows cr"
                        " WHERE cr.chunk_key = c.chunk_key))",
                        (batch,),
                    )
                ]
            else:
                planned = [
                    r[0]
                    for r in db.execute(
                        "SELECT chunk_key FROM chunks WHERE batch = ? AND state = 'planned'",
                        (batch,),
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

    def clear_reference_holds(self, batch: str) -> None:
        """Rows held because another batch had their reference: ask again this run."""
        with self._tx() as db:
            db.execute(
                "UPDATE rows SET error_code = NULL, error_message = NULL, failure_kind = NULL"
                " WHERE batch = ? AND state = 'pending' AND error_code = ?",
                (batch, HELD_ELSEWHERE),
            )

    def references_taken_elsewhere(self, batch: str, row_keys: Sequence[str]) -> set[str]:
        """Row keys of `batch` whose reference another batch of the account holds."""
        taken: set[str] = set()
        for start in range(0, len(row_keys), 400):
            taken.update(
                self._references_taken_elsewhere(self._db, batch, row_keys[start : start + 400])
            )
        return taken

    def _references_taken_elsewhere(
        self, db: sqlite3.Connection, batch: str, row_keys: Sequence[str]
    ) -> dict[str, tuple[str, str, str]]:
        """row key -> (other batch, its row's state, reference) for references another
        batch of the same account has planned, in flight or succeeded."""
        marks = ",".join("?" * len(row_keys))
        taken: dict[str, tuple[str, str, str]] = {}
        for r in db.execute(
            "SELECT mine.row_key, other.batch, other.state, mine.reference FROM rows mine"
            " JOIN batches mb ON mb.batch = mine.batch"
            " JOIN rows other ON other.reference = mine.reference AND other.batch != mine.batch"
            " JOIN batches ob ON ob.batch = other.batch AND ob.provider = mb.provider"
            " AND ob.account_id = mb.account_id"
            " WHERE mine.batch = ? AND mine.reference IS NOT NULL"
            f" AND mine.row_key IN ({marks})"
            " AND other.state IN ('planned', 'sending', 'unknown', 'accepted', 'succeeded')",
            (batch, *row_keys),
        ):
            taken.setdefault(r[0], (r[1], r[2], r[3]))
        return taken

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
    ) -> set[str]:
        """Record planned chunks (key, currency, attempt, row keys, payload) and their rows.

        A chunk holding a reference that another batch of the same account has planned,
        in flight or ordered is not saved: those rows are held (pending, `HELD_ELSEWHERE`)
        and their keys returned, so the caller plans the rest again. The check and the
        save are one transaction, so two runs started at once cannot both plan it.
        """
        now = utc_now()
        held: set[str] = set()
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
                taken = self._references_taken_elsewhere(db, batch, keys)
                if taken:
                    for row_key, (other, state, reference) in taken.items():
                        db.execute(
                            "UPDATE rows SET error_code = ?, error_message = ?,"
                            " failure_kind = NULL, updated_at = ? WHERE batch = ? AND row_key = ?",
                            (
                                HELD_ELSEWHERE,
                                f"reference {reference!r} is {state} in batch {other!r}; it is"
                                f" not ordered here (finish or check batch {other!r} first)",
                                now,
                                batch,
                                row_key,
                            ),
                        )
                        self._event(batch, "row_held", row_key=row_key, code=HELD_ELSEWHERE,
                                    other_batch=other)  # fmt: skip
                    held.update(taken)
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
        return held

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
            holder = db.execute(
                "SELECT chunk_key FROM chunks WHERE request_id = ? AND chunk_key != ?",
                (request_id, chunk_key),
            ).fetchone()
            if holder is not None:
                raise OrderClaimed(
                    f"provider order {request_id} already belongs to chunk {holder[0]}"
                )
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


def _statements(script: str) -> list[str]:
    """The schema's statements, one by one (triggers hold inner semicolons)."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return [s for s in statements if s]


# Importers name these from here; they live in the modules above.
__all__ = [
    "HELD_ELSEWHERE",
    "SCHEMA_VERSION",
    "BatchLock",
    "ChunkRecord",
    "Ledger",
    "LedgerDamaged",
    "LedgerDiskFull",
    "OrderClaimed",
    "RowOutcome",
    "RowRecord",
    "SheetRow",
    "SyncReport",
    "count_states",
    "parse_ts",
]
