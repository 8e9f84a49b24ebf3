"""Detecting a lost write-ahead log: a ledger that silently went back in time.

In WAL mode SQLite keeps committed transactions in `ledger.sqlite-wal` until a
checkpoint copies them into `ledger.sqlite`. If a run dies and that file is then
lost (deleted, cut short, or the ledger copied without it), SQLite opens the older
database without a word, and the ledger forgets what it sent.

Every open session of the ledger keeps a small sidecar file in
`ledger.sqlite-sessions/` holding the ledger's id and the highest event id it has
seen committed. Events are append-only and every transition writes one, so that id
only grows. The sidecar is rewritten in place after each commit (one `pwrite`, no
fsync: it only has to outlive the process), and is removed after a clean close whose
checkpoint copied the whole WAL into the database. A session holds an `flock` on
its sidecar, so a sidecar nobody holds belongs to a session that ended uncleanly.

A ledger file that is gone is a lost ledger, whatever it left behind: a `-wal` file
beside a missing database is moved aside unread (it belongs to the lost database and
must never be applied to a new one), and the stale sidecars are the lost ledger's, so
they vouch for nothing; the new ledger's batches are recovered from the provider.

On open, every such stale sidecar must be covered by the database: the database
(with whatever WAL SQLite finds) must hold an event at least as high as the
sidecar says. The sidecar is written only after the commit is durable and every
checkpoint, by anyone, keeps what was committed, so a normal crash can never trip
it; only committed transactions that vanished can. The argument is written out in
docs/architecture.md ("A lost WAL").
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import uuid
from pathlib import Path

from batcher.core.errors import ConfigError
from batcher.ledger.backend import Database
from batcher.ledger.sidefiles import create_side_file, make_side_folder, side_file_mode

#: meta key of the ledger's identity: sidecars of another ledger file are not its own
LEDGER_ID_KEY = "ledger_id"
_SUFFIX = "-sessions"


class LedgerRolledBack(sqlite3.DatabaseError):
    """The database holds less than a session that ended uncleanly had committed."""


class LedgerUnidentified(LedgerRolledBack):
    """A ledger without an identity beside the sidecar of a session that ended uncleanly:
    a backup restored from before ledgers had one, or a first session's lost WAL."""


def sessions_folder(ledger: Path) -> Path:
    return ledger.with_name(ledger.name + _SUFFIX)


def new_ledger_id(db: Database) -> None:
    """Give a copy its own identity (a restored backup is not the ledger it came from)."""
    db.execute("UPDATE meta SET value = ? WHERE key = ?", (uuid.uuid4().hex, LEDGER_ID_KEY))


class WalGuard:
    """One session's sidecar, and the check of the sessions that ended uncleanly."""

    def __init__(self, ledger: Path) -> None:
        self.ledger = ledger
        self.folder = sessions_folder(ledger)
        # Absent or 0 bytes before SQLite opens it: a new ledger, not a rolled-back one
        # (every batch in it is new, so its rows are recovered from the provider).
        self._new_file = not ledger.exists() or ledger.stat().st_size == 0
        #: a `-wal`/`-shm` left beside a ledger file that is gone, moved aside unread
        self.orphans = [] if ledger.exists() else _set_aside_orphans(ledger)
        self._stale: list[Path] = []
        self._fd: int | None = None
        self._path: Path | None = None
        self._ledger_id = ""
        self._written = -1

    def check(self, db: Database) -> None:
        """Raise LedgerRolledBack when a session that ended uncleanly committed more than
        the database now holds. Runs before this session writes anything."""
        self._stale = _stale_sessions(self.folder)
        if self._new_file or not self._stale:
            return
        ledger_id = _meta(db, LEDGER_ID_KEY)
        last = _last_event(db)
        for path in self._stale:
            record = _read(path)
            if record is None:
                continue  # never fully written: it vouches for nothing
            owner, seen = record
            if ledger_id is not None and owner != ledger_id:
                continue  # another ledger's session (the file was replaced)
            if ledger_id is None and _has_meta(db):
                # A ledger with tables but no identity: an old backup restored, or a first
                # session's lost WAL. Which, the file cannot tell: a person must say.
                raise LedgerUnidentified(
                    f"the ledger at {self.ledger} is damaged or an old backup: it has no"
                    f" identity, and {self.folder} holds the session file of a ledger that"
                    f" stopped uncleanly after recording event {seen} (this file ends at"
                    f" event {last}). If this file is a backup you restored that was made"
                    f" before ledgers had an identity, remove {self.folder} and rerun: the"
                    " backup is then adopted as the ledger. Otherwise it lost committed"
                    " changes (its -wal file was lost): restore it from backup, or move it"
                    " aside (with its -wal, -shm and -sessions) and rerun with --ledger-lost."
                    " Nothing was sent"
                )
            if ledger_id is None or last < seen:
                raise LedgerRolledBack(
                    f"it lost committed changes: a run that stopped uncleanly had recorded "
                    f"event {seen}, the ledger now ends at event {last}; its -wal file was "
                    "removed or cut short"
                )

    def register(self, db: Database) -> None:
        """Start this session's sidecar; the stale ones it now covers are removed."""
        db.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO NOTHING",
            (LEDGER_ID_KEY, uuid.uuid4().hex),
        )
        self._ledger_id = _meta(db, LEDGER_ID_KEY) or ""
        token = uuid.uuid4().hex
        try:
            make_side_folder(self.folder)
            temp = self.folder / f".{token}.tmp"
            # Readable by whoever may write the ledger: another user of a shared ledger
            # must be able to check this sidecar if this session ends uncleanly.
            fd = create_side_file(temp, side_file_mode(self.ledger))
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._fd = fd
            self._written = _last_event(db)
            os.pwrite(fd, self._record(self._written), 0)
            os.fsync(fd)
            # Only a whole, locked sidecar takes a name another session would check.
            self._path = self.folder / token
            os.replace(temp, self._path)
            for path in self._stale:
                path.unlink(missing_ok=True)
            _fsync_dir(self.folder)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise sqlite3.OperationalError("database or disk is full") from None
            raise ConfigError(
                f"cannot write the ledger's session file in {self.folder}: {exc.strerror}"
            ) from None

    def committed(self, db: Database) -> None:
        """After a commit: raise the sidecar to the newest committed event."""
        if self._fd is None:
            return
        last = _last_event(db)
        if last > self._written:
            try:
                os.pwrite(self._fd, self._record(last), 0)
            except OSError:
                return  # a weaker check next time, never a false alarm
            self._written = last

    def close(self, db: Database) -> None:
        """Remove the sidecar once a checkpoint has copied the whole WAL into the
        database; otherwise leave it for the next session to check and absorb."""
        if self._fd is None:
            return
        try:
            busy, log, done = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            complete = busy == 0 and log == done
        except sqlite3.Error:
            complete = False
        if complete and self._path is not None:
            self._path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    def _record(self, event_id: int) -> bytes:
        # Fixed width, so an in-place rewrite never leaves a longer old tail behind.
        return f"{self._ledger_id:<32} {event_id:020d}\n".encode("ascii")


def _set_aside_orphans(ledger: Path) -> list[Path]:
    """The ledger file is gone (deleted, or its folder only partly restored): a `-wal`
    left behind holds pages of that lost database and must never be read into the new
    one, so it (and its `-shm` index) is renamed aside before SQLite opens the path.
    Kept, not deleted: it is evidence of what the lost ledger last did."""
    moved = []
    stamp = uuid.uuid4().hex[:8]
    for suffix in ("-wal", "-shm"):
        path = ledger.with_name(ledger.name + suffix)
        if path.exists():
            target = path.with_name(f"{path.name}.orphan-{stamp}")
            try:
                os.replace(path, target)
            except OSError as exc:
                raise ConfigError(
                    f"the ledger {ledger} is gone but its {path.name} file is still there and"
                    f" cannot be moved aside ({exc.strerror}); move it away and rerun"
                ) from None
            moved.append(target)
    return moved


def _stale_sessions(folder: Path) -> list[Path]:
    """Sidecars no live session holds. A temporary one may be a session being born, so
    it is left alone (one that never took its name vouches for nothing)."""
    if not folder.is_dir():
        return []
    stale = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            continue  # a live session holds it
        finally:
            os.close(fd)
        stale.append(path)
    return stale


def _read(path: Path) -> tuple[str, int] | None:
    try:
        owner, seen = path.read_text(encoding="ascii").split()
        return owner, int(seen)
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _meta(db: Database, key: str) -> str | None:
    try:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    except sqlite3.OperationalError:
        return None  # no meta table: the database went back to before it was made
    return str(row[0]) if row else None


def _has_meta(db: Database) -> bool:
    found = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'")
    return found.fetchone() is not None


def _last_event(db: Database) -> int:
    try:
        row = db.execute("SELECT MAX(id) FROM events").fetchone()
    except sqlite3.OperationalError:
        return 0
    return int(row[0] or 0)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
