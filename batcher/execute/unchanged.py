"""A rerun that changes nothing: prove it, skip the work, keep the last report.

The proof is the report stamp (`reporting/report_stamp.py`) written at the end of
the run that last wrote the report: the ledger's change stamp then, and the sheet
it synced (its bytes' sha256, the column mapping and how it was read). When the
ledger's change stamp is still the same, nothing has touched the batch since.

- If in addition the sheet is the same, every row is valid and every row is
  settled (succeeded or skipped), syncing it again would write nothing: the run
  neither builds the sheet's rows nor syncs them (for 100,000 rows, most of a
  rerun's time).
- If the run then sent nothing, its report would be the same too: it is kept, and
  summary.json points to it, with the row counts read from the ledger.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batcher.core.clock import utc_now
from batcher.core.states import RowState
from batcher.execute.check import SheetReading
from batcher.execute.runner import PlanSummary, RunListener, RunStats
from batcher.intake.read import Sheet
from batcher.ledger.store import Ledger
from batcher.reporting.outputs import write_json
from batcher.reporting.report_stamp import ReportStamp, write_stamp
from batcher.reporting.reports import kept_report

#: summary.json's figures that come from the rows; the stamp keeps them for a kept report
ROW_FIGURES = ("totals_by_currency", "paid_orders", "conflicts")
_SETTLED_FOR_GOOD = {RowState.SUCCEEDED, RowState.SKIPPED}


@dataclass(frozen=True)
class KeptReport:
    stamp: ReportStamp
    by_state: dict[str, int]  # the rows in the sheet, per state, from the ledger


def sheet_fingerprint(sheet: Sheet, reading: SheetReading) -> str:
    """The sheet as a run reads it: its bytes, its columns and the reading options."""
    text = json.dumps(
        [sheet.sha256, list(sheet.headers), sheet.columns, repr(reading)],
        ensure_ascii=False,
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def unchanged_report(ledger: Ledger, batch: str, report_dir: Path) -> KeptReport | None:
    """The last report, when every row is settled and the ledger is as that report saw it.
    None when the run must read its rows and write its outputs the usual way (the exit
    message of a run with failed or unfinished rows names them)."""
    by_state = ledger.count_by_state(batch)
    if any(n for state, n in by_state.items() if n and state not in _SETTLED_FOR_GOOD):
        return None
    stamp = kept_report(report_dir / batch, ledger.change_stamp(batch))
    return None if stamp is None else KeptReport(stamp, by_state)


def sheet_already_synced(
    ledger: Ledger, batch: str, report_dir: Path, fingerprint: str, *, all_valid: bool
) -> bool:
    """Whether syncing this sheet would change nothing: the run that last wrote the report
    synced the same sheet, nothing touched the ledger since, and every row is still
    valid (a row turned invalid would get a key of its own) and settled for good."""
    kept = unchanged_report(ledger, batch, report_dir) if all_valid else None
    return kept is not None and kept.stamp.sheet == fingerprint


def sent_nothing(plan: PlanSummary, stats: RunStats) -> bool:
    """The run found nothing to send or settle, and asked the provider nothing."""
    return (
        plan.rows_to_send == plan.unknown_chunks == plan.accepted_chunks == 0
        and stats.submits == stats.polls == stats.lookups == stats.settled_by_event == 0
        and not stats.stopped
        and not stats.blocked_currencies
    )


def finish_kept(
    ledger: Ledger,
    summary: dict[str, Any],
    kept: KeptReport,
    out_dir: Path,
    listener: RunListener | None,
) -> None:
    """Keep the last report and point to it: summary.json takes the row counts from the
    ledger and the figures that need every row from the stamp."""
    stamp = kept.stamp
    summary.update(rows_total=sum(kept.by_state.values()), by_state=kept.by_state)
    summary.update(stamp.figures)
    summary["reconciliation"] = {**stamp.reconciliation, "kept_from_run": stamp.run_id}
    write_json(out_dir / "summary.json", summary)
    ledger.finish_run(summary["run_id"], summary["batch"], summary["exit_code"], summary)
    if listener is not None:
        listener.message(
            f"nothing changed since the report of run {stamp.run_id} ({stamp.generated_at}):"
            f" kept it, {stamp.reconciliation.get('verdict')}; workbook"
            f" {stamp.reconciliation.get('workbook')}"
        )


def stamp_report(out_dir: Path, ledger_stamp: str, summary: dict[str, Any], sheet: str) -> None:
    """After a report is written: which ledger state and sheet it shows."""
    figures = {k: summary[k] for k in ROW_FIGURES}
    write_stamp(
        out_dir,
        ReportStamp(
            ledger_stamp, summary["run_id"], utc_now(), summary["reconciliation"], figures, sheet
        ),
    )
