"""The real CLI on a PostgreSQL ledger (a throwaway cluster, tests/pg.py) against a
real UGiftMe sandbox: run, rerun, dry run, status, report; and the refusals."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg

from batcher.core.errors import ExitCode
from batcher.core.states import HELD_ELSEWHERE
from tests.e2e.runkit import (
    batcher,
    cli_env,
    make_rows,
    orders_by_email,
    read_summary,
    start_batcher,
    write_sheet,
)
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


def test_two_runs_sharing_references_on_one_postgresql_ledger_order_each_once(
    tmp_path: Path, make_ugiftme_sandbox: Any, pg_url: str
) -> None:
    """Two `batcher run` processes, two batches, one account, at the same time: 20 of
    their references are in both sheets. Each reference is ordered exactly once at the
    provider; the batch that did not get a reference holds its row, naming the other
    batch and the way out, and a rerun once the other has finished skips it."""
    # Orders stay in flight for a while, so each run sees the other's plans.
    sandbox = make_ugiftme_sandbox(async_delay_seconds=0.5, rate_limit=100_000)
    rows = make_rows(40)  # emails are unique per reference: orders by email = by reference
    sheets = {
        "first": write_sheet(tmp_path / "first.csv", rows[:30]),
        "second": write_sheet(tmp_path / "second.csv", rows[10:]),
    }
    env = cli_env(sandbox, tmp_path / "state", BATCHER_LEDGER=pg_url)
    reports = tmp_path / "reports"

    def run(name: str) -> list[str]:
        return ["run", str(sheets[name]), "--batch", name, "--yes", "--chunk-size", "5",
                "--report-dir", str(reports)]  # fmt: skip

    procs = {name: start_batcher(run(name), env) for name in sheets}
    outputs = {name: proc.communicate(timeout=180) for name, proc in procs.items()}
    for name, proc in procs.items():
        assert proc.returncode in (ExitCode.OK, ExitCode.HELD), outputs[name][1]
        assert "Traceback" not in outputs[name][1]

    ordered = orders_by_email(sandbox)
    assert ordered == Counter({row["Email"]: 1 for row in rows})  # all 40, each once

    with psycopg.connect(pg_url) as db:
        found = db.execute(
            "SELECT batch, reference, state, error_code, error_message FROM rows"
        ).fetchall()
        claims = db.execute("SELECT reference, batch FROM reference_claims").fetchall()
    by_ref: dict[str, dict[str, tuple[str, str | None, str | None]]] = {}
    for batch, reference, state, code, message in found:
        by_ref.setdefault(reference, {})[batch] = (state, code, message)
    shared = {row["Reference"] for row in rows[10:30]}
    held = 0
    for reference in shared:
        states = by_ref[reference]
        winners = [b for b, (state, _, _) in states.items() if state == "succeeded"]
        assert len(winners) == 1, (reference, states)
        (loser,) = set(states) - set(winners)
        state, code, message = states[loser]
        if state == "held":  # the other batch had it planned or in flight
            held += 1
            assert code == HELD_ELSEWHERE
            assert f"in batch {winners[0]!r}" in (message or "")
            assert "then rerun this batch" in (message or "")
        else:  # it had already succeeded there when this run synced its sheet
            assert (state, code) == ("skipped", "ordered_in_another_batch"), states
    assert held > 0, "the runs did not overlap: nothing was held"
    assert {ref: batch for ref, batch in claims} == {
        ref: next(b for b, s in by_ref[ref].items() if s[0] == "succeeded") for ref in by_ref
    }  # every ordered reference is claimed, by the batch that ordered it

    # The way out the message names: rerun once the other batch has finished.
    for name in sheets:
        again = batcher(run(name), env)
        assert again.returncode == ExitCode.OK, again.stderr
    assert orders_by_email(sandbox) == ordered  # nothing more was ordered
    with psycopg.connect(pg_url) as db:
        left = db.execute("SELECT COUNT(*) FROM rows WHERE state = 'held'").fetchone()
    assert left == (0,)
