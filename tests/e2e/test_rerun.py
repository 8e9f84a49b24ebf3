"""Rerun semantics: retryable and permanent failures, --retry-failed, changed rows, conflicts."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

from batcher.config import provider_settings
from batcher.core.errors import ExitCode
from batcher.execute.run import BatchOptions, run_batch
from batcher.sandbox.server import running_sandbox
from tests.e2e.runkit import (
    ConfirmingUI,
    batcher,
    cli_env,
    make_rows,
    orders_by_email,
    read_rows_csv,
    read_summary,
    sandbox_orders,
    write_sheet,
)

FAST = {"rate_limit": 100_000, "async_delay_seconds": 0.05}


def args_for(sheet: Path, reports: Path, *extra: str) -> list[str]:
    return ["run", str(sheet), "--yes", "--report-dir", str(reports), "--chunk-size", "5", *extra]


def test_retryable_failure_is_retried_with_a_new_key(tmp_path: Path) -> None:
    with running_sandbox("ugiftme", fault_async_fail=1.0, seed=1, **FAST) as sandbox:
        sheet = write_sheet(tmp_path / "retry.csv", make_rows(10))
        env = cli_env(sandbox, tmp_path / "state")
        first = batcher(args_for(sheet, tmp_path / "r"), env)
        assert first.returncode == 1, first.stderr
        failed = read_rows_csv(tmp_path / "r", "retry")
        assert {r["state"] for r in failed} == {"failed"}
        assert {r["failure_kind"] for r in failed} == {"retryable"}
        assert not sandbox_orders(sandbox)

        sandbox.control("PATCH", "/faults", json={"async_fail": 0.0})
        second = batcher(args_for(sheet, tmp_path / "r"), env)
        assert second.returncode == 0, second.stderr
        done = read_rows_csv(tmp_path / "r", "retry")
        assert {r["attempts"] for r in done} == {"2"}
        old_keys = {r["idempotency_key"] for r in failed}
        assert not old_keys & {r["idempotency_key"] for r in done}
        assert max(orders_by_email(sandbox).values()) == 1 and len(sandbox_orders(sandbox)) == 10


class DeactivateOnPlan(ConfirmingUI):
    """A UI that deactivates a product after validation, before anything is sent,
    so the provider (not batcher's validator) rejects those rows: catalog drift."""

    def __init__(self, sandbox: Any, product: str) -> None:
        super().__init__()
        self.sandbox = sandbox
        self.product = product

    def show_plan(self, plan: Any, balances: Any) -> None:
        self.sandbox.control("PATCH", f"/products/{self.product}", json={"isActive": False})


def test_permanent_failures_need_retry_failed_or_a_change(tmp_path: Path) -> None:
    with running_sandbox("ugiftme", async_mode=False, **FAST) as sandbox:
        rows = make_rows(12)
        for row in rows[:4]:
            row["Product"] = "TESCO_UK"
        for row in rows[4:]:
            row["Product"] = "AMAZON_UK_STD"
        sheet = write_sheet(tmp_path / "drift.csv", rows)
        state, reports = tmp_path / "state", tmp_path / "r"
        settings = provider_settings(
            "ugiftme", base_url=sandbox.base_url, environ={"UGIFTME_API_KEY": sandbox.api_key}
        )
        options = BatchOptions(sheet=sheet, state_dir=state, report_dir=reports)
        result = run_batch(settings, options, DeactivateOnPlan(sandbox, "TESCO_UK"))
        assert result.exit_code == ExitCode.SOME_FAILED
        by_state = read_summary(reports, "drift")["by_state"]
        assert (by_state["failed"], by_state["succeeded"]) == (4, 8)
        failed = [r for r in read_rows_csv(reports, "drift") if r["state"] == "failed"]
        assert {r["failure_kind"] for r in failed} == {"permanent"}

        sandbox.control("PATCH", "/products/TESCO_UK", json={"isActive": True})
        env = cli_env(sandbox, state)
        plain = batcher(args_for(sheet, reports), env)
        assert plain.returncode == 1, plain.stderr
        assert len(sandbox_orders(sandbox)) == 8, "a permanent failure was retried without asking"

        # A changed row is retried without --retry-failed.
        rows[0]["Amount"] = str(Decimal(rows[0]["Amount"]) + 1)
        write_sheet(sheet, rows)
        changed = batcher(args_for(sheet, reports), env)
        assert changed.returncode == 1, changed.stderr
        assert len(sandbox_orders(sandbox)) == 9

        retried = batcher(args_for(sheet, reports, "--retry-failed"), env)
        assert retried.returncode == 0, retried.stderr
        counts = orders_by_email(sandbox)
        assert len(counts) == 12 and max(counts.values()) == 1


def test_changed_succeeded_row_is_a_conflict_and_never_reordered(tmp_path: Path) -> None:
    with running_sandbox("ugiftme", **FAST) as sandbox:
        rows = make_rows(10)
        sheet = write_sheet(tmp_path / "conflict.csv", rows)
        env = cli_env(sandbox, tmp_path / "state")
        assert batcher(args_for(sheet, tmp_path / "r"), env).returncode == 0
        rows[3]["Amount"] = "99.99"
        write_sheet(sheet, rows)
        again = batcher(args_for(sheet, tmp_path / "r"), env)
        assert again.returncode == 0, again.stderr
        assert len(sandbox_orders(sandbox)) == 10
        summary = read_summary(tmp_path / "r", "conflict")
        assert summary["conflicts"] == 1
        conflicted = [r for r in read_rows_csv(tmp_path / "r", "conflict") if r["conflict"]]
        assert [r["Reference"] if "Reference" in r else r["reference"] for r in conflicted] == [
            rows[3]["Reference"]
        ]


def test_a_sheet_that_no_longer_validates_keeps_the_batchs_paid_orders_in_its_summary(
    tmp_path: Path,
) -> None:
    """An edited sheet (or a rule added since: a name with a control character) fails
    validation on a rerun. Nothing is sent, and summary.json, which replaces the last
    run's, still says what the batch paid: the ledger's counts, the sheet's beside them."""
    with running_sandbox("ugiftme", **FAST) as sandbox:
        rows = make_rows(6)
        sheet = write_sheet(tmp_path / "edited.csv", rows)
        env = cli_env(sandbox, tmp_path / "state")
        first = batcher(args_for(sheet, tmp_path / "r"), env)
        assert first.returncode == 0, first.stderr
        paid = read_summary(tmp_path / "r", "edited")["totals_by_currency"]
        rows[2]["Name"] = "Ana\x1b]0;x\x07"
        write_sheet(sheet, rows)
        second = batcher(args_for(sheet, tmp_path / "r"), env)
        assert second.returncode == ExitCode.USAGE, second.stderr
        assert "control_character" in second.stdout + second.stderr
        assert len(sandbox_orders(sandbox)) == 6  # nothing sent
    summary = read_summary(tmp_path / "r", "edited")
    assert summary["exit_code"] == ExitCode.USAGE
    assert {k: v for k, v in summary["by_state"].items() if v} == {"succeeded": 6}
    assert summary["totals_by_currency"] == paid
    assert summary["paid_orders"]["total"] == 6 and summary["outcome"] == "done"
    assert summary["sheet_rows"] == {"read": 6, "invalid": 1}
