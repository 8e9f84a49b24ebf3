"""Writing a file so that a reader sees the old one or the new one, never half of one."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_write(path: Path, *, private: bool = False) -> Iterator[Path]:
    """A temporary path beside `path` to write; on a clean exit it replaces `path`.

    The caller writes the temporary file however it likes. It is synced before
    the rename, so a crash leaves the old file or the new one. On an exception
    the temporary file is removed and `path` is untouched. `private` creates it
    owner-only (0600) before anything is written, for files holding secrets.
    """
    # Same folder, so the rename never crosses filesystems; hidden and unique,
    # so a concurrent writer or a directory listing never picks it up.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        if private:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
