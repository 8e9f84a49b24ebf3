"""The batch lock lives with the ledger, not with whoever runs it: beside a SQLite
ledger file, and in a PostgreSQL session that is watched while a run holds it."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import psycopg
import pytest

from batcher.core.errors import BatchLocked, ConfigError
from batcher.ledger.location import LedgerLocation, parse_ledger_url
from batcher.ledger.lock import PgBatchLock, advisory_keys, batch_lock
from batcher.ledger.store import Ledger


def _shared_ledger(tmp_path: Path) -> LedgerLocation:
    location = parse_ledger_url(f"sqlite://{tmp_path / 'shared' / 'team.sqlite'}")
    Ledger(location, migrate=True).close()
    return location


def test_two_state_folders_on_one_sqlite_ledger_meet_one_batch_lock(tmp_path: Path) -> None:
    """Two operators (two state folders) on one shared ledger file exclude each other."""
    location = _shared_ledger(tmp_path)
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    with batch_lock(alice, "nightly", location):
        # flock belongs to an open file, so a second open in this process is refused
        # exactly as another process would be
        refused = pytest.raises(BatchLocked, match=f"locked by pid {os.getpid()} ")
        with refused, batch_lock(bob, "nightly", location):
            pass
        with batch_lock(bob, "another batch", location):
            pass  # one batch's lock never holds another
    assert (tmp_path / "shared" / "locks" / "nightly.lock").exists()
    assert not (alice / "locks").exists() and not (bob / "locks").exists()
    with batch_lock(bob, "nightly", location):
        pass  # released with its holder


def test_the_default_ledger_keeps_its_locks_in_the_state_folder(tmp_path: Path) -> None:
    with batch_lock(tmp_path, "nightly"):
        assert (tmp_path / "locks" / "nightly.lock").exists()
    with (
        batch_lock(tmp_path, "nightly", LedgerLocation.in_state_dir(tmp_path)),
        pytest.raises(BatchLocked),
        batch_lock(tmp_path, "nightly"),
    ):
        pass


def test_a_shared_ledgers_lock_files_take_its_permissions(tmp_path: Path) -> None:
    """Whoever may write the ledger may take its locks: a group-writable ledger in a
    group-writable folder gets group-writable locks, whatever the umask."""
    location = _shared_ledger(tmp_path)
    assert location.path is not None
    os.chmod(location.path.parent, 0o770)
    os.chmod(location.path, 0o660)
    umask = os.umask(0o077)
    try:
        with batch_lock(tmp_path / "alice", "nightly", location):
            pass
    finally:
        os.umask(umask)
    locks = location.path.parent / "locks"
    assert stat.S_IMODE(locks.stat().st_mode) == 0o770
    assert stat.S_IMODE((locks / "nightly.lock").stat().st_mode) == 0o660


@pytest.mark.skipif(os.geteuid() == 0, reason="root opens any file")
def test_a_lock_file_it_may_not_open_is_a_clear_error(tmp_path: Path) -> None:
    location = _shared_ledger(tmp_path)
    assert location.path is not None
    locks = location.path.parent / "locks"
    locks.mkdir()
    (locks / "nightly.lock").touch()
    os.chmod(locks / "nightly.lock", 0o400)
    refused = pytest.raises(ConfigError, match=r"cannot open the batch lock .*nightly\.lock")
    with refused, batch_lock(tmp_path, "nightly", location):
        pass


def _lock_backend(url: str, batch: str) -> int:
    with psycopg.connect(url, autocommit=True) as admin:
        row = admin.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND classid = %s AND objid = %s AND objsubid = 2",
            advisory_keys(batch),
        ).fetchone()
    assert row is not None, "nobody holds the batch lock"
    return int(row[0])


def test_a_pg_lock_whose_session_is_terminated_stops_the_run(pg_url: str) -> None:
    location = parse_ledger_url(pg_url.replace("postgres@", "postgres:Lock-Quokka-7731@"))
    stop = threading.Event()
    # check_every is long: the server's goodbye must wake the watcher, not the timer
    with PgBatchLock(location, "nightly", check_every=60) as lock:
        lock.watch(stop)
        assert not stop.wait(0.3) and lock.lost is None
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (_lock_backend(pg_url, "nightly"),))
        assert stop.wait(30), "the lost lock was not noticed"
        assert lock.lost is not None
        assert "batch lock" in lock.lost and "session ended" in lock.lost
        assert "Quokka" not in lock.lost and "postgres:***@" in lock.lost
    # and the batch is free for the next run
    with PgBatchLock(location, "nightly"):
        pass


def test_a_pg_lock_released_by_its_own_session_is_lost_too(pg_url: str) -> None:
    """The timer check asks the server whether the session still holds the lock."""
    stop = threading.Event()
    with PgBatchLock(parse_ledger_url(pg_url), "nightly", check_every=0.05) as lock:
        lock.watch(stop)
        assert lock._db is not None
        # a stray unlock on the lock's own session (nothing in batcher does this)
        lock._db.execute("SELECT pg_advisory_unlock_all()")
        assert stop.wait(30)
        assert lock.lost is not None and "no longer holds it" in lock.lost


def test_a_watched_pg_lock_raises_no_alarm_while_held_nor_on_release(pg_url: str) -> None:
    stop = threading.Event()
    lock = PgBatchLock(parse_ledger_url(pg_url), "nightly", check_every=0.02)
    with lock:
        lock.watch(stop)
        assert not stop.wait(0.5)  # many timer checks, all fine
    assert not stop.is_set() and lock.lost is None
    assert not any(t.name.startswith("batch-lock-watch") for t in threading.enumerate())
