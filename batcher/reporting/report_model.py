"""What a reconciliation report is made of: the batch, its runs, its rows and the verdicts."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from batcher.ledger.events import StoredEvent
from batcher.reporting.failures import Failure, FailureTally, explain
from batcher.reporting.reconcile import OrderCheck, Reconciliation, RunWindow
from batcher.reporting.row_facts import RowFacts
from batcher.reporting.row_source import BatchRows


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    started_at: datetime
    finished_at: datetime | None
    exit_code: int | None
    window: RunWindow
    available_after: Mapping[str, Decimal] | None


@dataclass(frozen=True)
class Failures:
    """The rows that need action, explained; iterable as often as needed (each time
    their rows are read again, a page at a time), with their counts known up front."""

    rows: BatchRows
    tally: FailureTally
    top_ups: Mapping[str, str]

    def __iter__(self) -> Iterator[Failure]:
        for row in self.rows.only(self.tally.keys):
            failure = explain(row, self.top_ups)
            if failure is not None:
                yield failure

    def next_steps(self) -> list[tuple[str, int]]:
        """The actions the rows needing a person call for, most rows first."""
        return self.tally.next_steps(self.top_ups)

    def waiting(self) -> list[tuple[str, int]]:
        """Why the outstanding rows wait (a rerun settles them), with how many rows each."""
        return sorted(self.tally.waiting.items())


@dataclass
class ReportModel:
    batch: str
    info: Mapping[str, Any]
    runs: Sequence[RunInfo]
    rows: BatchRows  # in the sheet (source order), then orders no longer in it
    facts: RowFacts  # the rows' counts and sums
    reconciliation: Reconciliation
    failures: Failures
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
