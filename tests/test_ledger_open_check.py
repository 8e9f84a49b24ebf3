"""The integrity check on open reads the file without a memory map; a forked child
reads the ledger through a connection of its own, read-only."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from batcher.ledger import connection
from batcher.ledger.store import Ledger
from tests.test_ledger import sheet_row


def test_the_check_on_open_reads_without_a_memory_map(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Ledger.open(tmp_path).close()
    statements: list[str] = []
    real = connection.connect

    def connect(*args: Any, **kwargs: Any) -> Any:
        db = real(*args, **kwargs)
        db.set_trace_callback(statements.append)
        return db

    monkeypatch.setattr(connection, "connect", connect)
    led = Ledger.open(tmp_path)
    # A mapped page that cannot be read is a SIGBUS, not an error naming the ledger.
    assert "PRAGMA quick_check(5)" in statements
    assert not [s for s in statements if s.lower().startswith("pragma mmap_size=")]
    assert led._db.execute("PRAGMA mmap_size").fetchone()[0] == 0
    led.close()


def test_a_forked_child_reads_through_a_connection_of_its_own_and_writes_nothing(
    tmp_path: Path,
) -> None:
    led = Ledger.open(tmp_path)
    led.ensure_batch("b", provider="p", account_id="a", source_path="s", source_sha256="0")
    led.sync_rows("b", [sheet_row("k1", 2)], retry_failed=False)
    parents = led._db
    led.reopen_in_child()
    assert led._db is not parents
    assert list(led.rows_by_key("b", ["k1"])) == ["k1"]
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        led._db.execute("DELETE FROM rows")
    parents.close()
    led._db.close()
