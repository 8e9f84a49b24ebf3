"""The sha256 of the sheet's bytes, computed beside the parse on a low-priority thread."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from batcher.core.errors import InputFileError

# Hashing a large CSV costs about half as much as parsing it. It runs on a
# background thread at the lowest CPU priority, so it soaks up the cores that
# parsing and validation leave idle instead of taking them from polars.
_LOWEST_PRIORITY = 19


def _lower_thread_priority() -> None:
    # Linux sets `nice` per thread, by thread id. Elsewhere that id could name
    # another process, so the hash simply competes there.
    if sys.platform.startswith("linux"):
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _LOWEST_PRIORITY)


_HASHING = ThreadPoolExecutor(
    max_workers=2, thread_name_prefix="batcher-sha256", initializer=_lower_thread_priority
)


class FileDigest:
    """The sha256 of a file's bytes: known already, or being computed on a background thread."""

    def __init__(self, value: str | None = None, pending: Future[str] | None = None) -> None:
        self._value = value
        self._pending = pending

    @classmethod
    def of_bytes(cls, data: bytes) -> FileDigest:
        return cls(value=hashlib.sha256(data).hexdigest())

    @classmethod
    def of_file(cls, path: Path) -> FileDigest:
        """Start hashing `path`; a file that changes meanwhile makes `hexdigest` raise."""
        identity = file_identity(path)

        def compute() -> str:
            value = _file_sha256(path)
            if file_identity(path) != identity:
                raise changed_while_reading(path)
            return value

        return cls(pending=_HASHING.submit(compute))

    def hexdigest(self) -> str:
        if self._value is None:
            assert self._pending is not None
            self._value = self._pending.result()
        return self._value


def changed_while_reading(path: Path) -> InputFileError:
    return InputFileError(
        f"{path.name} changed while batcher was reading it",
        hint="wait until the export has finished, then run again",
    )


def file_identity(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
