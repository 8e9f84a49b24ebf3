"""`batcher enqueue`, `batcher worker` and `batcher queue`: the real CLI on a throwaway
PostgreSQL ledger (tests/pg.py) against real UGiftMe sandboxes."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import psycopg

from batcher.core.errors import ExitCode
from tests.e2e.runkit import (
    batcher,
    cli_env,
    make_rows,
    orders_by_email,
    read_summary,
    start_batcher,
    wait_for,
    write_sheet,
)


def queue_json(env: dict[str, str]) -> list[dict[str, Any]]:
    listed = batcher(["queue", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    document = json.loads(listed.stdout)
    assert document["schema"] == "batcher.queue/1"
    items: list[dict[str, Any]] = document["items"]
    return items


def test_enqueue_needs_a_postgresql_ledger(tmp_path: Path, ugiftme_sandbox: Any) -> None:
    sheet = write_sheet(tmp_path / "q.csv", make_rows(3))
    env = cli_env(ugiftme_sandbox, tmp_path / "state")
    done = batcher(["enqueue", str(sheet), "--batch", "q1"], env)
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert "the work queue needs a shared PostgreSQL ledger" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "state" / "ledger.sqlite").exists()


def test_enqueue_refuses_a_sheet_that_fails_validation(
    tmp_path: Path, ugiftme_sandbox: Any, pg_url: str
) -> None:
    rows = make_rows(4)
    rows[2]["Product"] = "NO_SUCH_PRODUCT"
    sheet = write_sheet(tmp_path / "bad.csv", rows)
    env = cli_env(ugiftme_sandbox, tmp_path / "state", BATCHER_LEDGER=pg_url)
    done = batcher(
        ["enqueue", str(sheet), "--batch", "bad", "--report-dir", str(tmp_path / "r")], env
    )
    assert done.returncode == ExitCode.USAGE
    assert "nothing was enqueued" in done.stderr
    assert "NO_SUCH_PRODUCT" in (tmp_path / "r" / "bad" / "validation.csv").read_text()
    assert "Traceback" not in done.stderr
    assert queue_json(env) == []


def test_a_worker_runs_a_queued_batch_to_reconciled_and_keeps_no_secret(
    tmp_path: Path, ugiftme_sandbox: Any, pg_url: str
) -> None:
    sheet = write_sheet(tmp_path / "night.csv", make_rows(12))
    reports = tmp_path / "reports"
    env = cli_env(ugiftme_sandbox, tmp_path / "state", BATCHER_LEDGER=pg_url)
    queued = batcher(
        ["enqueue", str(sheet), "--batch", "night", "--chunk-size", "5", "--json",
         "--report-dir", str(reports)],
        env,
    )  # fmt: skip
    assert queued.returncode == 0, queued.stderr
    item = json.loads(queued.stdout)
    assert item["state"] == "queued" and item["options"]["chunk_size"] == 5
    again = batcher(["enqueue", str(sheet), "--batch", "night"], env)
    assert again.returncode == ExitCode.USAGE
    assert f"already in the queue as item {item['id']}" in again.stderr

    ran = batcher(["worker", "--once", "--report-dir", str(reports)], env)
    assert ran.returncode == 0, ran.stderr
    assert sorted(orders_by_email(ugiftme_sandbox).values()) == [1] * 12
    assert read_summary(reports, "night")["reconciliation"]["verdict"] == "RECONCILED"
    [done] = queue_json(env)
    assert done["state"] == "done" and done["exit_code"] == 0 and done["attempts"] == 1
    assert done["summary"]["reconciliation"] == "RECONCILED"
    assert done["summary"]["by_state"]["succeeded"] == 12

    with psycopg.connect(pg_url) as db:
        stored = json.dumps(db.execute("SELECT * FROM batch_queue").fetchall(), default=str)
    assert ugiftme_sandbox.api_key not in stored
    assert ugiftme_sandbox.api_key not in ran.stdout + ran.stderr

    # the queue is empty now: a second worker finds nothing and exits
    idle = batcher(["worker", "--once"], env)
    assert idle.returncode == 0, idle.stderr
    assert "nothing due" in idle.stderr


def test_a_worker_refuses_a_sheet_changed_since_enqueue(
    tmp_path: Path, ugiftme_sandbox: Any, pg_url: str
) -> None:
    sheet = write_sheet(tmp_path / "moving.csv", make_rows(3))
    env = cli_env(ugiftme_sandbox, tmp_path / "state", BATCHER_LEDGER=pg_url)
    assert batcher(["enqueue", str(sheet), "--batch", "moving"], env).returncode == 0
    write_sheet(sheet, make_rows(4))
    ran = batcher(["worker", "--once", "--report-dir", str(tmp_path / "r")], env)
    assert ran.returncode == 0, ran.stderr
    [item] = queue_json(env)
    assert item["state"] == "failed"
    assert "changed since it was enqueued" in item["message"]
    assert not orders_by_email(ugiftme_sandbox)


def test_a_killed_workers_batch_is_resumed_by_another_exactly_once(
    tmp_path: Path, make_ugiftme_sandbox: Any, pg_url: str
) -> None:
    # 5 requests/s: the batch takes a few seconds, long enough to kill its worker mid-way
    sandbox = make_ugiftme_sandbox(rate_limit=5, rate_window_seconds=1, async_delay_seconds=0.2)
    rows = 60
    sheet = write_sheet(tmp_path / "kill.csv", make_rows(rows))
    reports = tmp_path / "reports"
    env = cli_env(sandbox, tmp_path / "state", BATCHER_LEDGER=pg_url)
    assert (
        batcher(["enqueue", str(sheet), "--batch", "kill", "--chunk-size", "3"], env).returncode
        == 0
    )

    first = start_batcher(
        ["worker", "--worker-id", "w1", "--heartbeat", "0.3", "--report-dir", str(reports)], env
    )
    try:
        assert wait_for(lambda: 0 < sum(orders_by_email(sandbox).values()) < rows // 2, 60)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    [item] = queue_json(env)
    assert item["state"] == "running" and item["worker"] == "w1"

    # w2 waits for w1's heartbeat to go stale (1 s), then takes the batch over
    started = time.monotonic()
    second = batcher(
        ["worker", "--worker-id", "w2", "--stale-after", "1", "--poll-interval", "0.2",
         "--max-batches", "1", "--report-dir", str(reports)],
        env,
    )  # fmt: skip
    assert second.returncode == 0, second.stderr
    assert time.monotonic() - started < 120
    assert "reclaimed from worker w1" in second.stderr
    counts = orders_by_email(sandbox)
    assert len(counts) == rows and set(counts.values()) == {1}, counts.most_common(3)
    [item] = queue_json(env)
    assert item["state"] == "done" and item["worker"] == "w2" and item["attempts"] == 2
    assert item["summary"]["reconciliation"] == "RECONCILED"


def test_sigterm_stops_a_worker_cleanly_and_its_batch_goes_back_to_the_queue(
    tmp_path: Path, make_ugiftme_sandbox: Any, pg_url: str
) -> None:
    sandbox = make_ugiftme_sandbox(rate_limit=5, rate_window_seconds=1, async_delay_seconds=0.2)
    rows = 40
    sheet = write_sheet(tmp_path / "term.csv", make_rows(rows))
    reports = tmp_path / "reports"
    env = cli_env(sandbox, tmp_path / "state", BATCHER_LEDGER=pg_url)
    assert (
        batcher(["enqueue", str(sheet), "--batch", "term", "--chunk-size", "3"], env).returncode
        == 0
    )
    proc = start_batcher(["worker", "--worker-id", "t1", "--report-dir", str(reports)], env)
    try:
        assert wait_for(lambda: 0 < sum(orders_by_email(sandbox).values()) < rows // 2, 60)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == ExitCode.INCOMPLETE, stderr
    assert "Traceback" not in stderr
    [item] = queue_json(env)
    assert item["state"] == "queued" and item["worker"] is None, item
    assert item["exit_code"] == ExitCode.INCOMPLETE

    again = batcher(["worker", "--once", "--report-dir", str(reports)], env)
    assert again.returncode == 0, again.stderr
    counts = orders_by_email(sandbox)
    assert len(counts) == rows and set(counts.values()) == {1}
    [item] = queue_json(env)
    assert item["state"] == "done" and item["attempts"] == 2


def test_run_takes_a_named_account_and_refuses_a_provider_that_is_not_its_own(
    tmp_path: Path, ugiftme_sandbox: Any
) -> None:
    toml = tmp_path / "batcher.toml"
    toml.write_text(
        f'[accounts.acme]\nprovider = "ugiftme"\nbase_url = "{ugiftme_sandbox.base_url}"\n'
        'api_key_env = "ACME_UGIFTME_KEY"\n'
    )
    env = cli_env(ugiftme_sandbox, tmp_path / "state", BATCHER_CONFIG=str(toml))
    env["ACME_UGIFTME_KEY"] = env.pop("UGIFTME_API_KEY")  # only the account's variable
    del env["UGIFTME_BASE_URL"]
    sheet = write_sheet(tmp_path / "acct.csv", make_rows(5))
    reports = str(tmp_path / "reports")
    ran = batcher(["run", str(sheet), "--account", "acme", "--yes", "--report-dir", reports], env)
    assert ran.returncode == 0, ran.stderr
    assert sorted(orders_by_email(ugiftme_sandbox).values()) == [1] * 5
    wrong = batcher(["run", str(sheet), "--account", "acme", "--provider", "gifq"], env)
    assert wrong.returncode == ExitCode.USAGE
    assert "does not match account 'acme' (ugiftme)" in wrong.stderr
    unknown = batcher(["run", str(sheet), "--account", "initech", "--yes"], env)
    assert unknown.returncode == ExitCode.CANNOT_START
    assert "no account named 'initech'" in unknown.stderr
