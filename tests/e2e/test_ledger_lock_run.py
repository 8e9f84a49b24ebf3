"""The batch lock under the real CLI: on a shared SQLite file whatever the state
folder, and on PostgreSQL when the lock's session is killed in the middle of a run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import psycopg

from batcher.core.errors import ExitCode
from batcher.ledger.location import parse_ledger_url
from batcher.ledger.lock import advisory_keys, batch_lock
from batcher.ledger.store import Ledger
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

FAST = {"rate_limit": 100_000, "rate_window_seconds": 60, "async_delay_seconds": 0.05}


def test_a_run_on_a_shared_sqlite_ledger_meets_the_lock_of_another_state_folder(
    tmp_path: Path, ugiftme_sandbox: object
) -> None:
    shared = tmp_path / "shared" / "team.sqlite"
    location = parse_ledger_url(f"sqlite://{shared}")
    Ledger(location, migrate=True).close()
    sheet = write_sheet(tmp_path / "nightly.csv", make_rows(3))
    env = cli_env(ugiftme_sandbox, tmp_path / "bob", BATCHER_LEDGER=f"sqlite://{shared}")
    run = ["run", str(sheet), "--yes", "--report-dir", str(tmp_path / "reports")]
    # alice's run holds the batch (her own state folder, the same ledger file)
    with batch_lock(tmp_path / "alice", "nightly", location):
        for args in ([*run, "--dry-run"], run):
            done = batcher(args, env)
            assert done.returncode == ExitCode.CANNOT_START, done.stderr
            assert f"batch 'nightly' is locked by pid {os.getpid()} on " in done.stderr
    assert not orders_by_email(ugiftme_sandbox)
    done = batcher(run, env)  # released: bob's run goes ahead
    assert done.returncode == ExitCode.OK, done.stderr
    assert sorted(orders_by_email(ugiftme_sandbox).values()) == [1] * 3
    assert not (tmp_path / "bob" / "locks").exists()


def _lock_backend(url: str, batch: str) -> int | None:
    with psycopg.connect(url, autocommit=True) as admin:
        row = admin.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND classid = %s AND objid = %s AND objsubid = 2",
            advisory_keys(batch),
        ).fetchone()
    return None if row is None else int(row[0])


def test_a_run_whose_pg_lock_session_is_killed_stops_and_a_rerun_finishes_once(
    tmp_path: Path, pg_url: str
) -> None:
    rows = 40
    with running_sandbox("ugiftme", async_mode=True, **FAST) as sandbox:
        sheet = write_sheet(tmp_path / "nightly.csv", make_rows(rows))
        reports = tmp_path / "reports"
        env = cli_env(sandbox, tmp_path / "state", BATCHER_LEDGER=pg_url)
        run = ["run", str(sheet), "--yes", "--report-dir", str(reports)]
        proc = start_batcher([*run, "--chunk-size", "1", "--max-rate", "4"], env)
        assert wait_for(lambda: len(sandbox_orders(sandbox)) >= 3, timeout=60)
        backend = _lock_backend(pg_url, "nightly")
        assert backend is not None, "the run holds no batch lock"
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (backend,))
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == ExitCode.INCOMPLETE, stderr
        assert "Traceback" not in stderr
        assert "the batch lock on the PostgreSQL ledger at" in stderr
        assert "was lost: its database session ended" in stderr
        assert "rerun the same command to continue" in stderr
        sent = len(sandbox_orders(sandbox))
        assert sent < rows, "the run went on sending without its lock"
        summary = json.loads((reports / "nightly" / "summary.json").read_text())
        assert summary["exit_code"] == ExitCode.INCOMPLETE
        assert "batch lock" in summary["stopped"]

        again = batcher(run, env)
        assert again.returncode == ExitCode.OK, again.stderr
        assert sorted(orders_by_email(sandbox).values()) == [1] * rows
        assert _lock_backend(pg_url, "nightly") is None  # released with the run
