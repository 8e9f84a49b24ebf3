"""Opening the ledger: integrity check, schema migration, the transaction helper."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

from batcher.core.clock import utc_now
from batcher.core.errors import ConfigError
from batcher.ledger.schema import SCHEMA, SCHEMA_VERSION, migrate
from batcher.ledger.wal_guard import WalGuard


class LedgerDamaged(ConfigError):
    """The ledger file cannot be trusted: never continue from it, never call it intact."""


class LedgerDiskFull(ConfigError):
    """SQLite could not commit because the disk is full: nothing after this was sent."""


def _damaged(path: Path, exc: BaseException | str) -> LedgerDamaged:
    detail = " ".join(str(exc).split())[:200]  # SQLite's check spans lines
    return LedgerDamaged(
        f"the ledger at {path} is damaged ({detail}): restore it from backup (see README,"
        " 'Backups'); nothing was sent",
        hint="restore the newest backup over it, or move it aside to recover from the provider",
    )


def _is_disk_full(exc: sqlite3.Error) -> bool:
    return "full" in str(exc).lower()


class LedgerConnection:
    """The open database, its transactions and its event log."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._wal_guard = WalGuard(path)  # notes, before SQLite does, whether the file is new
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

    @classmethod
    def open(cls, state_dir: Path) -> Self:
        return cls(state_dir / "ledger.sqlite")

    def close(self) -> None:
        self._wal_guard.close(self._db)
        self._db.close()

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
        self._wal_guard.check(self._db)  # a lost -wal file: before anything is written
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
        self._wal_guard.register(self._db)

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
        self._wal_guard.committed(self._db)  # after the commit is durable, never before

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


INSERT_EVENT = (
    "INSERT INTO events(ts, batch, run_id, kind, chunk_key, row_key, detail)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
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


def in_slices(values: Sequence[str], size: int = 500) -> Iterator[tuple[Sequence[str], str]]:
    """`values` in slices, each with its `?` marks: one statement has a bounded
    number of parameters, so a long `IN (...)` list is asked for a slice at a time."""
    for start in range(0, len(values), size):
        part = values[start : start + size]
        yield part, ",".join("?" * len(part))
