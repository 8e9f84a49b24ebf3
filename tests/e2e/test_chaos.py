"""Chaos: every fault at ~5%, SIGKILL at random moments, rerun until done.

The seed is printed (and can be forced with BATCHER_CHAOS_SEED) so a failure replays.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from batcher.sandbox.server import running_sandbox
from tests.bench.chaos import MODES, run_round
from tests.e2e.runkit import batcher, cli_env, make_rows, sandbox_orders, start_batcher, write_sheet

KILL_CYCLES = 30
VALID_ROWS = 600


def test_chaos_sigkill_cycles_end_exactly_once(tmp_path: Path) -> None:
    seed = int(os.environ.get("BATCHER_CHAOS_SEED", random.randrange(1, 2**31)))
    print(f"\nchaos seed: {seed}  (replay with BATCHER_CHAOS_SEED={seed})")
    rnd = random.Random(seed)
    faults = {
        "fault_500": 0.05,
        "fault_429": 0.05,
        "fault_latency": 0.05,
        "latency_ms": 150,
        "fault_drop": 0.05,
        "fault_reject_item": 0.05,
        "fault_async_fail": 0.05,
        "burst_seconds": 0.3,
    }
    with running_sandbox(
        "ugiftme",
        seed=seed,
        # 20 req/s: slow enough that most kills land while chunks are in flight
        rate_limit=20,
        rate_window_seconds=1,
        async_delay_seconds=0.05,
        funding={"GBP": "50000.00", "EUR": "50000.00"},
        **faults,
    ) as sandbox:
        rows = make_rows(VALID_ROWS, currencies=("GBP", "EUR"))
        invalid = [dict(rows[i], Reference=f"BAD-{i}", Product="NO_SUCH_PRODUCT") for i in range(5)]
        for i, row in enumerate(invalid):
            row["Email"] = f"invalid{i}@example.com"
        sheet = write_sheet(tmp_path / "chaos.csv", rows + invalid)
        state = tmp_path / "state"
        env = cli_env(sandbox, state)
        args = ["run", str(sheet), "--yes", "--skip-invalid", "--chunk-size", "5",
                "--report-dir", str(tmp_path / "reports")]  # fmt: skip

        kills = 0
        for _ in range(KILL_CYCLES):
            proc = start_batcher(args, env)
            time.sleep(rnd.uniform(0.4, 2.5))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.communicate()
        assert kills >= KILL_CYCLES // 2, f"only {kills} runs were killed mid-way"

        codes = []
        for _ in range(25):
            result = batcher(args, env)
            codes.append(result.returncode)
            assert "Traceback" not in result.stderr, result.stderr
            if result.returncode == 0:
                break
        assert codes[-1] == 0, f"seed {seed}: never converged, exit codes {codes}"

        orders = sandbox_orders(sandbox)
        by_email: dict[str, list[str]] = {}
        for order in orders:
            by_email.setdefault(order["giftOrder"]["recipientEmail"], []).append(order["_id"])
        valid_emails = {r["Email"] for r in rows}
        assert set(by_email) == valid_emails, f"seed {seed}: orders for the wrong rows"
        doubled = {e: ids for e, ids in by_email.items() if len(ids) > 1}
        assert not doubled, f"seed {seed}: doubled orders {doubled}"

        db = sqlite3.connect(state / "ledger.sqlite")
        ledger_orders = {
            r[0]: r[1]
            for r in db.execute(
                "SELECT order_id, state FROM rows WHERE batch = 'chaos' AND in_sheet = 1"
                " AND order_id IS NOT NULL"
            )
        }
        assert set(ledger_orders) == {o["_id"] for o in orders}, f"seed {seed}: ledger disagrees"
        assert set(ledger_orders.values()) == {"succeeded"}
        states = dict(
            db.execute(
                "SELECT state, COUNT(*) FROM rows WHERE batch = 'chaos' AND in_sheet = 1 GROUP BY state"
            ).fetchall()
        )
        assert states == {"succeeded": VALID_ROWS, "invalid": 5}, f"seed {seed}: {states}"


@pytest.mark.parametrize("mode", MODES)
def test_chaos_between_runs_kills_lost_ledgers_and_edits(tmp_path: Path, mode: str) -> None:
    """Kills, a deleted ledger and an edited sheet between cycles (tests/bench/chaos.py;
    `make bench` runs 20 seeds per mode). Nothing ordered twice, nothing missing."""
    seed = int(os.environ.get("BATCHER_CHAOS_SEED", random.randrange(1, 2**31)))
    print(f"\n{mode} between-runs chaos seed: {seed}  (replay with BATCHER_CHAOS_SEED={seed})")
    result = run_round(mode, seed, tmp_path, rows=30, cycles=4, grow=4)
    print(result)
    assert result.converged, f"seed {seed}: never converged: {result}"
    assert result.duplicates == 0, f"seed {seed}: ordered twice: {result}"
    assert result.missing == 0, f"seed {seed}: rows never ordered: {result}"
