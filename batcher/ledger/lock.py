"""The per-batch lock: one run per batch. A flock beside a SQLite ledger file; a
PostgreSQL advisory lock on a PostgreSQL ledger (it must hold across machines).

The SQLite lock lives beside the ledger file, never in a state folder, so every
process that opens one ledger file, whoever runs it and whatever its state folder,
meets the same lock. A PostgreSQL lock lives in a server session, which can end
under a running batch (a server restart, a network cut, `pg_terminate_backend`):
`watch` notices and asks the run to stop before it sends anything more.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import select
import socket
import threading
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from batcher.core.clock import utc_now
from batcher.core.errors import BatchLocked, ConfigError
from batcher.ledger.location import LedgerLocation
from batcher.ledger.sidefiles import create_side_file, make_side_folder, side_file_mode

if TYPE_CHECKING:
    from batcher.ledger.postgres import PostgresDatabase

_HINT = "wait for that run to finish; a dead run's lock is released automatically"
LOCKS_FOLDER = "locks"
#: How often a PostgreSQL lock's session is checked when the server says nothing. A
#: session the server ends (restart, pg_terminate_backend) is noticed at once: the
#: server's last word wakes the watcher. The timer covers a silent network cut.
LOCK_CHECK_SECONDS = 2.0


class Lock(Protocol):
    def __enter__(self) -> Lock: ...

    def __exit__(self, *exc: object) -> None: ...

    def watch(self, stop: threading.Event) -> None:
        """Set `stop` if the lock is lost while held."""

    @property
    def lost(self) -> str | None:
        """Why the lock was lost while held, or None."""


def batch_lock(state_dir: Path, batch: str, location: LedgerLocation | None = None) -> Lock:
    """The lock for `batch` on the ledger at `location` (default: SQLite in `state_dir`).
    On SQLite it lives beside the ledger file: `<ledger folder>/locks/<batch>.lock`."""
    location = location or LedgerLocation.in_state_dir(state_dir)
    if location.backend == "postgresql":
        return PgBatchLock(location, batch)
    assert location.path is not None
    return BatchLock.beside(location.path, batch)


def _lock_file_name(batch: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in batch) + ".lock"


class BatchLock:
    """One run per batch. flock dies with its process, so a crashed run never blocks.

    `folder` is the ledger file's folder; the lock is `folder/locks/<batch>.lock`.
    Two ledger files in one folder share lock names: a batch name used in both is
    then run one at a time, which errs on the safe side.
    """

    def __init__(self, folder: Path, batch: str, *, file_mode: int = 0o644) -> None:
        self.path = folder / LOCKS_FOLDER / _lock_file_name(batch)
        self._fd: int | None = None
        self._file_mode = file_mode
        self.batch = batch

    @classmethod
    def beside(cls, ledger_file: Path, batch: str) -> BatchLock:
        """The lock of `batch` on the SQLite ledger `ledger_file`. Whoever may write the
        ledger may take its locks: a new lock file gets the ledger file's permissions."""
        return cls(ledger_file.parent, batch, file_mode=side_file_mode(ledger_file))

    def _open(self) -> int:
        try:
            make_side_folder(self.path.parent)
            try:
                fd = create_side_file(self.path, self._file_mode)
            except FileExistsError:
                fd = os.open(self.path, os.O_RDWR)
        except OSError as exc:
            raise ConfigError(
                f"cannot open the batch lock {self.path}: {exc.strerror}",
                hint="every user of a shared ledger needs write access to its folder,"
                f" to {LOCKS_FOLDER}/ and to the files in them",
            ) from None
        return fd

    def acquire(self) -> None:
        fd = self._open()
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

    def watch(self, stop: threading.Event) -> None:
        """An flock is held while its file is open: it is never lost under a run."""

    @property
    def lost(self) -> str | None:
        return None

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


_HELD = (
    "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND pid = pg_backend_pid() AND classid = ? AND objid = ? AND objsubid = 2"
)


def _one(row: Any) -> Any:
    """The first value of a row a query always returns."""
    return row[0]


class PgBatchLock:
    """One run per batch across every machine sharing the database: a session-level
    advisory lock on a connection of its own. The server drops it when the session
    ends, so a crashed run, or one whose machine died, never blocks the next.

    The same is true under a live run: if the session ends (a server restart, a
    network cut, `pg_terminate_backend`) the lock is gone and another run may take
    it. `watch` starts a thread that checks the session whenever the server speaks
    on it, and every `check_every` seconds otherwise; once the lock is gone it
    records why (`lost`) and sets the run's stop event, which the runner checks
    before every chunk it sends.
    """

    def __init__(
        self, location: LedgerLocation, batch: str, *, check_every: float = LOCK_CHECK_SECONDS
    ) -> None:
        self.location = location
        self.batch = batch
        self.check_every = check_every
        self._db: PostgresDatabase | None = None
        self._lost: str | None = None
        self._watcher: threading.Thread | None = None
        self._wake: tuple[int, int] | None = None

    def acquire(self) -> None:
        from batcher.ledger.postgres import PostgresDatabase  # psycopg loads only when used

        # keepalives: a silent network cut ends the session on this side too
        db = PostgresDatabase(self.location, keepalives=True)
        keys = advisory_keys(self.batch)
        holder = f"pid {os.getpid()} on {socket.gethostname()}"
        try:
            # application_name names the holder to whoever finds the lock taken
            db.execute("SELECT set_config('application_name', ?, false)", (holder[:63],))
            if not _one(db.execute("SELECT pg_try_advisory_lock(?, ?)", keys).fetchone()):
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
        self._lost = None

    @property
    def lost(self) -> str | None:
        return self._lost

    def check(self) -> str | None:
        """Ask the server whether this session still holds the lock: None if it does,
        else why not (also kept in `lost`). Only one thread may check at a time."""
        if self._db is None or self._lost is not None:
            return self._lost
        try:
            held = _one(self._db.execute(_HELD, advisory_keys(self.batch)).fetchone())
        except Exception:  # a broken session is the answer here, not an error
            self._lost = (
                f"the batch lock on the PostgreSQL ledger at {self.location.shown} was lost:"
                " its database session ended (a server restart, a network cut, or the"
                " session was terminated)"
            )
        else:
            if not held:
                self._lost = (
                    f"the batch lock on the PostgreSQL ledger at {self.location.shown} was"
                    " lost: its session no longer holds it"
                )
        return self._lost

    def watch(self, stop: threading.Event) -> None:
        """Check the session in a thread of its own until release; if the lock is lost,
        set `stop`."""
        if self._db is None or self._watcher is not None:
            return
        self._wake = os.pipe()
        self._watcher = threading.Thread(
            target=self._watch, args=(self._db.fileno(), self._wake[0], stop),
            name=f"batch-lock-watch:{self.batch}", daemon=True,
        )  # fmt: skip
        self._watcher.start()

    def _watch(self, fd: int, wake: int, stop: threading.Event) -> None:
        # poll, not select: a busy process may hold file descriptors above select's 1024
        either, woken = select.poll(), select.poll()
        for poller, fds in ((either, (fd, wake)), (woken, (wake,))):
            for one in fds:
                poller.register(one, select.POLLIN)
        while True:
            # The server writes to an idle session only to end it (or to notify, which
            # batcher never asks for): readable means "check now".
            ready = {one for one, _ in either.poll(self.check_every * 1000)}
            if wake in ready:
                return
            if self.check() is not None:
                stop.set()
                return
            if ready:  # it spoke and lives on: never more than a few checks a second
                woken.poll(min(0.25, self.check_every) * 1000)

    def _stop_watching(self) -> None:
        if self._watcher is None or self._wake is None:
            return
        os.write(self._wake[1], b"x")
        self._watcher.join(30)  # a check in flight ends by keepalive at the latest
        for end in self._wake:
            os.close(end)
        self._watcher, self._wake = None, None

    def release(self) -> None:
        self._stop_watching()
        if self._db is not None:
            db, self._db = self._db, None
            db.close()  # ending the session drops the lock

    def __enter__(self) -> PgBatchLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
