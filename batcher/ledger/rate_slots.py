"""A key's request schedule shared by every process on one PostgreSQL ledger.

`rate_slots` holds one row per key fingerprint (SHA-256 of the provider's base
URL and the key: never the key): the time, in seconds on the database's clock,
of the last slot handed out. Reserving a slot is one statement: the row is
locked, the new slot is the later of (last slot + the asker's interval) and
now, and it becomes the last slot. Concurrent reservations queue on the row's
lock, so every process gets its own slot, at least `interval` after the one
before, and a machine whose own clock is off still keeps the schedule: only
the database's clock (`clock_timestamp()`) counts. The interval is the
asker's, applied before its own slot: a process that has just learned the
key's limit paces by it at once. The statement runs on a
connection of its own, outside the ledger's write transactions, so a slot never
waits for a ledger write.

The transport's limiter takes this as a `throttle.SharedPace` (it never imports
the ledger). SQLite ledgers have no shared schedule: one file is one machine,
and the in-process limiter already covers one process.
"""

from __future__ import annotations

import threading

from batcher.ledger.backend import Database
from batcher.ledger.connection import LedgerConnection
from batcher.ledger.location import LedgerLocation

_NOW = "EXTRACT(EPOCH FROM clock_timestamp())::float8"
_RESERVE = (
    "INSERT INTO rate_slots(key_fingerprint, last_slot, interval_seconds, updated_at)"
    f" VALUES (?, {_NOW}, ?, clock_timestamp()::text)"
    " ON CONFLICT (key_fingerprint) DO UPDATE SET"
    f" last_slot = GREATEST(rate_slots.last_slot + excluded.interval_seconds, {_NOW}),"
    " interval_seconds = excluded.interval_seconds, updated_at = excluded.updated_at"
    f" RETURNING last_slot - {_NOW}"
)


class SharedRateSlots:
    """`throttle.SharedPace` on a PostgreSQL ledger: one connection, thread-safe.

    Opened like the ledger (a database at another schema is refused, naming
    `batcher ledger migrate`). Once closed it reserves nothing: a limiter that
    outlives its run (limiters are per key and per process) then paces alone.
    """

    def __init__(self, location: LedgerLocation) -> None:
        self._conn: LedgerConnection | None = LedgerConnection(location)
        self._lock = threading.Lock()

    def reserve(self, key: str, interval: float) -> float:
        with self._lock:
            if self._conn is None:
                return 0.0
            db: Database = self._conn._db
            row = db.execute(_RESERVE, (key, interval)).fetchone()
        return float(row[0])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def shared_rate_slots(location: LedgerLocation) -> SharedRateSlots | None:
    """The shared schedule of a PostgreSQL ledger; None for SQLite (see above)."""
    if location.backend != "postgresql":
        return None
    return SharedRateSlots(location)
