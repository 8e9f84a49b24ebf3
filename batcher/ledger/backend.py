"""The seam between the ledger and its database: one interface, two backends.

Every ledger module speaks to `Database`, which is what `sqlite3.Connection`
already is (used as is, so the embedded default pays nothing for the seam) and
what `postgres.PostgresDatabase` imitates. SQL is written once, with `?`
placeholders and portable syntax; the PostgreSQL adapter translates the
placeholders. Dialect differences are confined to the schema and its
migrations (`migrations.py`) and to how a write transaction begins
(`write_begin`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from batcher.ledger.location import Backend, LedgerLocation

#: Key of the transaction-scoped advisory lock that every PostgreSQL ledger write
#: transaction takes first (the one-argument key space: the two-argument one is free
#: for per-batch locks). Any fixed number works as long as every batcher uses it.
LEDGER_WRITE_LOCK = 0x6261746368657231  # "batcher1"

#: Below this many new rows, stale planner statistics cost nothing measurable.
ANALYZE_AFTER_ROWS = 500


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Row(Protocol):
    """A result row: `row[0]`, `row["col"]` and `dict(row)`, like `sqlite3.Row`."""

    def __getitem__(self, key: int | str, /) -> Any: ...

    def keys(self) -> list[str]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Database(Protocol):
    """An open connection in autocommit mode: transactions are begun explicitly."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Cursor: ...

    @property
    def in_transaction(self) -> bool: ...

    def close(self) -> None: ...


def write_begin(backend: Backend) -> tuple[str, ...]:
    """The statements that open a ledger write transaction.

    SQLite's BEGIN IMMEDIATE takes the database's single write lock at once, so
    every write transaction sees every earlier commit and none interleave: the
    ledger's check-then-write steps (a reference held elsewhere, an order already
    claimed, the same sheet run twice) rely on that. PostgreSQL lets writers run
    concurrently under READ COMMITTED, where two transactions could each check,
    see nothing, and both write. Taking one transaction-scoped advisory lock
    first restores SQLite's order exactly: writers queue on it, and as READ
    COMMITTED reads each statement's snapshot after the lock was granted, each
    sees what the previous writer committed. The lock is released by COMMIT or
    ROLLBACK, and by the server when the session dies. Unique constraints and
    foreign keys stay the backstop on both backends.
    """
    if backend == "postgresql":
        return ("BEGIN", f"SELECT pg_advisory_xact_lock({LEDGER_WRITE_LOCK})")
    return ("BEGIN IMMEDIATE",)


def read_begin(backend: Backend) -> str:
    """A transaction that reads one consistent snapshot of every table."""
    if backend == "postgresql":
        return "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
    return "BEGIN"


def connect(
    location: LedgerLocation, *, timeout: float = 30.0, same_thread_only: bool = True
) -> Database:
    """An autocommit connection to the ledger's database (nothing checked yet)."""
    if location.backend == "postgresql":
        from batcher.ledger.postgres import PostgresDatabase  # psycopg loads only when used

        return PostgresDatabase(location)
    assert location.path is not None
    location.path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(
        location.path, isolation_level=None, timeout=timeout, check_same_thread=same_thread_only
    )
    db.row_factory = sqlite3.Row
    return db


@contextmanager
def write_transaction(db: Database, begin: Sequence[str]) -> Iterator[Database]:
    """One write transaction begun with `begin` (see `write_begin`): committed when the
    block ends, rolled back when it raises (a failed COMMIT included)."""
    db.execute(begin[0])
    try:  # the rest (PostgreSQL's advisory-lock wait) can be interrupted: roll back then
        for statement in begin[1:]:
            db.execute(statement)
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def refresh_statistics(db: Database, backend: Backend, table: str, added: int) -> None:
    """Let PostgreSQL's planner know a table just grew by `added` rows.

    A table filled in one go (a new ledger's first 20,000-row sheet) has no
    statistics until autovacuum gets to it, up to a minute later. Until then the
    planner guesses a handful of rows and reads a chunk's rows by `batch` alone,
    filtering the rest: every per-chunk statement then reads the whole batch and
    a run turns quadratic in its size. ANALYZE samples a bounded number of rows,
    so it costs a fraction of a second even on a large table; it runs only when
    the table has never been analysed or grew by more than a tenth, and outside
    any write transaction (it must not hold its lock while others write).
    SQLite plans by its indexes' shapes and needs nothing.
    """
    if backend != "postgresql" or added < ANALYZE_AFTER_ROWS:
        return
    found = db.execute(
        "SELECT reltuples FROM pg_class WHERE oid = to_regclass(?)", (table,)
    ).fetchone()
    if found is None or found[0] < 0 or added > 0.1 * found[0]:
        db.execute(f"ANALYZE {table}")


def plain_rows(db: Database, sql: str, parameters: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
    """A query's rows as plain tuples: on SQLite without building a `sqlite3.Row` for
    each (a sync reads 100,000 of them on every run)."""
    if isinstance(db, sqlite3.Connection):
        cursor = db.cursor()
        cursor.row_factory = None
        yield from cursor.execute(sql, parameters)
    else:
        yield from (tuple(r) for r in db.execute(sql, parameters))


def is_database_error(exc: BaseException) -> bool:
    """A failure of the ledger's database itself (either backend), not of batcher."""
    if isinstance(exc, sqlite3.DatabaseError):
        return True
    return type(exc).__module__.split(".")[0] == "psycopg" and isinstance(exc, Exception)


#: SQLite's result codes for a refused right: a read-only file, a file or folder it may
#: not lock or write, or an access the library itself denies. Not the other read-only
#: codes: a ledger file moved away mid-run (READONLY_DBMOVED) or a journal that cannot
#: be rolled back (READONLY_ROLLBACK, READONLY_RECOVERY) may be damage.
_SQLITE_REFUSED = frozenset({
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_READONLY_CANTLOCK,
    sqlite3.SQLITE_READONLY_DIRECTORY,
    sqlite3.SQLITE_PERM,
})  # fmt: skip
#: PostgreSQL's SQLSTATE for a role without the privilege a statement needs.
_PG_INSUFFICIENT_PRIVILEGE = "42501"


def is_permission_error(exc: BaseException) -> bool:
    """The database refused the ledger's role (or the SQLite file's user) a right the
    command needs: a setup matter to fix, not a sign of damage."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return code in _SQLITE_REFUSED
    return is_database_error(exc) and getattr(exc, "sqlstate", None) == _PG_INSUFFICIENT_PRIVILEGE
