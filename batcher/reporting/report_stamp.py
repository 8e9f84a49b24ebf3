"""Which ledger state a batch's report shows, kept beside it (`report_stamp.json`).

A rerun that sends nothing and finds the ledger exactly as the last report left it
(same `Ledger.change_stamp`) keeps that report instead of writing 100,000 rows
again: the stamp proves the report still shows the ledger as it is, and carries
the figures summary.json repeats from it. Any other writer of the report deletes
the stamp first, so a stamp never vouches for a report it did not see written.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from batcher.core.files import atomic_write

STAMP_NAME = "report_stamp.json"


@dataclass(frozen=True)
class ReportStamp:
    ledger_stamp: str
    run_id: str
    generated_at: str
    #: summary.json's "reconciliation" for that report (verdict, per currency, workbook)
    reconciliation: dict[str, Any]
    #: what summary.json takes from the rows: totals_by_currency, paid_orders, conflicts
    figures: dict[str, Any]
    #: the sheet that run synced (execute/unchanged.py: sheet_fingerprint)
    sheet: str = ""


def write_stamp(out_dir: Path, stamp: ReportStamp) -> None:
    with atomic_write(out_dir / STAMP_NAME) as tmp:
        tmp.write_text(json.dumps(asdict(stamp), sort_keys=True), encoding="utf-8")


def read_stamp(out_dir: Path) -> ReportStamp | None:
    try:
        data = json.loads((out_dir / STAMP_NAME).read_text(encoding="utf-8"))
        return ReportStamp(**data)
    except (OSError, ValueError, TypeError):
        return None  # missing or unreadable: the report is simply written again


def forget_stamp(out_dir: Path) -> None:
    (out_dir / STAMP_NAME).unlink(missing_ok=True)
