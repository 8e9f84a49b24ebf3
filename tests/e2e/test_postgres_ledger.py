"""The real CLI on a PostgreSQL ledger (a throwaway cluster, tests/pg.py) against a
real UGiftMe sandbox: run, rerun, dry run, status, report; and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg

from batcher.core.errors import ExitCode
from tests.e2e.runkit import batcher, cli_env, make_rows, orders_by_email, read_summary, write_sheet
from tests.pg import PgCluster


def test_a_run_on_postgresql_orders_each_row_once_and_a_rerun_orders_nothing(
    tmp_path: Path, ugiftme_sandbox: object, pg_url: str
) -> None:
    sheet = write_sheet(tmp_path / "pgbatch.csv", make_rows(12))
    env = cli_env(ugiftme_sandbox, tmp_path / "state", BATCHER_LEDGER=pg_url)
    reports = tmp_path / "reports"
    run = ["run", str(sheet), "--yes", "--report-dir", str(reports), "--chunk-size", "5"]

    planned = batcher([*run, "--dry-run", "--json"], env)
    assert planned.returncode == 0, planned.stderr
    assert json.loads(planned.stdout)["rows"]["send"] == 12
    assert not orders_by_email(ugiftme_sandbox)  # a dry run sends nothing

    first = batcher(run, env)
    assert first.returncode == ExitCode.OK, first.stderr
    assert sorted(orders_by_email(ugiftme_sandbox).values()) == [1] * 12
    assert not (tmp_path / "state" / "ledger.sqlite").exists()  # nothing went to SQLite
    with psycopg.connect(pg_url) as db:
        states = dict(db.execute("SELECT state, COUNT(*) FROM rows GROUP BY state").fetchall())
    assert states == {"succeeded": 12}

    again = batcher(run, env)
    assert again.returncode == ExitCode.OK, again.stderr
    assert sorted(orders_by_email(ugiftme_sandbox).values()) == [1] * 12
    assert read_summary(reports, "pgbatch")["requests"]["submits"] == 0

    status = batcher(["status", "pgbatch"], env)
    assert status.returncode == 0, status.stderr
    report = batcher(["report", "pgbatch", "--report-dir", str(reports)], env)
    assert report.returncode == ExitCode.OK, report.stderr
    assert list((reports / "pgbatch").rglob("reconciliation.xlsx"))


def test_an_unmigrated_database_is_refused_until_ledger_migrate(
    tmp_path: Path, ugiftme_sandbox: object, pg_cluster: PgCluster
) -> None:
    url = pg_cluster.url(pg_cluster.fresh_database(migrated=False))
    secret_url = url.replace("postgres@", "postgres:hunter2secret@")
    env = cli_env(ugiftme_sandbox, tmp_path / "state")
    refused = batcher(["status", "--ledger", secret_url], env)
    assert refused.returncode == ExitCode.CANNOT_START
    assert "batcher ledger migrate" in refused.stderr
    assert "hunter2secret" not in refused.stdout + refused.stderr
    assert "postgres:***@" in refused.stderr

    migrated = batcher(["ledger", "migrate", "--ledger", url], env)
    assert migrated.returncode == 0, migrated.stderr
    assert "from a new ledger to schema" in migrated.stdout
    assert "already at schema" in batcher(["ledger", "migrate", "--ledger", url], env).stdout
    assert batcher(["status", "--ledger", url], env).returncode == 0


def test_an_unreachable_server_is_named_without_its_password(
    tmp_path: Path, ugiftme_sandbox: object
) -> None:
    env = cli_env(ugiftme_sandbox, tmp_path / "state")
    url = "postgresql://batcher:s3cretpw@127.0.0.1:1/ledger"
    done = batcher(["status", "--ledger", url], env)
    assert done.returncode == ExitCode.CANNOT_START
    assert (
        "cannot connect to the PostgreSQL ledger at postgresql://batcher:***@127.0.0.1:1/ledger"
        in done.stderr
    )
    assert "s3cretpw" not in done.stdout + done.stderr
