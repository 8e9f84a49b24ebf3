"""The per-batch lock: one run per batch. A flock beside a SQLite ledger; a
PostgreSQL advisory lock on a PostgreSQL ledger (it must hold across machines)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
from datetime import UTC
from pathlib import Path
from typing import Protocol

from batcher.core.clock import utc_now
from batcher.core.errors import BatchLocked
from batcher.ledger.backend import Database, connect
from batcher.ledger.location import LedgerLocation

_HINT = "wait for that run to finish; a dead run's lock is released automatically"


class Lock(Protocol):
    def __enter__(self) -> object: ...

    def __exit__(self, *exc: object) -> None: ...


def batch_lock(state_dir: Path, batch: str, location: LedgerLocation | None = None) -> Lock:
    """The lock for `batch` on the ledger at `location` (default: SQLite in `state_dir`)."""
    if location is not None and location.backend == "postgresql":
        return PgBatchLock(location, batch)
    return BatchLock(state_dir, batch)


class BatchLock:
    """One run per batch. flock dies with its process, so a crashed run never blocks."""

    def __init__(self, state_dir: Path, batch: str) -> None:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in batch)
        self.path = state_dir / "locks" / f"{safe}.lock"
        self._fd: int | None = None
        self.batch = batch

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise BatchLocked(f"batch {self.batch!r} is locked by {holder}", hint=_HINT) from None
        os.ftruncate(fd, 0)
        holder = f"pid {os.getpid()} on {socket.gethostname()} since {utc_now()}"
        os.write(fd, holder.encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> BatchLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def advisory_keys(batch: str) -> tuple[int, int]:
    """The batch's two-part advisory lock key: 62 bits of SHA-256 of its name. The
    two-part key space never meets the one-part key of ledger writes."""
    digest = hashlib.sha256(b"batcher.batch\x1f" + batch.encode()).digest()
    return (
        int.from_bytes(digest[:4], "big") & 0x7FFFFFFF,
        int.from_bytes(digest[4:8], "big") & 0x7FFFFFFF,
    )


class PgBatchLock:
    """One run per batch across every machine sharing the database: a session-level
    advisory lock on a connection of its own. The server drops it when the session
    ends, so a crashed run, or one whose machine died, never blocks the next."""

    def __init__(self, location: LedgerLocation, batch: str) -> None:
        self.location = location
        self.batch = batch
        self._db: Database | None = None

    def acquire(self) -> None:
        db = connect(self.location)
        keys = advisory_keys(self.batch)
        holder = f"pid {os.getpid()} on {socket.gethostname()}"
        try:
            # application_name names the holder to whoever finds the lock taken
            db.execute("SELECT set_config('application_name', ?, false)", (holder[:63],))
            if not db.execute("SELECT pg_try_advisory_lock(?, ?)", keys).fetchone()[0]:
                found = db.execute(
                    "SELECT a.application_name, a.backend_start FROM pg_locks l"
                    " JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory'"
                    " AND l.granted AND l.classid = ? AND l.objid = ? AND l.objsubid = 2",
                    keys,
                ).fetchone()
                who = "another process"
                if found is not None and found[0]:
                    who = f"{found[0]} since {found[1].astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"
                raise BatchLocked(f"batch {self.batch!r} is locked by {who}", hint=_HINT)
        except BaseException:
            db.close()
            raise
        self._db = db

    def release(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            db.close()  # ending the session drops the lock

    def __enter__(self) -> PgBatchLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
