"""A consistent copy of the ledger while it is in use."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from batcher.core.errors import ConfigError
from batcher.ledger.connection import LedgerConnection, LedgerDamaged
from batcher.ledger.wal_guard import new_ledger_id


class LedgerBackup(LedgerConnection):
    """The ledger's online backup."""

    def backup(self, target: Path) -> int:
        """A consistent copy through SQLite's online backup, safe while a run writes.
        Returns the pages copied. A PostgreSQL ledger is backed up by PostgreSQL's
        own tools, which also give point-in-time recovery."""
        if not isinstance(self._db, sqlite3.Connection):
            raise ConfigError(
                f"the ledger at {self.location.shown} is a PostgreSQL database: back it up"
                " with pg_dump (see README, 'A shared PostgreSQL ledger')",
                hint="pg_dump --format=custom --file=ledger.dump DBNAME",
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        partial.unlink(missing_ok=True)
        dest = sqlite3.connect(partial)
        try:
            self._db.backup(dest)
            new_ledger_id(dest)  # restored, it is a ledger of its own (ledger/wal_guard.py)
            dest.commit()
            pages = int(dest.execute("PRAGMA page_count").fetchone()[0])
            dest.execute("PRAGMA journal_mode=DELETE")
            if [r[0] for r in dest.execute("PRAGMA quick_check(1)")] != ["ok"]:
                raise LedgerDamaged(f"the backup written to {partial} does not check out")
        finally:
            dest.close()
        os.replace(partial, target)  # a half-written backup never takes the name
        return pages
