"""A lost write-ahead log is named, never taken for an intact ledger (ledger/wal_guard.py).

Crashes are real: a child process opens the ledger, commits, and kills itself with
SIGKILL, so nothing of it closes cleanly. Each test that must not cry wolf checks a
way the -wal file legitimately ends up empty or gone.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from batcher.ledger.store import Ledger, LedgerDamaged
from batcher.ledger.wal_guard import sessions_folder

_CRASH = """
import os, signal, sys
from decimal import Decimal
from pathlib import Path
from batcher.ledger.store import Ledger, SheetRow
ledger = Ledger.open(Path(sys.argv[1]))
ledger.ensure_batch("b", provider="p", account_id="a", source_path="s.csv",
                    source_sha256=sys.argv[2] * 64)
rows = [SheetRow(row_key=f"{sys.argv[2]}{i}", source_row=i + 2, reference=None,
                 content_hash="c", fields={}, passthrough={}, currency="GBP",
                 face_value=Decimal("10"), est_cost=None, valid=True) for i in range(20)]
ledger.sync_rows("b", rows, retry_failed=False)
os.kill(os.getpid(), signal.SIGKILL)
"""


def crash_after_commits(state: Path, tag: str = "a") -> None:
    """A run that committed rows and died without closing anything."""
    done = subprocess.run([sys.executable, "-c", _CRASH, str(state), tag], check=False)
    assert done.returncode == -9


def wal(state: Path) -> Path:
    return state / "ledger.sqlite-wal"


def settled_ledger(state: Path) -> None:
    """A ledger whose earlier sessions closed cleanly: everything is in the database."""
    Ledger.open(state).close()


def test_a_crash_with_its_wal_reopens_and_keeps_every_row(tmp_path: Path) -> None:
    settled_ledger(tmp_path)
    crash_after_commits(tmp_path)
    assert wal(tmp_path).stat().st_size > 0
    ledger = Ledger.open(tmp_path)
    assert ledger.count_by_state("b")["pending"] == 20
    ledger.close()
    assert not any(sessions_folder(tmp_path / "ledger.sqlite").iterdir())
    Ledger.open(tmp_path).close()  # and again: the crash is absorbed, not re-reported


def test_a_crash_then_a_lost_wal_is_named_as_damage(tmp_path: Path) -> None:
    settled_ledger(tmp_path)
    crash_after_commits(tmp_path)
    wal(tmp_path).unlink()
    with pytest.raises(LedgerDamaged) as caught:
        Ledger.open(tmp_path)
    message = str(caught.value)
    assert f"the ledger at {tmp_path / 'ledger.sqlite'} is damaged" in message
    assert "restore it from backup" in message and "lost committed changes" in message
    assert "intact" not in message
    with pytest.raises(LedgerDamaged):  # it stays named until someone acts
        Ledger.open(tmp_path)


def test_a_wal_cut_short_is_named_as_damage(tmp_path: Path) -> None:
    settled_ledger(tmp_path)
    crash_after_commits(tmp_path)
    with wal(tmp_path).open("r+b") as fh:
        fh.truncate(0)
    with pytest.raises(LedgerDamaged, match="lost committed changes"):
        Ledger.open(tmp_path)


def test_a_first_run_that_lost_its_wal_is_named_too(tmp_path: Path) -> None:
    """The crashed run created the ledger: without its WAL, the file holds no tables."""
    crash_after_commits(tmp_path)
    wal(tmp_path).unlink()
    with pytest.raises(LedgerDamaged, match="lost committed changes"):
        Ledger.open(tmp_path)


def test_another_sqlite_client_checkpointing_after_a_crash_is_no_damage(tmp_path: Path) -> None:
    """Any client that closes last checkpoints and deletes the WAL: nothing was lost."""
    settled_ledger(tmp_path)
    crash_after_commits(tmp_path)
    other = sqlite3.connect(tmp_path / "ledger.sqlite")
    other.execute("SELECT COUNT(*) FROM rows").fetchone()
    other.close()
    assert not wal(tmp_path).exists()
    ledger = Ledger.open(tmp_path)
    assert ledger.count_by_state("b")["pending"] == 20
    ledger.close()


def test_sessions_open_at_once_do_not_mistake_each_other(tmp_path: Path) -> None:
    settled_ledger(tmp_path)
    first = Ledger.open(tmp_path)
    crash_after_commits(tmp_path, "b")  # a second process dies while the first is open
    second = Ledger.open(tmp_path)  # sees the dead session, its WAL intact
    second.close()
    first.close()
    Ledger.open(tmp_path).close()


def test_a_new_ledger_in_place_of_a_lost_one_is_no_damage(tmp_path: Path) -> None:
    settled_ledger(tmp_path)
    crash_after_commits(tmp_path)
    for name in ("ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-shm"):
        (tmp_path / name).unlink()  # moved aside: recovery from the provider takes over
    ledger = Ledger.open(tmp_path)
    assert sum(ledger.count_by_state("b").values()) == 0
    ledger.close()


def test_a_restored_backup_is_a_ledger_of_its_own(tmp_path: Path) -> None:
    settled_ledger(tmp_path)
    ledger = Ledger.open(tmp_path)
    ledger.backup(tmp_path / "backup.sqlite")
    ledger.close()
    crash_after_commits(tmp_path)
    wal(tmp_path).unlink()
    with pytest.raises(LedgerDamaged):
        Ledger.open(tmp_path)
    (tmp_path / "ledger.sqlite-shm").unlink(missing_ok=True)
    shutil.copy(tmp_path / "backup.sqlite", tmp_path / "ledger.sqlite")
    Ledger.open(tmp_path).close()  # the operator's restore is believed


def _without_identity(backup: Path) -> None:
    """A backup as builds before ledgers had an identity wrote it."""
    db = sqlite3.connect(backup)
    with db:
        db.execute("DELETE FROM meta WHERE key = 'ledger_id'")
    db.close()


def test_an_old_backup_without_identity_is_named_and_adopted(tmp_path: Path) -> None:
    """Restoring a backup made before ledgers had an identity, after a crash, was called
    a lost WAL with no way out but moving the backup aside."""
    settled_ledger(tmp_path)
    ledger = Ledger.open(tmp_path)
    ledger.backup(tmp_path / "backup.sqlite")
    ledger.close()
    _without_identity(tmp_path / "backup.sqlite")
    crash_after_commits(tmp_path)
    for name in ("ledger.sqlite-wal", "ledger.sqlite-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    shutil.copy(tmp_path / "backup.sqlite", tmp_path / "ledger.sqlite")
    folder = sessions_folder(tmp_path / "ledger.sqlite")
    with pytest.raises(LedgerDamaged) as caught:
        Ledger.open(tmp_path)
    message = str(caught.value)
    assert "has no identity" in message and "backup you restored" in message
    assert "is damaged or an old backup" in message
    assert f"remove {folder} and rerun" in message and "--ledger-lost" in message
    shutil.rmtree(folder)  # what the message says to do for an old backup
    ledger = Ledger.open(tmp_path)  # adopted: it gets an identity of its own
    ledger.close()
    crash_after_commits(tmp_path, "c")
    ledger = Ledger.open(tmp_path)  # and the guard covers it from now on
    assert ledger.count_by_state("b")["pending"] == 20
    ledger.close()


def test_an_orphan_wal_beside_a_deleted_ledger_is_set_aside_unread(tmp_path: Path) -> None:
    settled_ledger(tmp_path)
    crash_after_commits(tmp_path)
    (tmp_path / "ledger.sqlite").unlink()  # the operator deleted the file, nothing else
    orphan = wal(tmp_path).read_bytes()
    ledger = Ledger.open(tmp_path)  # a new ledger: its batches are recovered
    assert sum(ledger.count_by_state("b").values()) == 0
    ledger.close()
    kept = list(tmp_path.glob("ledger.sqlite-wal.orphan-*"))
    assert [p.read_bytes() for p in kept] == [orphan]
    Ledger.open(tmp_path).close()


def test_a_shared_ledgers_session_files_take_its_permissions(tmp_path: Path) -> None:
    """Another user of a shared ledger must be able to read the sidecar of a session
    that ended uncleanly (one it could not open would be skipped unchecked), so a
    group-writable ledger gets a group-readable sessions folder and sidecars, whatever
    the umask."""
    import os
    import stat

    folder = tmp_path / "shared"
    folder.mkdir()
    os.chmod(folder, 0o770)
    Ledger(folder / "ledger.sqlite").close()
    os.chmod(folder / "ledger.sqlite", 0o660)
    shutil.rmtree(sessions_folder(folder / "ledger.sqlite"), ignore_errors=True)
    umask = os.umask(0o077)
    try:
        ledger = Ledger(folder / "ledger.sqlite")
    finally:
        os.umask(umask)
    try:
        sessions = sessions_folder(folder / "ledger.sqlite")
        sidecars = [p for p in sessions.iterdir() if not p.name.startswith(".")]
        assert len(sidecars) == 1
        assert stat.S_IMODE(sessions.stat().st_mode) == 0o770
        assert stat.S_IMODE(sidecars[0].stat().st_mode) == 0o660
    finally:
        ledger.close()
