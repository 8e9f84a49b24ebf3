"""The WAL is copied back into the database every 64 MiB, not every 4 MiB.

A group commit of a large batch writes thousands of pages; with SQLite's default
(a checkpoint once the WAL holds 1,000 pages) every such commit was followed by a
checkpoint, and a row page written by a chunk's `sending` commit was copied into the
database again after its settling commit. Durability is unchanged: every commit is
synced to the WAL (`synchronous=FULL`) before it returns.
"""

from __future__ import annotations

from pathlib import Path

from batcher.ledger.connection import LEDGER_CHECKPOINT_PAGES
from batcher.ledger.store import Ledger
from tests.test_ledger import _started, sheet_row


def test_a_commit_of_a_few_thousand_pages_is_not_checkpointed_at_once(tmp_path: Path) -> None:
    ledger = _started(Ledger.open(tmp_path))
    (pages,) = ledger._db.execute("PRAGMA wal_autocheckpoint").fetchone()
    assert pages == LEDGER_CHECKPOINT_PAGES == 16 * 1024
    database = tmp_path / "ledger.sqlite"
    before = database.stat().st_size
    ledger.sync_rows(
        "b", [sheet_row(f"k{n:05d}", n + 2, ref=f"R{n}") for n in range(12_000)],
        retry_failed=False,
    )  # fmt: skip
    wal = Path(f"{database}-wal").stat().st_size
    assert wal > 1_000 * 4096  # more than SQLite's default would have let stand
    assert database.stat().st_size == before  # still all in the WAL: no checkpoint yet
    assert ledger.count_by_state("b")["pending"] == 12_000
    ledger.close()
    reopened = Ledger.open(tmp_path)
    assert reopened.count_by_state("b")["pending"] == 12_000
    reopened.close()
