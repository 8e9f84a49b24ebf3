"""A lost -wal file after a crash, against the UGiftMe sandbox over real HTTP.

Failure 7's last case: SQLite keeps committed transactions in `ledger.sqlite-wal`
until a checkpoint; a run killed mid-send whose -wal file is then lost left a
ledger that had silently forgotten its sends, and the next run ordered them again.
"""

from __future__ import annotations

from pathlib import Path

from batcher.core.errors import ExitCode
from batcher.sandbox.server import running_sandbox
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


def test_a_lost_wal_after_a_kill_is_named_and_nothing_is_sent(tmp_path: Path) -> None:
    with running_sandbox("ugiftme", rate_limit=100_000, async_delay_seconds=0.05) as sandbox:
        rows = make_rows(40, seed=21)
        sheet = write_sheet(tmp_path / "wal.csv", rows)
        state, reports = tmp_path / "state", tmp_path / "r"
        env = cli_env(sandbox, state)
        args = ["run", str(sheet), "--yes", "--report-dir", str(reports), "--chunk-size", "2"]
        proc = start_batcher([*args, "--max-rate", "4"], env)
        assert wait_for(lambda: len(sandbox_orders(sandbox)) >= 6, timeout=60)
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
