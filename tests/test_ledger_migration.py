"""A ledger written by an older batcher is brought up to the current schema on open."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from batcher.core.errors import ConfigError
from batcher.ledger.schema import SCHEMA_VERSION
from batcher.ledger.store import Ledger


def indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}


def version_of(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        (value,) = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(value)
    finally:
        db.close()


def make_version_1(state_dir: Path) -> Path:
    """A ledger as version 1 left it: no index of rows by chunk."""
    Ledger.open(state_dir).close()
    path = state_dir / "ledger.sqlite"
    db = sqlite3.connect(path)
    db.execute("DROP INDEX rows_by_chunk")
    db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    return path


def test_a_new_ledger_has_the_current_version_and_the_chunk_index(tmp_path: Path) -> None:
    Ledger.open(tmp_path).close()
    path = tmp_path / "ledger.sqlite"
    assert version_of(path) == SCHEMA_VERSION == 5
    assert "rows_by_chunk" in indexes(path)


def test_a_version_1_ledger_gains_the_chunk_index_on_open(tmp_path: Path) -> None:
    path = make_version_1(tmp_path)
    assert "rows_by_chunk" not in indexes(path)
    Ledger.open(tmp_path).close()
    assert "rows_by_chunk" in indexes(path)
    assert version_of(path) == SCHEMA_VERSION


def test_a_ledger_from_a_newer_batcher_is_refused(tmp_path: Path) -> None:
    Ledger.open(tmp_path).close()
    path = tmp_path / "ledger.sqlite"
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,))
    db.commit()
    db.close()
    with pytest.raises(ConfigError, match="newer"):
        Ledger.open(tmp_path)
    assert version_of(path) == SCHEMA_VERSION + 1  # left as it was
