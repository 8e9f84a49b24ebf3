"""Opening the ledger: integrity check, schema migration, the transaction helper.

Either backend (see `backend.py`): a SQLite file, checked and migrated on every
open, or a PostgreSQL database, which must already be at this batcher's schema
(`batcher ledger migrate`; schema.py says why).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from batcher.core.clock import utc_now
from batcher.core.errors import ConfigError
from batcher.ledger.backend import Database, connect, plain_rows, write_begin, write_transaction
from batcher.ledger.location import LedgerLocation
from batcher.ledger.schema import (
    BASE_VERSION,
    ONE_CHUNK_PER_REQUEST,
    SCHEMA_VERSION,
    STEPS,
    base_statements,
    in_claiming_states,
)
from batcher.ledger.wal_guard import LedgerUnidentified, WalGuard

#: PostgreSQL's SQLSTATE for "disk full"
_PG_DISK_FULL = "53100"


#: The columns the sheet sync gives a new row (`sync._INSERT_ROW`); the others take
#: their defaults.
STAGED_ROW_COLUMNS = (
    "batch", "row_key", "source_row", "in_sheet", "reference", "content_hash", "fields",
    "passthrough", "currency", "face_value", "est_cost", "state", "error_code",
    "error_message", "failure_kind", "created_at", "updated_at",
)  # fmt: skip
_STAGED = ", ".join(STAGED_ROW_COLUMNS)
#: SQLite: new rows wait here, in the connection's own temporary database, until the
#: write transaction (or savepoint) that inserted them ends; see `_store_staged_rows`.
_CREATE_STAGING = f"CREATE TEMP TABLE IF NOT EXISTS rows_staging ({_STAGED})"
#: PostgreSQL keeps no order to follow: the same name inserts straight into `rows`.
_CREATE_STAGING_PG = f"CREATE TEMP VIEW rows_staging AS SELECT {_STAGED} FROM rows"
#: A chunk takes a batch's rows by currency, then row key (`execute.plan.plan_chunks`).
_STORE_STAGED = (
    f"INSERT INTO main.rows({_STAGED}) SELECT {_STAGED} FROM temp.rows_staging"
    " ORDER BY batch, currency, row_key"
)

#: SQLite's page cache per ledger connection, in KiB (`PRAGMA cache_size`)
LEDGER_CACHE_KIB = 64 * 1024


class LedgerDamaged(ConfigError):
    """The ledger file cannot be trusted: never continue from it, never call it intact."""


class LedgerDiskFull(ConfigError):
    """The database could not commit because its disk is full: nothing after this was sent."""


def _damaged(path: Path, exc: BaseException | str) -> LedgerDamaged:
    detail = " ".join(str(exc).split())[:200]  # SQLite's check spans lines
    return LedgerDamaged(
        f"the ledger at {path} is damaged ({detail}): restore it from backup (see README,"
        " 'Backups'); nothing was sent",
        hint="restore the newest backup over it, or move it aside to recover from the provider",
    )


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.OperationalError):
        return "full" in str(exc).lower()
    return getattr(exc, "sqlstate", None) == _PG_DISK_FULL


class LedgerConnection:
    """The open database, its transactions and its event log."""

    #: the last sheet sync's new rows' fields, decoded (`planning.FieldsDecoded`,
    #: made on first use by `planning.fields_decoded`)
    _fields_decoded: Any = None

    def __init__(self, where: Path | LedgerLocation, *, migrate: bool = False) -> None:
        """Open the ledger at `where` (a SQLite file's path, or a location). SQLite is
        migrated on open; PostgreSQL only when `migrate` (`batcher ledger migrate`)."""
        self.location = (
            where if isinstance(where, LedgerLocation) else LedgerLocation.sqlite_file(where)
        )
        self.backend = self.location.backend
        self.path = self.location.path  # the SQLite file; None on PostgreSQL
        self.run_id: str | None = None
        self._begin = write_begin(self.backend)
        self._group_savepoints = 0  # > 0: inside `grouped()`, write transactions are savepoints
        self._grouped = False
        #: the schema version found before this open migrated it (None: a new database)
        self.migrated_from: int | None = SCHEMA_VERSION
        self._wal_guard: WalGuard | None = None  # SQLite only: PostgreSQL has no -wal file
        if self.path is None:
            self._db: Database = connect(self.location)
            try:
                if migrate:
                    with self._tx() as db:
                        self.migrated_from = self._upgrade(db)
                else:
                    self._require_current()
                self._db.execute(_CREATE_STAGING_PG)
            except BaseException:
                self._db.close()
                raise
            return
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._wal_guard = WalGuard(path)  # notes, before SQLite does, whether the file is new
        try:
            # One thread at a time, but not always the opening one: the runner commits a
            # group of chunks `sending` on a thread of its own while its requests go on,
            # and waits for that commit before it uses the ledger again (execute/runner.py).
            self._db = connect(self.location, same_thread_only=False)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open ledger {path}: {exc}") from None
        try:
            self._open_checked()
        except LedgerUnidentified as exc:
            self._db.close()
            raise LedgerDamaged(str(exc), hint="see README, 'Backups'") from None
        except sqlite3.DatabaseError as exc:
            self._db.close()
            if _is_disk_full(exc):
                raise LedgerDiskFull(
                    f"the disk holding the ledger {path} is full; nothing was sent",
                    hint="free some space and rerun",
                ) from None
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc).lower():
                raise
            raise _damaged(path, exc) from None

    @classmethod
    def open(cls, state_dir: Path, location: LedgerLocation | None = None) -> Any:
        """The ledger at `location`, by default `ledger.sqlite` in `state_dir`."""
        return cls(location or LedgerLocation.in_state_dir(state_dir))

    def reopen_in_child(self) -> None:
        """In a forked child (SQLite only): read through a connection of its own from
        here on. The parent's connection is never used nor closed in the child: SQLite
        must not carry one across a fork. Read-only: the child writes nothing."""
        if self.path is None:
            raise RuntimeError("only a SQLite ledger is read from a forked child")
        self._wal_guard = None  # the parent's to close
        self._db = connect(self.location)
        self._db.execute("PRAGMA query_only=ON")
        self._db.execute(f"PRAGMA cache_size=-{LEDGER_CACHE_KIB}")

    def close(self) -> None:
        if self._wal_guard is not None:
            self._wal_guard.close(self._db)
        self._db.close()

    def _open_checked(self) -> None:
        """Open, check integrity, create or migrate. A 0-byte file is an empty ledger:
        every batch in it is new, so the run recovers its rows from the provider."""
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        # SQLite's default page cache is 2 MiB: at a million rows the indexes the runner
        # walks per chunk no longer fit, and every statement re-reads pages from the OS
        # (a 120k-row run used about a tenth more CPU). It grows only as pages are read.
        self._db.execute(f"PRAGMA cache_size=-{LEDGER_CACHE_KIB}")
        # quick_check reads every page: a truncated or scribbled file fails here, before
        # any of its rows can be believed. Through `pread`, never a memory map: a page
        # that cannot be read is then an error named here, not a SIGBUS (architecture.md).
        verdict = [r[0] for r in self._db.execute("PRAGMA quick_check(5)")]
        if verdict != ["ok"]:
            raise sqlite3.DatabaseError("; ".join(verdict))
        assert self._wal_guard is not None
        self._wal_guard.check(self._db)  # a lost -wal file: before anything is written
        self._db.execute(_CREATE_STAGING)
        with self._tx() as db:
            self.migrated_from = self._upgrade(db)
        self._wal_guard.register(self._db)

    def _upgrade(self, db: Database) -> int | None:
        """Create or migrate the schema inside the caller's write transaction; the
        version found (None for a new database)."""
        found = self._schema_version(db)
        if found is not None and found > SCHEMA_VERSION:
            raise self._newer(found)
        if self.backend == "sqlite" or found is None:
            for statement in base_statements(self.backend):  # IF NOT EXISTS: idempotent
                db.execute(statement)
        repaired: list[str] = []
        for version in range((found or BASE_VERSION) + 1, SCHEMA_VERSION + 1):
            repaired += STEPS[version](db, self.backend, self._columns_of)
        db.execute(ONE_CHUNK_PER_REQUEST)
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
        return found

    def _require_current(self) -> None:
        found = self._schema_version(self._db)
        if found is not None and found > SCHEMA_VERSION:
            raise self._newer(found)
        if found != SCHEMA_VERSION:
            state = "empty" if found is None else f"at schema {found}"
            raise ConfigError(
                f"the ledger at {self.location.shown} is {state}; this batcher needs schema"
                f" {SCHEMA_VERSION}",
                hint="run `batcher ledger migrate --ledger URL` once, with a role that may"
                " create tables",
            )

    def _newer(self, found: int) -> ConfigError:
        return ConfigError(
            f"the ledger {self.location.shown} was written by a newer batcher (schema {found})",
            hint="upgrade batcher",
        )

    def _schema_version(self, db: Database) -> int | None:
        if not self._has_table(db, "meta"):
            return None
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else None

    def _has_table(self, db: Database, name: str) -> bool:
        if self.backend == "postgresql":
            sql = (
                "SELECT 1 FROM information_schema.tables"
                " WHERE table_schema = current_schema() AND table_name = ?"
            )
        else:
            sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
        return db.execute(sql, (name,)).fetchone() is not None

    def _columns_of(self, table: str) -> set[str]:
        if self.backend == "postgresql":
            return {
                r[0]
                for r in self._db.execute(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_schema = current_schema() AND table_name = ?",
                    (table,),
                )
            }
        return {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}

    def _after_copy(self, db: Database, tables: Sequence[str]) -> None:
        """After rows were copied in with their ids, new ids continue past them (SQLite's
        AUTOINCREMENT does so by itself; a PostgreSQL identity needs telling)."""
        if self.backend != "postgresql":
            return
        for table in ("events", "webhook_events"):
            if table in tables:
                db.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                    f" (SELECT COALESCE(MAX(id), 0) + 1 FROM {table}), false)"
                )

    @contextmanager
    def grouped(self) -> Iterator[None]:
        """The write transactions inside the block share one commit, at its end.

        Each stays atomic on its own (a savepoint); when the block raises, what
        completed before is still committed, then the error goes on. The runner
        uses this to commit a chunk's `sending` together with the answers it got
        since its last commit: one durable write per chunk instead of three.
        """
        if self._grouped:
            yield
            return
        failure: BaseException | None = None
        with self._tx():
            self._grouped = True
            try:
                yield
            except BaseException as exc:  # commit what completed, then raise it
                failure = exc
            finally:
                self._grouped = False
        if failure is not None:
            raise failure

    @contextmanager
    def _tx(self) -> Iterator[Database]:
        """One write transaction, serialised with every other writer (backend.write_begin);
        inside `grouped()`, a savepoint of the group's transaction."""
        try:
            if self._grouped:
                with self._savepoint() as db:
                    yield db
                    self._store_staged_rows(db)
                return
            with write_transaction(self._db, self._begin) as db:
                yield db
                self._store_staged_rows(db)
        except BaseException as exc:
            if _is_disk_full(exc):
                # Every send is committed first, so this names a full disk before the send.
                raise LedgerDiskFull(
                    f"the disk holding the ledger {self.location.shown} is full; the last change"
                    " was not recorded and nothing more was sent",
                    hint="free some space and rerun",
                ) from None
            if (
                self.path is not None
                and isinstance(exc, sqlite3.DatabaseError)
                and not isinstance(exc, sqlite3.OperationalError | sqlite3.IntegrityError)
            ):
                raise _damaged(self.path, exc) from None
            raise
        if self._wal_guard is not None:
            self._wal_guard.committed(self._db)  # after the commit is durable, never before

    def _store_staged_rows(self, db: Database) -> None:
        """Store the rows the block inserted into `rows_staging` (the sheet sync's new
        rows) in `rows`, in the order chunks will take them: within the transaction
        that inserted them, before it commits.

        SQLite keeps a table's rows in rowid order, and rowids follow insertion order.
        The sync inserts a sheet a slice at a time in sheet order, while a chunk takes
        its 100 rows in row-key order (a hash): stored in sheet order, a chunk's rows
        lay on about 100 random pages of the table, and each transition of the chunk
        (sending, settled) rewrote all of them, to the WAL and again at the
        checkpoint, more of them outside the page cache the larger the batch. Stored
        in chunk order, they lie on a few neighbouring pages. Readers that want sheet
        order ask for it (ORDER BY source_row). PostgreSQL: `rows_staging` is a view
        of `rows`, nothing waits."""
        if self.backend != "sqlite":
            return
        if db.execute("SELECT max(rowid) FROM temp.rows_staging").fetchone()[0] is None:
            return  # nothing staged: one look at the end of an empty table
        db.execute(_STORE_STAGED)
        db.execute("DELETE FROM temp.rows_staging")

    @contextmanager
    def _savepoint(self) -> Iterator[Database]:
        self._group_savepoints += 1
        name = f"grouped_{self._group_savepoints}"
        self._db.execute(f"SAVEPOINT {name}")
        try:
            yield self._db
        except BaseException:
            self._db.execute(f"ROLLBACK TO SAVEPOINT {name}")
            self._db.execute(f"RELEASE SAVEPOINT {name}")
            raise
        self._db.execute(f"RELEASE SAVEPOINT {name}")

    def _by_key(self, batch: str, keys: Sequence[str], columns: str) -> Iterator[Any]:
        """`columns` of the batch's rows of `keys`, in no particular order, as plain
        tuples (a report and a plan read every row of the batch through here)."""
        for part, marks in in_slices(keys):
            yield from plain_rows(
                self._db,
                f"SELECT {columns} FROM rows WHERE batch = ? AND row_key IN ({marks})",
                (batch, *part),
            )

    def _release_claims(self, db: Database, batch: str, row_keys: Sequence[str]) -> None:
        """Give up the reference claims of these rows of `batch` that have left
        CLAIMING_STATES (failed, pending again, held, skipped): another batch of the
        account may then plan the reference. A row still claiming keeps its claim."""
        for part, marks in in_slices(row_keys):
            db.execute(
                f"DELETE FROM reference_claims WHERE batch = ? AND row_key IN ({marks})"
                " AND NOT EXISTS (SELECT 1 FROM rows r WHERE r.batch = reference_claims.batch"
                " AND r.row_key = reference_claims.row_key"
                f" AND r.state IN ({in_claiming_states()}))",
                (batch, *part),
            )

    def _event(
        self,
        batch: str,
        kind: str,
        *,
        chunk_key: str | None = None,
        row_key: str | None = None,
        **detail: Any,
    ) -> None:
        self._db.execute(INSERT_EVENT, self._event_values(batch, kind, chunk_key, row_key, detail))

    def _event_values(
        self,
        batch: str,
        kind: str,
        chunk_key: str | None,
        row_key: str | None,
        detail: dict[str, Any],
        now: str | None = None,
    ) -> tuple[Any, ...]:
        """An event row; `now`: one clock reading for a statement's many events (a
        chunk's rows settled, a new sheet's rows), else read here."""
        return (
            now or utc_now(),
            batch,
            self.run_id,
            kind,
            chunk_key,
            row_key,
            _event_detail(detail) if detail else None,
        )


#: an event's detail as JSON with sorted keys, from one encoder (not one per event)
_event_detail = json.JSONEncoder(sort_keys=True, default=str).encode


INSERT_EVENT = (
    "INSERT INTO events(ts, batch, run_id, kind, chunk_key, row_key, detail)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def in_pages(keys: Sequence[str], page: int) -> Iterator[Sequence[str]]:
    """`keys` a page at a time: what a paged read holds at once."""
    for start in range(0, len(keys), page):
        yield keys[start : start + page]


def in_slices(values: Sequence[str], size: int = 500) -> Iterator[tuple[Sequence[str], str]]:
    """`values` in slices, each with its `?` marks: one statement has a bounded
    number of parameters, so a long `IN (...)` list is asked for a slice at a time."""
    for start in range(0, len(values), size):
        part = values[start : start + size]
        yield part, ",".join("?" * len(part))
