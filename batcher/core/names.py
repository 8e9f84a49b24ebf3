"""Batch names: they become folder and file names, so they are held to a safe alphabet."""

from __future__ import annotations

import re

from batcher.core.errors import UsageError

MAX_BATCH_NAME = 64
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9._-]+")


def check_batch_name(name: str) -> str:
    """`name` if it is safe as a single path component; a UsageError saying why otherwise.

    Letters, digits, `.`, `_` and `-`, starting with a letter or digit, at most 64
    characters: no `/`, no `..`, nothing a shell or a file system reads specially.
    """
    shown = name[:40] + ("…" if len(name) > 40 else "")
    if len(name) > MAX_BATCH_NAME:
        raise UsageError(
            f"batch name {shown!r} is {len(name)} characters long; the limit is {MAX_BATCH_NAME}",
            hint="choose a shorter --batch",
        )
    if not _SAFE.fullmatch(name) or ".." in name:
        raise UsageError(
            f"batch name {shown!r} may hold only letters, digits, '.', '_' and '-', "
            "and must start with a letter or digit",
            hint="e.g. --batch nightly-2026-12-03",
        )
    return name


def batch_name_from_stem(stem: str) -> str:
    """The default batch name for a sheet: its file stem, with unsafe runs turned into '-'."""
    name = _UNSAFE_RUN.sub("-", stem).strip("-._")[:MAX_BATCH_NAME].rstrip("-._")
    while ".." in name:
        name = name.replace("..", ".")
    return name or "batch"
