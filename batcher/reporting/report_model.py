"""What a reconciliation report is made of: the batch, its runs, its rows and the verdicts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from batcher.ledger.events import StoredEvent
from batcher.ledger.store import RowRecord
from batcher.reporting.failures import Failure
from batcher.reporting.reconcile import OrderCheck, Reconciliation, RunWindow


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    started_at: datetime
    finished_at: datetime | None
    exit_code: int | None
    window: RunWindow
    available_after: Mapping[str, Decimal] | None


@dataclass
class ReportModel:
    batch: str
    info: Mapping[str, Any]
    runs: Sequence[RunInfo]
    rows: Sequence[RowRecord]  # in the sheet (source order), then orders no longer in it
    reconciliation: Reconciliation
    failures: Sequence[Failure]
    generated_at: datetime
    passthrough: Sequence[str] = field(default_factory=list)
    #: webhook events for order requests no batch in this ledger sent, received since
    #: the batch's first run (shown on the Orphans sheet; they move no money themselves)
    orphan_events: Sequence[StoredEvent] = ()

    @property
    def latest_run(self) -> RunInfo | None:
        return self.runs[-1] if self.runs else None

    @property
    def checks(self) -> Mapping[str, OrderCheck]:
        return self.reconciliation.checks
