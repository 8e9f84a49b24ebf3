"""The SQLite ledger: the single source of truth and the only code that writes state.

One database per state directory holds every batch, so a row that succeeded in
an earlier batch can be recognised. WAL mode, `synchronous=FULL`: a commit is on
disk before the HTTP request it guards leaves. Every transition appends to the
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
):
    """The ledger of one state directory: open it with `Ledger.open(state_dir)`."""


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
