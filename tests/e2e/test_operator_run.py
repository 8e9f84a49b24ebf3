"""`batcher run` as cron sees it: no TTY, every stderr line a parseable log line,
--json on stdout, and a dry run whose chunks and keys are what the real run sends."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

from batcher.sandbox.server import running_sandbox
from tests.e2e.runkit import batcher, cli_env, make_rows, sandbox_orders

FAST = {"rate_limit": 100_000, "rate_window_seconds": 60, "async_delay_seconds": 0.05}

#: 2026-12-03T02:00:01.042Z INFO  batch=nightly run=20261203T020001Z-1a2b3c message
LOG_LINE = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (?P<level>INFO|WARN|ERROR) +"
    r"batch=(?P<batch>\S+) run=(?P<run>\S+) (?P<msg>.+)$"
)
RUN_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")
LOG_TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def parse_log(stderr: str) -> list[dict[str, str]]:
    lines = []
    for line in stderr.splitlines():
        match = LOG_LINE.match(line)
        assert match, f"not a log line: {line!r}"
        lines.append(match.groupdict())
    return lines


def ledger_chunk_keys(state: Path, batch: str) -> list[str]:
    with sqlite3.connect(state / "ledger.sqlite") as db:
        rows = db.execute(
            "SELECT chunk_key FROM chunks WHERE batch = ? ORDER BY created_at, chunk_key", (batch,)
        )
        return [r[0] for r in rows]


def test_cron_run_logs_json_and_dry_run_keys(tmp_path: Path) -> None:
    with running_sandbox("ugiftme", async_mode=True, **FAST) as sandbox:
        rows = make_rows(30)
        rows[0]["Note"] = "Happy birthday"
        for row in rows[1:]:
            row["Note"] = ""
        sheet = tmp_path / "nightly.csv"
        _write_with_note(sheet, rows)
        state, reports = tmp_path / "state", tmp_path / "reports"
        env = cli_env(sandbox, state)
        common = ["--report-dir", str(reports), "--chunk-size", "7"]

        dry = batcher(["run", str(sheet), "--dry-run", "--json", *common], env)
        assert dry.returncode == 0, dry.stderr
        plan = json.loads(dry.stdout)
        assert plan["schema"] == "batcher.plan/1"
        assert plan["rows"]["send"] == 30 and plan["refusal"] is None
        assert sorted(c["rows"] for c in plan["chunks"]) == [2, 7, 7, 7, 7]
        assert sandbox_orders(sandbox) == [], "a dry run sends nothing"
        assert json.loads((reports / "nightly" / "plan.json").read_text()) == plan
        dry_log = parse_log(dry.stderr)
        assert any(
            "'Note' is not sent" in line["msg"] and line["level"] == "WARN" for line in dry_log
        )

        real = batcher(["run", str(sheet), "--json", *common], env)
        assert real.returncode == 0, real.stderr
        sent = ledger_chunk_keys(state, "nightly")
        assert sent == [c["key"] for c in plan["chunks"]]
        # the provider saw exactly those keys (the key prefixes the order's external id)
        assert len(sandbox_orders(sandbox)) == 30

        log = parse_log(real.stderr)
        run_ids = {line["run"] for line in log} - {"-"}
        assert len(run_ids) == 1 and RUN_ID.match(run_ids.pop())
        assert {line["batch"] for line in log} == {"nightly"}
        started = next(line["msg"] for line in log if line["msg"].startswith("run started:"))
        assert str(sheet) in started and "sha256" in started and "ledger " in started
        assert str((state / "ledger.sqlite").absolute()) in started
        assert any("reconciliation: RECONCILED" in line["msg"] for line in log)
        column_lines = [line for line in log if line["msg"].startswith("column ")]
        assert column_lines, "the header mapping is always shown"
        assert log.index(column_lines[0]) < log.index(
            next(line for line in log if line["msg"].startswith("plan:"))
        )

        document = json.loads(real.stdout)
        check_run_document(document)
        assert document["by_state"]["succeeded"] == 30
        assert document["reconciliation"]["verdict"] == "RECONCILED"

        again = batcher(["run", str(sheet), "--dry-run", "--json", *common], env)
        rerun = json.loads(again.stdout)
        assert rerun["chunks"] == [] and rerun["rows"]["done"] == 30

        as_json = batcher(["run", str(sheet), "--log-format", "json", *common], env)
        assert as_json.returncode == 0, as_json.stderr
        records = [json.loads(line) for line in as_json.stderr.splitlines()]
        assert all({"ts", "level", "batch", "run", "msg"} <= set(r) for r in records)
        assert all(r["batch"] == "nightly" and LOG_TS.match(r["ts"]) for r in records)
        started = next(r for r in records if r["msg"].startswith("run started:"))
        assert started["ledger"] == str((state / "ledger.sqlite").absolute())
        assert RUN_ID.match(started["run"]) and started["sha256"] == plan["sheet_sha256"]


def check_run_document(document: dict[str, Any]) -> None:
    """batcher.run/1, as docs/operator.md promises it."""
    assert document["schema"] == "batcher.run/1"
    for key in ("batch", "run_id", "provider", "account_id", "exit_code", "outcome", "message",
                "by_state", "rows_total", "totals_by_currency", "reconciliation", "plan",
                "requests", "recovery", "started_at", "finished_at", "summary_file", "ledger"):  # fmt: skip
        assert key in document, key
    for totals in document["totals_by_currency"].values():
        assert set(totals) == {"orders", "face_value", "wallet_orders", "cost"}


def _write_with_note(path: Path, rows: list[dict[str, str]]) -> None:
    import csv

    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_validate_shows_the_mapping_and_warns_of_a_dropped_note(tmp_path: Path) -> None:
    sheet = tmp_path / "aliases.csv"
    sheet.write_text(
        "Email,SKU,Amount,Cur,Country,Note\n"
        "a@example.com,AMAZON_UK_STD,10.00,GBP,GB,Happy birthday\n",
        encoding="utf-8",
    )
    with running_sandbox("ugiftme", **FAST) as sandbox:
        env = cli_env(sandbox, tmp_path / "state")
        done = batcher(["validate", str(sheet), "--report-dir", str(tmp_path / "r")], env)
        assert done.returncode == 0, done.stdout + done.stderr
        lines = done.stdout.splitlines()
        assert "column 'SKU' -> product_code (inferred)" in lines
        assert "column 'Cur' -> currency (inferred)" in lines
        assert "column 'Amount' -> amount (taken)" in lines
        assert any(line.startswith("warning: column 'Note' is not sent") for line in lines)

        mapped = batcher(
            ["validate", str(sheet), "--map", "message=Note", "--report-dir", str(tmp_path / "r")],
            env,
        )
        assert "column 'Note' -> message (mapped)" in mapped.stdout.splitlines()
        assert "warning" not in mapped.stdout
