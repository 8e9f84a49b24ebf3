"""`batcher run --dry-run`: everything a run does before its first order, and nothing after.

It reads and validates the sheet, checks funds and spend limits, and plans the
chunks exactly as `run_batch` would, then throws the plan away. Planning writes to
the ledger (new rows, released retries, planned chunks), so it runs against a
private copy of the ledger; the real one is only read. A SQLite ledger is copied
whole by SQLite's online backup; from a PostgreSQL ledger, the tables planning
reads are copied into a scratch SQLite ledger in one read-only snapshot. (Running
the plan in a PostgreSQL transaction that is rolled back instead would hold the
ledger's write lock, and so stall every other run on the database, for as long as
the dry run talks to the provider.) Chunk keys are a pure
function of the pending rows (plan.py), so the keys listed here are the keys the
real run sends, provided nothing changes in between.
"""

from __future__ import annotations

import sqlite3
import tempfile
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from batcher.config import ProviderSettings
from batcher.core.models import Balance
from batcher.core.money import money_str
from batcher.core.states import RowState
from batcher.execute.check import check_sheet
from batcher.execute.rows import sheet_rows_from_validation
from batcher.execute.run import (
    BatchOptions,
    guardrail_refusal,
    record_batch,
)
from batcher.execute.runner import Runner
from batcher.intake.read import Sheet
from batcher.intake.validate import ValidationResult
from batcher.ledger.copy import PLANNING_TABLES
from batcher.ledger.lock import batch_lock
from batcher.ledger.store import ChunkRecord, Ledger, RowRecord, utc_now
from batcher.providers import connect
from batcher.providers.base import Provider
from batcher.reporting.outputs import write_json

PLAN_SCHEMA = "batcher.plan/1"
LEDGER_FILE = "ledger.sqlite"

#: chunk state in the ledger copy -> what the real run would do with it
_ACTIONS = {"unknown": "resend", "planned": "send", "accepted": "poll"}


@dataclass(frozen=True)
class DryRun:
    plan: dict[str, Any]  # the batcher.plan/1 document, also written to `path`
    path: Path
    sheet: Sheet  # as read, for showing the column mapping


def dry_run_batch(settings: ProviderSettings, options: BatchOptions) -> DryRun:
    """Plan `options` as a run would, send nothing, and write REPORT_DIR/BATCH/plan.json."""
    batch = options.batch_name
    provider = connect(settings, max_rate=options.max_rate, options=options.provider_options)
    try:
        account = provider.account()
        check = check_sheet(provider, options.sheet, options.reading)
        result = check.result
        document: dict[str, Any] = {
            "schema": PLAN_SCHEMA,
            "batch": batch,
            "provider": settings.provider,
            "account_id": account.account_id,
            "sheet": str(options.sheet),
            "sheet_sha256": result.sheet.sha256,
            "ledger": options.ledger_location.shown,
            "planned_at": utc_now(),
            "rows_read": result.rows_read,
            "invalid_rows": len(result.invalid_rows),
        }
        if result.invalid_rows and not options.skip_invalid:
            document.update(
                refusal="validation failed; the run would send nothing (fix the sheet or use "
                "--skip-invalid)",
                chunks=[],
                rows={"invalid": len(result.invalid_rows)},
                currencies={},
            )
        else:
            with tempfile.TemporaryDirectory(prefix="batcher-dryrun-") as scratch:
                copy = _ledger_copy(options, batch, Path(scratch))
                try:
                    document.update(_plan(copy, provider, settings, options, account.account_id,
                                          result, check.balances))  # fmt: skip
                finally:
                    copy.close()
    finally:
        provider.close()
    path = options.report_dir / batch / "plan.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, document)
    return DryRun(document, path, result.sheet)


def _ledger_copy(options: BatchOptions, batch: str, scratch: Path) -> Ledger:
    """A private SQLite copy of the ledger in `scratch`, taken under the batch lock."""
    location = options.ledger_location
    if location.path is None:  # PostgreSQL
        with batch_lock(options.state_dir, batch, location):
            source = Ledger(location)
            copy = Ledger.open(scratch)
            try:
                source.copy_into(copy, PLANNING_TABLES)
            finally:
                source.close()
        return copy
    if location.path.exists():
        with batch_lock(options.state_dir, batch, location):  # beside the ledger file
            src = sqlite3.connect(f"file:{location.path}?mode=ro", uri=True)
            dst = sqlite3.connect(scratch / LEDGER_FILE)
            try:
                src.backup(dst)  # consistent even while another batch's run writes
            finally:
                dst.close()
                src.close()
    return Ledger.open(scratch)


def _plan(
    ledger: Ledger,
    provider: Provider,
    settings: ProviderSettings,
    options: BatchOptions,
    account_id: str,
    result: ValidationResult,
    balances: dict[str, Balance],
) -> dict[str, Any]:
    batch = options.batch_name
    sheet = result.sheet
    # the ledger's default: a dry run plans a sheet another batch already ran
    record_batch(ledger, settings, options, account_id, sheet, allow_same_sheet=True)
    ledger.start_run(batch, "dry-run")
    runner = Runner(provider, ledger, batch, account_id, options.run)
    summary = runner.prepare(sheet_rows_from_validation(result))
    rows = {r.row_key: r for r in ledger.rows(batch, in_sheet_only=False)}
    # The real run resolves unknown chunks first, then submits planned ones in order.
    chunks = [
        _chunk_json(chunk, rows)
        for state in ("unknown", "planned", "accepted")
        for chunk in ledger.chunks(batch, [state])
    ]
    in_sheet = [r for r in rows.values() if r.in_sheet]
    return {
        "refusal": guardrail_refusal(summary, options.max_total, options.limit_sources),
        "chunks": chunks,
        "rows": _row_actions(in_sheet, chunks),
        "currencies": _currencies(chunks, balances, options.max_total),
    }


def _chunk_json(chunk: ChunkRecord, rows: dict[str, RowRecord]) -> dict[str, Any]:
    members = [rows[k] for k in chunk.row_keys]
    face = sum((r.face_value for r in members), Decimal(0))
    cost = sum((r.est_cost or r.face_value for r in members), Decimal(0))
    return {
        "key": chunk.chunk_key,
        "action": _ACTIONS[chunk.state],
        "currency": chunk.currency,
        "attempt": chunk.attempt,
        "rows": len(members),
        "source_rows": [r.source_row for r in members],
        "face_value": money_str(face, chunk.currency),
        "estimated_cost": money_str(cost, chunk.currency),
    }


def _row_actions(rows: list[RowRecord], chunks: list[dict[str, Any]]) -> dict[str, int]:
    """Every row of the sheet, by what the run would do with it."""
    counts = {"send": 0, "retry": 0, "resend": 0, "poll": 0, "done": 0, "held": 0, "invalid": 0}
    for chunk in chunks:
        action = chunk["action"]
        if action == "send" and chunk["attempt"] > 1:
            action = "retry"  # a failed row tried again under a new attempt
        counts[action] += chunk["rows"]
    for row in rows:
        if row.state in (RowState.SUCCEEDED, RowState.SKIPPED):
            counts["done"] += 1
        elif row.state in (RowState.FAILED, RowState.HELD):
            counts["held"] += 1  # needs --retry-failed, --release-held or a change
        elif row.state == RowState.INVALID:
            counts["invalid"] += 1
    return counts


def _currencies(
    chunks: list[dict[str, Any]], balances: dict[str, Balance], limits: dict[str, Decimal]
) -> dict[str, dict[str, Any]]:
    """Per currency: what the new sends cost, what the wallet holds, and the limit."""
    cost: dict[str, Decimal] = {}
    for chunk in chunks:
        if chunk["action"] in {"send", "resend"}:
            code = chunk["currency"]
            cost[code] = cost.get(code, Decimal(0)) + Decimal(chunk["estimated_cost"])
    out: dict[str, dict[str, Any]] = {}
    for code, spent in sorted(cost.items()):
        balance = balances.get(code)
        available = balance.available if balance is not None else None
        limit = limits.get(code)
        out[code] = {
            "estimated_cost": money_str(spent, code),
            "available": None if available is None else money_str(available, code),
            "funded": available is not None and spent <= available,
            "limit": None if limit is None else money_str(limit, code),
            "within_limit": limit is None or spent <= limit,
        }
    return out
