"""Every command's --json, held to the schema docs/operator.md documents."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from batcher.sandbox.server import running_sandbox
from tests.e2e.runkit import batcher, cli_env, make_rows, write_sheet
from tests.e2e.test_operator_run import check_run_document

FAST = {"rate_limit": 100_000, "rate_window_seconds": 60, "async_delay_seconds": 0.05}

#: schema tag -> keys every document of it has
SCHEMAS: dict[str, set[str]] = {
    "batcher.auth/1": {"provider", "base_url", "account_id", "name", "email", "plan", "status"},
    "batcher.catalog/1": {"products"},
    "batcher.wallet/1": {"wallets"},
    "batcher.transactions/1": {"transactions"},
    "batcher.validate/1": {"ok", "rows_read", "valid_rows", "invalid_rows", "errors", "columns"},
    "batcher.status/1": {"ledger", "batches"},
    "batcher.batch/1": {
        "ledger",
        "batch",
        "by_state",
        "rows_total",
        "totals_by_currency",
        "outcome",
        "runs",
    },
    "batcher.report/1": {"verdict", "reason", "by_state", "currencies", "orphans", "workbook"},
}
BATCH_STATUS = {"batch", "provider", "account_id", "created_at", "updated_at", "by_state",
                "rows_total", "totals_by_currency", "outcome", "last_run"}  # fmt: skip


def document(args: list[str], env: dict[str, str], code: int = 0) -> dict[str, Any]:
    done = batcher([*args, "--json"], env)
    assert done.returncode == code, done.stderr
    parsed: dict[str, Any] = json.loads(done.stdout)
    schema = parsed["schema"]
    missing = SCHEMAS.get(schema, set()) - set(parsed)
    assert not missing, (schema, missing)
    return parsed


def test_every_command_prints_its_schema(tmp_path: Path) -> None:
    with running_sandbox("ugiftme", **FAST) as sandbox:
        sheet = write_sheet(tmp_path / "tags.csv", make_rows(6, currencies=("GBP", "EUR")))
        env = cli_env(sandbox, tmp_path / "state")
        reports = ["--report-dir", str(tmp_path / "reports")]

        assert document(["auth"], env)["schema"] == "batcher.auth/1"
        assert document(["catalog", "--currency", "GBP"], env)["products"]
        assert document(["wallet"], env)["wallets"]
        assert document(["wallet", "--transactions"], env)["schema"] == "batcher.transactions/1"
        assert document(["validate", str(sheet), *reports], env)["ok"] is True

        run = document(["run", str(sheet), "--yes", *reports], env)
        check_run_document(run)
        assert set(run["totals_by_currency"]) == {"GBP", "EUR"}
        assert run["reconciliation"]["by_currency"] == {"EUR": "RECONCILED", "GBP": "RECONCILED"}

        listed = document(["status"], env)
        (batch,) = listed["batches"]
        assert set(batch) >= BATCH_STATUS
        assert batch["rows_total"] == 6 and batch["outcome"] == "done"
        assert batch["last_run"]["exit_code"] == 0
        one = document(["status", "tags"], env)
        assert one["schema"] == "batcher.batch/1"
        assert one["totals_by_currency"] == run["totals_by_currency"]
        assert one["runs"][0]["run_id"] == run["run_id"]

        report = document(["report", "tags", *reports], env)
        assert report["verdict"] == "RECONCILED"
        assert set(report["currencies"]) == {"GBP", "EUR"}


def test_a_refused_run_still_prints_every_run_key(tmp_path: Path) -> None:
    with running_sandbox("ugiftme", **FAST) as sandbox:
        rows = make_rows(3)
        rows[1]["Email"] = "not-an-email"
        sheet = write_sheet(tmp_path / "broken.csv", rows)
        env = cli_env(sandbox, tmp_path / "state")
        run = document(["run", str(sheet), "--yes", "--report-dir", str(tmp_path / "r")], env, 2)
        check_run_document(run)
        assert run["run_id"] is None and run["outcome"] == "nothing was sent"
        assert run["by_state"]["invalid"] == 1
