"""Stopping a run: SIGTERM stops sending within 2 s and leaves a quick report."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from batcher.sandbox.server import running_sandbox
from tests.e2e.runkit import (
    batcher,
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
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        # Sending stops within 2 s: whatever the sandbox holds 2 s after the signal is
        # all it ever gets. (Process exit is timed separately: writing the quick report
        # takes longer on a loaded machine.)
        time.sleep(max(0.0, signalled + 2.0 - time.monotonic()))
        ordered = len(sandbox_orders(sandbox))
        _, stderr = proc.communicate(timeout=30)
        exited_in = time.monotonic() - signalled
        assert proc.returncode == 3, stderr
        assert exited_in < 10.0, f"took {exited_in:.1f}s to exit (no full reconciliation)"
        assert ordered < 60
        time.sleep(0.5)
        assert len(sandbox_orders(sandbox)) == ordered, "nothing is sent 2 s after the signal"
        assert "received SIGTERM" in stderr and "reconciliation skipped" in stderr
        assert "stopped on request" in stderr
        summary = json.loads((reports / "slow" / "summary.json").read_text())
        assert summary["stopped"] == "interrupted" and summary["exit_code"] == 3


def test_a_second_signal_exits_at_once_even_with_a_request_in_flight(tmp_path: Path) -> None:
    with running_sandbox("ugiftme", async_mode=True, **FAST) as sandbox:
        sheet = write_sheet(tmp_path / "stuck.csv", make_rows(40))
        env = cli_env(sandbox, tmp_path / "state")
        args = ["run", str(sheet), "--yes", "--report-dir", str(tmp_path / "reports")]
        proc = start_batcher([*args, "--chunk-size", "1", "--max-rate", "4"], env)
        assert wait_for(lambda: len(sandbox_orders(sandbox)) >= 2, timeout=60)
        # every order request now hangs for 6 s: the next one is in flight when we stop
        sandbox.control("PATCH", "/faults", json={"latency": 1, "latencyMs": 6000})
        time.sleep(0.6)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        assert proc.poll() is None, "the first signal waits for the request in flight"
        second = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
        # far less than the 6 s the request in flight would take (slack for a loaded machine)
        assert time.monotonic() - second < 3.0
        assert proc.returncode == 3, stderr
        assert "received SIGINT again: exiting now" in stderr

        sandbox.control("PATCH", "/faults", json={"latency": 0})
        rerun = batcher(args, env)
        assert rerun.returncode == 0, rerun.stderr
        assert len(sandbox_orders(sandbox)) == 40, "the rerun resolves the interrupted chunk"
