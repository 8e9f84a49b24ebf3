"""Files a SQLite ledger keeps beside itself: batch locks and session sidecars.

A ledger shared by several users (a group-writable file in a group-writable folder)
is only as usable as its side files: whoever may write the ledger must be able to
take its locks and to read the sidecars a crashed session left, or the check of a
lost WAL would silently skip them. So a side file gets the ledger file's permissions
and a side folder its parent folder's, whatever the umask.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

#: a side file's mode when the ledger file does not exist yet
_NEW_LEDGER_MODE = 0o644


def side_file_mode(ledger_file: Path) -> int:
    """The ledger file's read and write bits (the owner always reads and writes)."""
    try:
        return stat.S_IMODE(ledger_file.stat().st_mode) & 0o666 | 0o600
    except OSError:
        return _NEW_LEDGER_MODE


def make_side_folder(folder: Path) -> None:
    """Create `folder` (and its parents) with its parent folder's mode."""
    if folder.is_dir():
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir()
    except FileExistsError:
        return
    # The umask would narrow a shared (group-writable) folder: keep its parent's mode.
    os.chmod(folder, stat.S_IMODE(folder.parent.stat().st_mode))


def create_side_file(path: Path, mode: int) -> int:
    """Create `path` (it must not exist) with exactly `mode`; returns its descriptor."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # as meant, whatever the umask
    except OSError:
        os.close(fd)
        raise
    return fd
