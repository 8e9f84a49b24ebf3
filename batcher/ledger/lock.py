"""The per-batch lock: one run per batch, held with flock."""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from batcher.core.clock import utc_now
from batcher.core.errors import BatchLocked


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
            raise BatchLocked(
                f"batch {self.batch!r} is locked by {holder}",
                hint="wait for that run to finish; a dead run's lock is released automatically",
            ) from None
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
