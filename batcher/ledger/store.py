"""The ledger: the single source of truth and the only code that writes state.

One database holds every batch, so a row that succeeded in an earlier batch can
be recognised: a SQLite file per state directory (the default), or a shared
PostgreSQL database (`--ledger postgresql://...`, see `backend.py`). SQLite runs in
WAL mode with `synchronous=FULL`, PostgreSQL with `synchronous_commit=on`: a
commit is on disk before the HTTP request it guards leaves. Every transition appends to the
`events` table, which is never updated or deleted.

`Ledger` is composed of one part per concept, each in its own module; they share
the connection, the transaction helper and the event log of `LedgerConnection`.

Row states: see `batcher.core.states`.
Money is stored as TEXT and read back as Decimal.
"""

from __future__ import annotations

from batcher.core.clock import utc_now
from batcher.ledger.backup import LedgerBackup
from batcher.ledger.batches import LedgerBatches
from batcher.ledger.connection import LedgerDamaged, LedgerDiskFull
from batcher.ledger.copy import LedgerCopy
from batcher.ledger.lock import BatchLock
from batcher.ledger.planning import HELD_ELSEWHERE, LedgerPlanning
from batcher.ledger.queries import LedgerQueries
from batcher.ledger.records import (
    ChunkRecord,
    RowContent,
    RowOutcome,
    RowRecord,
    SheetRow,
    SyncReport,
    count_states,
    parse_ts,
)
from batcher.ledger.recovery import LedgerRecovery
from batcher.ledger.schema import SCHEMA_VERSION
from batcher.ledger.sync import LedgerSync
from batcher.ledger.transitions import LedgerTransitions, OrderClaimed


class Ledger(
    LedgerBatches,
    LedgerRecovery,
    LedgerSync,
    LedgerPlanning,
    LedgerTransitions,
    LedgerQueries,
    LedgerBackup,
    LedgerCopy,
):
    """The ledger: `Ledger.open(state_dir)` (SQLite in the state folder), `Ledger(location)`
    (either backend, see `location.py`)."""


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
    "RowContent",
    "RowOutcome",
    "RowRecord",
    "SheetRow",
    "SyncReport",
    "count_states",
    "parse_ts",
    "utc_now",
]
