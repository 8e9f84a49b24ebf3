"""The ledger's cost per row stays constant: no per-chunk statement reads a whole batch.

A small real batch (a run with rejected items, a rerun that retries them, then
`report` and `status`) is driven through the CLI in this process against the
sandbox, with every SQL statement the ledger executes traced. Each distinct
statement is explained with `EXPLAIN QUERY PLAN` against the finished ledger:

- no statement may `SCAN` `rows`, `chunks` or `chunk_rows` (they grow with batches);
- a statement issued per chunk or per row (at least as often as there are chunks)
  may not read a whole batch either: an index search on `batch` alone is a scan
  of the batch, and issued per chunk it makes a run quadratic in its size.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from batcher.cli import cli
from batcher.ledger.connection import _CREATE_STAGING
from tests.e2e.runkit import cli_env, make_rows, write_sheet

GROWING_TABLES = ("rows", "chunks", "chunk_rows")
FULL_SCAN = re.compile(rf"^SCAN ({'|'.join(GROWING_TABLES)})\b")
WHOLE_BATCH = re.compile(r"^(SCAN \w+|SEARCH \w+ USING (COVERING )?INDEX \w+ \(batch=\?\))")
DML = re.compile(r"^\s*(SELECT|UPDATE|DELETE|INSERT|WITH|REPLACE)\b", re.IGNORECASE)


def template(statement: str) -> str:
    """The statement with its inlined values taken out: one per call site."""
    statement = re.sub(r"'(?:[^']|'')*'", "?", statement)
    statement = re.sub(r"\b\d+(\.\d+)?\b", "?", statement)
    return re.sub(r"\?(\s*,\s*\?)+", "?...", statement)


def traced_connect(statements: list[str]) -> Callable[..., sqlite3.Connection]:
    real_connect = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        connection = real_connect(*args, **kwargs)
        connection.set_trace_callback(statements.append)  # bound values expanded inline
        return connection

    return connect


def invoke(args: list[str], env: dict[str, str]) -> None:
    result = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
    assert result.exit_code in (0, 1, 3), result.output  # a partial run is fine here


def test_no_statement_scans_a_growing_table(
    tmp_path: Path, make_ugiftme_sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = make_ugiftme_sandbox(rate_limit=100_000, fault_reject_item=0.1, seed=4)
    sheet = write_sheet(tmp_path / "plans.csv", make_rows(40, currencies=("GBP", "EUR")))
    env = cli_env(sandbox, tmp_path / "state")
    reports = str(tmp_path / "reports")
    statements: list[str] = []
    monkeypatch.setattr(sqlite3, "connect", traced_connect(statements))

    run = ["run", str(sheet), "--yes", "--chunk-size", "5", "--report-dir", reports]
    invoke(run, env)
    sandbox.control("PUT", "/faults", json={"reject_item": 0})
    invoke([*run, "--retry-failed"], env)
    invoke(["report", "plans", "--report-dir", reports], env)
    invoke(["status", "plans"], env)
    monkeypatch.undo()

    executed = [s for s in statements if DML.match(s)]
    chunks = sum(1 for s in executed if s.startswith("INSERT INTO chunks"))
    assert chunks >= 8, "the trace saw too few chunks to tell per-chunk statements apart"
    examples: dict[str, str] = {}
    counts: dict[str, int] = {}
    for statement in executed:
        examples.setdefault(template(statement), statement)
        counts[template(statement)] = counts.get(template(statement), 0) + 1
    assert any("UPDATE rows" in t and "chunk_key = ?" in t for t in counts), "no chunk updates"

    ledger = sqlite3.connect(tmp_path / "state" / "ledger.sqlite")
    ledger.execute(_CREATE_STAGING)  # every ledger connection has it (connection.py)
    problems = []
    for name, statement in examples.items():
        plan = [row[-1] for row in ledger.execute(f"EXPLAIN QUERY PLAN {statement}")]
        repeated = counts[name] >= chunks
        problems += [
            f"{detail} ({counts[name]}x): {name[:300]}"
            for detail in plan
            if FULL_SCAN.match(detail) or (repeated and WHOLE_BATCH.match(detail))
        ]
    ledger.close()
    assert not problems, "\n".join(problems)
