"""Stopping a run: SIGTERM stops sending within 2 s and leaves a quick report."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from batcher.sandbox.server import running_sandbox
from tests.e2e.runkit import (
    cli_env,
    make_rows,
    sandbox_orders,
    start_batcher,
    wait_for,
    write_sheet,
)

FAST = {"rate_limit": 100_000, "rate_window_seconds": 60, "async_delay_seconds": 0.05}


def test_sigterm_stops_sending_within_two_seconds(tmp_path: Path) -> None:
    with running_sandbox("ugiftme", async_mode=True, **FAST) as sandbox:
        sheet = write_sheet(tmp_path / "slow.csv", make_rows(60))
        reports = tmp_path / "reports"
        env = cli_env(sandbox, tmp_path / "state")
        args = ["run", str(sheet), "--yes", "--report-dir", str(reports)]
        proc = start_batcher([*args, "--chunk-size", "1", "--max-rate", "4"], env)
        assert wait_for(lambda: len(sandbox_orders(sandbox)) >= 3, timeout=60)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
        stopped_in = time.monotonic() - sent
        assert proc.returncode == 3, stderr
        assert stopped_in < 2.0, f"took {stopped_in:.1f}s to stop"
        ordered = len(sandbox_orders(sandbox))
        assert ordered < 60
        time.sleep(0.5)
        assert len(sandbox_orders(sandbox)) == ordered, "nothing is sent after the process exits"
        assert "received SIGTERM" in stderr and "reconciliation skipped" in stderr
        assert "stopped on request" in stderr
        summary = json.loads((reports / "slow" / "summary.json").read_text())
        assert summary["stopped"] == "interrupted" and summary["exit_code"] == 3
