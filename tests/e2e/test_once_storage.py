"""What happens to the ledger's storage under a real `batcher run`, against the UGiftMe
sandbox: a lost -wal file after a kill, and a disk that fills up mid-run.

Failure 7's last case: SQLite keeps committed transactions in `ledger.sqlite-wal`
until a checkpoint; a run killed mid-send whose -wal file was then lost left a ledger
that had silently forgotten its sends, and the next run ordered them again.

For the full disk, the state folder is a small tmpfs of its own (mounting needs root
or CAP_SYS_ADMIN; the test is skipped where the container cannot mount). The run
starts with enough space, then the test fills the disk while it sends: the next
ledger commit fails.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from batcher.core.errors import ExitCode
from batcher.sandbox.server import SandboxHandle, running_sandbox
from tests.e2e.runkit import (
    batcher,
    cli_env,
    make_rows,
    orders_by_email,
    sandbox_orders,
    start_batcher,
    wait_for,
    write_sheet,
)

#: above the 64 MiB a run insists on before it starts
DISK_MIB = 72


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MIB}m", "tmpfs", str(mount)],
        capture_output=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace')}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Write until the disk refuses one more byte."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as fh:
        for size in (1 << 20, 1 << 12, 1):
            block = b"\0" * size
            while True:
                try:
                    fh.write(block)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    return filler


def sent_in_ledger(state: Path) -> int:
    db = sqlite3.connect(state / "ledger.sqlite")
    try:
        return int(
            db.execute(
                "SELECT COUNT(*) FROM rows"
                " WHERE state IN ('sending', 'unknown', 'accepted', 'succeeded')"
            ).fetchone()[0]
        )
    finally:
        db.close()


def sending(
    sandbox: SandboxHandle, tmp_path: Path, state: Path, *, seed: int, until: int
) -> tuple[list[dict[str, str]], list[str], dict[str, str], subprocess.Popen[str]]:
    """A 40-row run at 4 requests/s, once the sandbox holds `until` orders: the rows,
    the run's arguments and environment, and the running process."""
    rows = make_rows(40, seed=seed)
    sheet = write_sheet(tmp_path / f"s{seed}.csv", rows)
    env = cli_env(sandbox, state)
    args = ["run", str(sheet), "--yes", "--report-dir", str(tmp_path / "r"), "--chunk-size", "2"]
    proc = start_batcher([*args, "--max-rate", "4"], env)
    assert wait_for(lambda: len(sandbox_orders(sandbox)) >= until, timeout=60)
    return rows, args, env, proc


def test_a_disk_that_fills_mid_run_is_named_and_nothing_more_is_sent(
    tmp_path: Path, small_disk: Path
) -> None:
    with running_sandbox("ugiftme", rate_limit=100_000, async_delay_seconds=0.05) as sandbox:
        state = small_disk / "state"
        rows, args, env, proc = sending(sandbox, tmp_path, state, seed=31, until=4)
        filler = fill(small_disk)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == ExitCode.CANNOT_START, stderr
        assert "is full" in stderr and "internal error" not in stderr, stderr
        assert "Traceback" not in stderr
        sent = len(sandbox_orders(sandbox))
        assert sent < 40, "the run stopped at the failed commit"
        filler.unlink()  # space is freed
        # every order the provider holds was committed as sent before it left
        assert sent_in_ledger(state) >= sent

        rerun = batcher(args, env)
        assert rerun.returncode == 0, rerun.stderr
        by_email = orders_by_email(sandbox)
        assert max(by_email.values()) == 1, "ordered twice"
        assert set(by_email) == {r["Email"] for r in rows}
        assert os.path.exists(state / "ledger.sqlite")


def test_a_lost_wal_after_a_kill_is_named_and_nothing_is_sent(tmp_path: Path) -> None:
    with running_sandbox("ugiftme", rate_limit=100_000, async_delay_seconds=0.05) as sandbox:
        state = tmp_path / "state"
        _rows, args, env, proc = sending(sandbox, tmp_path, state, seed=21, until=6)
        proc.kill()  # SIGKILL mid-send: nothing closes, the sends live in the WAL
        proc.communicate()
        sent = len(sandbox_orders(sandbox))
        assert 6 <= sent < 40

        wal = state / "ledger.sqlite-wal"
        assert wal.stat().st_size > 0
        wal.unlink()  # e.g. the state folder copied to a new disk without it
        rerun = batcher(args, env)
        assert rerun.returncode == ExitCode.CANNOT_START, rerun.stderr
        ledger = state / "ledger.sqlite"
        assert f"the ledger at {ledger} is damaged" in rerun.stderr
        assert "restore it from backup" in rerun.stderr and "intact" not in rerun.stderr
        assert "Traceback" not in rerun.stderr
        assert len(sandbox_orders(sandbox)) == sent, "nothing is sent from a rolled-back ledger"
        assert max(orders_by_email(sandbox).values()) == 1
