"""`batcher run` end to end: the real CLI against the real UGiftMe sandbox over HTTP."""

from __future__ import annotations

import itertools
import json
import shutil
import signal
import time
from decimal import Decimal
from pathlib import Path

import pytest

from batcher.sandbox.server import running_sandbox
from tests.e2e.runkit import (
    batcher,
    cli_env,
    make_rows,
    orders_by_email,
    read_rows_csv,
    read_summary,
    sandbox_orders,
    start_batcher,
    wait_for,
    wallet_debits,
    write_sheet,
)

FAST = {"rate_limit": 100_000, "rate_window_seconds": 60, "async_delay_seconds": 0.05}


def run_args(sheet: Path, report_dir: Path, *extra: str) -> list[str]:
    return ["run", str(sheet), "--yes", "--report-dir", str(report_dir), *extra]


@pytest.mark.parametrize("async_mode", [True, False], ids=["async", "sync"])
def test_happy_path_1000_rows(tmp_path: Path, async_mode: bool) -> None:
    funding = {"GBP": "50000.00", "EUR": "50000.00"}
    with running_sandbox("ugiftme", async_mode=async_mode, funding=funding, **FAST) as sandbox:
        sheet = write_sheet(tmp_path / "rewards.csv", make_rows(1000, currencies=("GBP", "EUR")))
        env = cli_env(sandbox, tmp_path / "state")
        result = batcher(run_args(sheet, tmp_path / "reports"), env)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr

        orders = sandbox_orders(sandbox)
        assert len(orders) == 1000
        assert max(orders_by_email(sandbox).values()) == 1
        summary = read_summary(tmp_path / "reports", "rewards")
        assert summary["rows_total"] == 1000
        assert summary["by_state"]["succeeded"] == 1000
        for currency in ("GBP", "EUR"):
            assert Decimal(summary["totals_by_currency"][currency]["cost"]) == wallet_debits(
                sandbox, currency
            )
        rows = read_rows_csv(tmp_path / "reports", "rewards")
        assert len(rows) == 1000 and {r["state"] for r in rows} == {"succeeded"}
        assert all(r["order_id"] and r["idempotency_key"].startswith("b1-") for r in rows)
        assert rows[0]["Cost centre"].startswith("CC-")

        # Rerunning the same command orders nothing and exits 0.
        again = batcher(run_args(sheet, tmp_path / "reports"), env)
        assert again.returncode == 0, again.stderr
        assert len(sandbox_orders(sandbox)) == 1000
        assert read_summary(tmp_path / "reports", "rewards")["requests"]["submits"] == 0


def test_lost_ledger_creates_no_duplicates(tmp_path: Path) -> None:
    # Slow enough (4 req/s) that a kill lands mid-way. Funded for the whole sheet twice:
    # with its ledger gone, the funds rule cannot know which rows the provider already
    # holds, so it counts them all (the provider's deduplication then charges nothing twice).
    with running_sandbox(
        "ugiftme",
        rate_limit=4,
        rate_window_seconds=1,
        async_delay_seconds=0.05,
        funding={"GBP": "20000.00"},
    ) as sandbox:
        sheet = write_sheet(tmp_path / "lost.csv", make_rows(300))
        state = tmp_path / "state"
        env = cli_env(sandbox, state)
        proc = start_batcher(run_args(sheet, tmp_path / "reports", "--chunk-size", "10"), env)
        assert wait_for(lambda: len(sandbox_orders(sandbox)) >= 30, timeout=60)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ordered_before = len(sandbox_orders(sandbox))
        assert 0 < ordered_before < 300

        shutil.rmtree(state)
        result = batcher(run_args(sheet, tmp_path / "reports", "--chunk-size", "10"), env)
        assert result.returncode == 0, result.stderr
        counts = orders_by_email(sandbox)
        assert len(counts) == 300 and max(counts.values()) == 1


def test_funds_run_out_then_top_up(tmp_path: Path) -> None:
    with running_sandbox("ugiftme", funding={"GBP": "600.00"}, **FAST) as sandbox:
        sheet = write_sheet(tmp_path / "funds.csv", make_rows(60))  # ~ £2,100 of orders
        env = cli_env(sandbox, tmp_path / "state")
        args = run_args(sheet, tmp_path / "reports", "--chunk-size", "5", "--order-fundable")
        first = batcher(args, env)
        assert first.returncode == 3, first.stderr
        assert "insufficient funds" in first.stderr.lower()
        rows = read_rows_csv(tmp_path / "reports", "funds")
        waiting = [r for r in rows if r["state"] == "pending"]
        assert waiting and all(r["error_code"] == "insufficient_funds" for r in waiting)
        ordered = len(sandbox_orders(sandbox))
        assert ordered == sum(1 for r in rows if r["state"] == "succeeded")

        sandbox.control("POST", "/wallets/GBP/fund", json={"amount": "5000.00"})
        second = batcher(args, env)
        assert second.returncode == 0, second.stderr
        counts = orders_by_email(sandbox)
        assert len(counts) == 60 and max(counts.values()) == 1
        summary = read_summary(tmp_path / "reports", "funds")
        assert Decimal(summary["totals_by_currency"]["GBP"]["cost"]) == wallet_debits(
            sandbox, "GBP"
        )


def test_throttle_zero_429s_over_200_chunks(tmp_path: Path) -> None:
    with running_sandbox(
        "ugiftme",
        rate_limit=60,
        rate_window_seconds=2,
        async_delay_seconds=0.05,
        funding={"GBP": "50000.00"},
    ) as sandbox:
        sheet = write_sheet(tmp_path / "pace.csv", make_rows(400))
        env = cli_env(sandbox, tmp_path / "state")
        result = batcher(
            run_args(sheet, tmp_path / "reports", "--chunk-size", "2"), env, timeout=300
        )
        assert result.returncode == 0, result.stderr
        stats = sandbox.control("GET", "/stats?log=false")
        assert read_summary(tmp_path / "reports", "pace")["requests"]["submits"] >= 200
        assert _count_429s(stats) == 0
        assert len(sandbox_orders(sandbox)) == 400


def _count_429s(stats: dict) -> int:
    text = json.dumps(stats)
    # The sandbox reports 429s sent per key; fall back to scanning the structure.
    for key in ("rateLimited", "tooManyRequests", "429"):
        if key in stats:
            value = stats[key]
            return value if isinstance(value, int) else sum(value.values())
    raise AssertionError(f"no 429 count in sandbox stats: {text[:400]}")


def test_retry_after_is_honoured_under_429_bursts(tmp_path: Path) -> None:
    with running_sandbox("ugiftme", fault_429=0.15, seed=11, burst_seconds=1.0, **FAST) as sandbox:
        sheet = write_sheet(tmp_path / "bursts.csv", make_rows(120))
        env = cli_env(sandbox, tmp_path / "state")
        result = batcher(run_args(sheet, tmp_path / "reports", "--chunk-size", "4"), env)
        assert result.returncode == 0, result.stderr
        log = sandbox.control("GET", "/stats")["log"]
        api = [e for e in log if not e["path"].startswith("/__sandbox")]
        too_soon = []
        for previous, following in itertools.pairwise(api):
            if previous["status"] == 429:
                gap = float(following["t"]) - float(previous["t"])
                if gap + 0.01 < float(previous["retryAfter"]):
                    too_soon.append((previous, following, gap))
        assert any(e["status"] == 429 for e in api), "the fault never fired"
        assert not too_soon, too_soon[:3]
        assert max(orders_by_email(sandbox).values()) == 1


def test_deadline_leaves_rows_accepted_and_rerun_resumes_polling(tmp_path: Path) -> None:
    with running_sandbox("ugiftme", rate_limit=100_000, async_delay_seconds=2.0) as sandbox:
        sheet = write_sheet(tmp_path / "slow.csv", make_rows(30))
        env = cli_env(sandbox, tmp_path / "state")
        args = run_args(sheet, tmp_path / "reports", "--chunk-size", "10")
        first = batcher([*args, "--deadline", "1"], env)
        assert first.returncode == 3, first.stderr
        states = {r["state"] for r in read_rows_csv(tmp_path / "reports", "slow")}
        assert states == {"accepted"}
        requests_before = sandbox.control("GET", "/order-requests")["total"]

        second = batcher(args, env)
        assert second.returncode == 0, second.stderr
        summary = read_summary(tmp_path / "reports", "slow")
        assert summary["requests"]["submits"] == 0 and summary["requests"]["polls"] >= 3
        assert sandbox.control("GET", "/order-requests")["total"] == requests_before
        assert len(sandbox_orders(sandbox)) == 30


def test_second_concurrent_run_is_refused_and_sigterm_stops_cleanly(tmp_path: Path) -> None:
    with running_sandbox(
        "ugiftme", rate_limit=3, rate_window_seconds=1, async_delay_seconds=0.05
    ) as sandbox:
        sheet = write_sheet(tmp_path / "locked.csv", make_rows(200))
        env = cli_env(sandbox, tmp_path / "state")
        args = run_args(sheet, tmp_path / "reports", "--chunk-size", "5")
        first = start_batcher(args, env)
        assert wait_for(lambda: len(sandbox_orders(sandbox)) >= 5, timeout=60)

        second = batcher(args, env)
        assert second.returncode == 4
        assert "locked by pid" in second.stderr and str(first.pid) in second.stderr

        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=60)
        assert first.returncode == 3, stderr
        assert "Traceback" not in stderr
        summary = read_summary(tmp_path / "reports", "locked")
        assert summary["stopped"] == "interrupted" and summary["exit_code"] == 3

    # A fresh sandbox is not needed: a rerun against the same one finishes the batch.


def test_sigterm_then_rerun_finishes_without_duplicates(tmp_path: Path) -> None:
    with running_sandbox(
        "ugiftme", rate_limit=5, rate_window_seconds=1, async_delay_seconds=0.05
    ) as sandbox:
        sheet = write_sheet(tmp_path / "term.csv", make_rows(60))
        env = cli_env(sandbox, tmp_path / "state")
        args = run_args(sheet, tmp_path / "reports", "--chunk-size", "5")
        proc = start_batcher(args, env)
        assert wait_for(lambda: len(sandbox_orders(sandbox)) >= 5, timeout=60)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        assert proc.returncode == 3
        sandbox.control("PUT", "/rate-limit", json={"limit": 100_000, "windowSeconds": 60})
        time.sleep(0.1)
        result = batcher(args, env)
        assert result.returncode == 0, result.stderr
        counts = orders_by_email(sandbox)
        assert len(counts) == 60 and max(counts.values()) == 1
