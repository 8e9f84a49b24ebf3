"""A ledger written by an older batcher is brought up to the current schema on open."""

from __future__ import annotations

import json
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from batcher.core.errors import ConfigError
from batcher.ledger.location import parse_ledger_url
from batcher.ledger.schema import SCHEMA_VERSION
from batcher.ledger.store import Ledger, SheetRow


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
    assert version_of(path) == SCHEMA_VERSION == 7
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


def _old_held_rows(led: Ledger) -> None:
    """Rows as builds before the `held` state recorded their holds."""
    led.ensure_batch("b", provider="p", account_id="a", source_path="s", source_sha256="0")
    rows = [
        SheetRow(
            row_key=f"k{n}", source_row=n, reference=f"R{n}", content_hash=f"c{n}",
            fields={"recipient_email": f"k{n}@x.com"}, passthrough={}, currency="GBP",
            face_value=Decimal("10.00"), est_cost=None, valid=True,
        )
        for n in (2, 3, 4, 5, 6)
    ]  # fmt: skip
    led.sync_rows("b", rows, retry_failed=False)
    old = [
        ("k2", "failed", "held_possible_duplicate"),
        ("k3", "failed", "held_ambiguous_provider_match"),
        ("k4", "pending", "held_reference_in_another_batch"),
        ("k5", "failed", "declined"),  # a real failure stays one
    ]
    with led._tx() as db:
        for key, state, code in old:
            db.execute(
                "UPDATE rows SET state = ?, error_code = ?, error_message = 'why',"
                " failure_kind = CASE ? WHEN 'failed' THEN 'permanent' END WHERE row_key = ?",
                (state, code, state, key),
            )
        db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")


def _states(led: Ledger) -> dict[str, tuple[str, str | None]]:
    found = led.rows_by_key("b", ["k2", "k3", "k4", "k5", "k6"])
    return {k: (r.state, r.error_code) for k, r in found.items()}


_MIGRATED = {
    "k2": ("held", "held_possible_duplicate"),
    "k3": ("held", "held_ambiguous_provider_match"),
    "k4": ("held", "held_reference_in_another_batch"),
    "k5": ("failed", "declined"),
    "k6": ("pending", None),
}


def test_rows_older_builds_held_as_failed_or_pending_move_to_held(tmp_path: Path) -> None:
    led = Ledger.open(tmp_path)
    _old_held_rows(led)
    led.close()
    assert version_of(tmp_path / "ledger.sqlite") == 2
    led = Ledger.open(tmp_path)
    try:
        assert _states(led) == _MIGRATED
        assert led.rows_by_key("b", ["k2"])["k2"].failure_kind is None  # not a failure
        assert [json.loads(e["detail"]) for e in led.events("b", "rows_held_migrated")] == [
            {"count": 2, "from": "failed"},
            {"count": 1, "from": "pending"},
        ]
    finally:
        led.close()
    assert version_of(tmp_path / "ledger.sqlite") == SCHEMA_VERSION


def test_a_postgresql_ledger_moves_old_holds_on_migrate(pg_url: str) -> None:
    led = Ledger(parse_ledger_url(pg_url))
    _old_held_rows(led)
    led.close()
    with pytest.raises(ConfigError, match="at schema 2"):
        Ledger(parse_ledger_url(pg_url))
    Ledger(parse_ledger_url(pg_url), migrate=True).close()
    led = Ledger(parse_ledger_url(pg_url))
    try:
        assert _states(led) == _MIGRATED
    finally:
        led.close()
