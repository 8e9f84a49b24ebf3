"""atomic_write: the target is the old file or the new one, never half of one."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from batcher.core.files import atomic_write


def test_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "rows.csv"
    target.write_text("old")
    with atomic_write(target) as tmp:
        tmp.write_text("new")
        assert target.read_text() == "old"  # nothing visible until the block ends
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["rows.csv"]


def test_an_error_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_private_files_are_owner_only_from_the_start(tmp_path: Path) -> None:
    target = tmp_path / "codes.xlsx"
    with atomic_write(target, private=True) as tmp:
        assert stat.S_IMODE(tmp.stat().st_mode) == 0o600
        with tmp.open("wb") as fh:
            fh.write(b"secret")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_bytes() == b"secret"
