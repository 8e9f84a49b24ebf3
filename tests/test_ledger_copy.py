"""`batcher ledger copy`: SQLite -> PostgreSQL -> SQLite, every table, nothing lost or
doubled, and a batch that already exists at the target is never overwritten."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

from batcher.core.errors import ExitCode
from batcher.ledger.backend import connect
from batcher.ledger.events import WebhookEvents
from batcher.ledger.location import LedgerLocation, parse_ledger_url
from batcher.ledger.schema import TABLES
from batcher.ledger.store import Ledger, RowOutcome, SheetRow

ROOT = Path(__file__).resolve().parents[1]


def copy_cli(source: str, target: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batcher", "ledger", "copy", "--from", source, "--to", target],
        capture_output=True, text=True, cwd=ROOT, timeout=120, stdin=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith("BATCHER_")},
    )  # fmt: skip


def fill(ledger: Ledger, batch: str, n: int) -> None:
    ledger.ensure_batch(batch, provider="ugiftme", account_id="acct", source_path=f"{batch}.csv",
                        source_sha256=batch * 8)  # fmt: skip
    run_id = ledger.start_run(batch, "run")
    rows = [
        SheetRow(row_key=f"{batch}-k{i}", source_row=i + 2, reference=f"{batch}-R{i}",
                 content_hash="h", fields={"recipient_email": f"p{i}@x.com", "amount": "10.00"},
                 passthrough={"Cost centre": "ß-1 %"}, currency="GBP",
                 face_value=Decimal("10.00"), est_cost=Decimal("9.50"), valid=True)
        for i in range(n)
    ]  # fmt: skip
    ledger.sync_rows(batch, rows, retry_failed=False)
    ledger.save_plan(batch, [(f"{batch}-c1", "GBP", 1, [r.row_key for r in rows], b"\x00\xffraw")])
    ledger.mark_sending(batch, f"{batch}-c1")
    ledger.mark_accepted(batch, f"{batch}-c1", f"req-{batch}")
    outcomes = [RowOutcome(r.row_key, "succeeded", order_id=f"o-{r.row_key}", cost=Decimal("9.50"),
                           cost_currency="GBP") for r in rows]  # fmt: skip
    ledger.settle_chunk(batch, f"{batch}-c1", "succeeded", outcomes)
    ledger.finish_run(run_id, batch, 0, {"rows_total": n})


def contents(location: LedgerLocation) -> dict[str, list[tuple[Any, ...]]]:
    """Every table but meta, row by row, in a backend-neutral order and spelling."""
    db = connect(location)
    try:
        found = {}
        for table in TABLES[1:]:
            rows = [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r)
                    for r in db.execute(f"SELECT * FROM {table}")]  # fmt: skip
            found[table] = sorted(rows, key=repr)
        return found
    finally:
        db.close()


def test_a_ledger_moves_to_postgresql_and_back_without_losing_or_doubling_a_row(
    tmp_path: Path, pg_url: str, pg_cluster: Any
) -> None:
    sqlite_url = f"sqlite://{tmp_path / 'ledger.sqlite'}"
    original = Ledger(parse_ledger_url(sqlite_url))
    fill(original, "nightly", 7)
    fill(original, "weekly", 3)
    original.close()
    evidence = WebhookEvents(parse_ledger_url(sqlite_url))
    evidence.record("ugiftme", "d" * 64, event="order.succeeded", request_id="req-nightly",
                    status="completed", terminal=True, order_ids=["o-1"], payload="{}")  # fmt: skip
    evidence.record_rejected("ugiftme", "bad signature", "order.failed")
    evidence.close()
    before = contents(parse_ledger_url(sqlite_url))
    assert len(before["rows"]) == 10 and len(before["webhook_events"]) == 2 and before["events"]

    there = copy_cli(sqlite_url, pg_url)
    assert there.returncode == 0, there.stderr
    assert contents(parse_ledger_url(pg_url)) == before

    # new events continue after the copied ids; the copy is a working ledger
    moved = Ledger(parse_ledger_url(pg_url))
    assert [r.state for r in moved.rows("nightly")] == ["succeeded"] * 7
    moved.start_run("weekly", "status")
    ids = [e["id"] for e in moved.events("weekly")]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    moved.close()

    back_url = f"sqlite://{tmp_path / 'back' / 'ledger.sqlite'}"
    back = copy_cli(pg_url, back_url)
    assert back.returncode == 0, back.stderr
    assert contents(parse_ledger_url(back_url)) == contents(parse_ledger_url(pg_url))

    # copying again would double every batch: refused, naming them, and nothing changes
    again = copy_cli(sqlite_url, pg_url)
    assert again.returncode == ExitCode.CANNOT_START
    assert "already has batches 'nightly', 'weekly'; nothing was copied" in again.stderr
    other = pg_cluster.url(pg_cluster.fresh_database())
    partial = Ledger(parse_ledger_url(other))
    fill(partial, "weekly", 1)
    partial.close()
    snapshot = contents(parse_ledger_url(other))
    refused = copy_cli(sqlite_url, other)
    assert "already has batch 'weekly'" in refused.stderr
    assert contents(parse_ledger_url(other)) == snapshot
