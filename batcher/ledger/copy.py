"""Copying a ledger's tables into another ledger, across backends.

The source is read in one snapshot (a read-only transaction: REPEATABLE READ on
PostgreSQL, a deferred transaction on SQLite) and the target is written in one
write transaction, so the copy is all or nothing and consistent even while runs
write to the source. Rows stream in slices: a large ledger is never held in
memory whole. Used by `run --dry-run` on PostgreSQL (a scratch SQLite copy)
and by `batcher ledger copy`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import islice
from typing import Any

from batcher.core.errors import ConfigError
from batcher.ledger.backend import Database, read_begin
from batcher.ledger.connection import LedgerConnection
from batcher.ledger.schema import TABLES

#: what planning reads: enough for a dry run to plan exactly as the run would
PLANNING_TABLES = ("batches", "rows", "reference_claims", "chunks", "chunk_rows")
#: every table but `meta` (each ledger keeps its own schema version)
ALL_TABLES = tuple(t for t in TABLES if t != "meta")
_SLICE = 2000


class LedgerCopy(LedgerConnection):
    """This ledger's rows, copied into another."""

    def copy_into(
        self, target: LedgerConnection, tables: Sequence[str] = ALL_TABLES
    ) -> dict[str, int]:
        """Insert every row of `tables` into `target`, in one target transaction.
        Returns the rows copied per table."""
        copied: dict[str, int] = {}
        self._db.execute(read_begin(self.backend))
        try:
            with target._tx() as db:
                clash = self._batches_at(target, db)
                if clash:
                    shown = ", ".join(repr(b) for b in clash[:10])
                    raise ConfigError(
                        f"the ledger at {target.location.shown} already has batch"
                        f"{'es' if len(clash) > 1 else ''} {shown}; nothing was copied",
                        hint="copy into a ledger without those batches; a batch is never"
                        " merged or overwritten",
                    )
                if "reference_claims" in tables:
                    self._refuse_claimed_references(target, db)
                for table in (t for t in TABLES if t in tables):  # foreign-key order
                    columns = sorted(self._columns_of(table) & target._columns_of(table))
                    insert = (
                        f"INSERT INTO {table}({', '.join(columns)})"
                        f" VALUES ({', '.join('?' * len(columns))})"
                    )
                    rows = self._stream(f"SELECT {', '.join(columns)} FROM {table}")
                    copied[table] = 0
                    while part := [tuple(r) for r in islice(rows, _SLICE)]:
                        db.executemany(insert, part)
                        copied[table] += len(part)
                target._after_copy(db, tables)
        finally:
            self._db.execute("ROLLBACK")  # the read snapshot: nothing was written
        return copied

    def _batches_at(self, target: LedgerConnection, db: Database) -> list[str]:
        """This ledger's batch names that `target` already has, sorted."""
        mine = {r[0] for r in self._db.execute("SELECT batch FROM batches")}
        theirs = {r[0] for r in db.execute("SELECT batch FROM batches")}
        clash = mine & theirs
        return sorted(clash)

    def _refuse_claimed_references(self, target: LedgerConnection, db: Database) -> None:
        """A reference this ledger's batches hold that a batch at the target holds too
        would be one reference held twice: merging them is a person's decision."""
        theirs = {
            (r[0], r[1], r[2]): r[3]
            for r in db.execute(
                "SELECT provider, account_id, reference, batch FROM reference_claims"
            )
        }
        if not theirs:
            return
        both = sorted(
            (r[2], r[3], theirs[(r[0], r[1], r[2])])
            for r in self._stream(
                "SELECT provider, account_id, reference, batch FROM reference_claims"
            )
            if (r[0], r[1], r[2]) in theirs
        )
        if both:
            shown = "; ".join(
                f"reference {ref!r} of batch {mine!r} is held by batch {other!r}"
                for ref, mine, other in both[:5]
            )
            raise ConfigError(
                f"the ledger at {target.location.shown} already holds {len(both)} of these"
                f" references for the same account ({shown}); nothing was copied",
                hint="check with the provider which batch ordered them; copy into a ledger"
                " that does not hold them",
            )

    def _stream(self, sql: str) -> Iterator[Any]:
        stream = getattr(self._db, "stream", None)  # PostgreSQL: a server-side cursor
        return iter(stream(sql) if stream is not None else self._db.execute(sql))
