"""`batcher worker`: claim a queued batch, run it exactly as `batcher run` does, record
the outcome on the queue item; repeat.

A queue item (ledger/queue.py) holds the sheet's path and SHA-256, the batch
name, the provider or named account, and the run options (`QueuedRun`). The
worker refuses a sheet whose bytes changed since it was validated at enqueue,
resolves the account's key on its own machine, and calls `run_batch` (run.py)
with the ledger it claimed from: the batch lock, the ledger-first sends and the
recovery of a batch left half-done are the ones every run has.

Outcome -> item state:
- exit 0 and the batch reconciled: done;
- rows held (exit 5), or a run that ended but did not reconcile: held (a person decides);
- incomplete (exit 3: the provider stopped answering, a deadline), the provider
  unreachable or the batch locked by another run: queued again after a backoff,
  until `max_attempts` claims, then failed;
- stopped by this worker's SIGTERM: queued again at once (no attempt lost);
- anything else (the sheet changed, invalid rows, failed rows, no key for the
  account): failed, with the reason in the item's message.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from batcher.config import ProviderSettings
from batcher.core.errors import BatcherError, BatchLocked, ExitCode, ProviderUnavailable
from batcher.core.states import QueueState
from batcher.execute.check import SheetReading
from batcher.execute.run import BatchOptions, BatchResult, RunUI, run_batch
from batcher.ledger.queue import BatchQueue, QueueItem
from batcher.providers.base import ProviderOptions

#: a retry waits BACKOFF_SECONDS * 2**(attempts-1), at most MAX_BACKOFF_SECONDS
BACKOFF_SECONDS = 30.0
MAX_BACKOFF_SECONDS = 900.0
RECONCILED = "RECONCILED"  # reporting.verdicts.RECONCILED, as the run summary spells it


@dataclass(frozen=True)
class QueuedRun:
    """The run options a queue item carries: what `batcher run`'s flags would say.
    Plain JSON values only; never a key or secret (the key stays on the worker's machine)."""

    sheet_name: str | None = None
    mapping: dict[str, str] = field(default_factory=dict)
    allow_duplicates: bool = False
    skip_hidden: bool = False
    skip_invalid: bool = False
    order_fundable: bool = False
    retry_failed: bool = False
    same_sheet_ok: bool = False
    chunk_size: int | None = None
    max_rate: float | None = None
    deadline: float | None = None
    max_total: dict[str, str] = field(default_factory=dict)  # currency -> Decimal as text
    lookback_days: int | None = None
    mode: str = "orders"
    campaign: str | None = None
    expires_in_days: int | None = None
    base_url: str | None = None  # --base-url at enqueue; None: the account's or provider's

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> QueuedRun:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:  # written by a newer batcher: refuse rather than drop an option
            raise BatcherError(
                f"the queue item has run options this batcher does not know ({', '.join(unknown)})",
                hint="upgrade the worker to the version that enqueued it",
            )
        return cls(**data)

    def batch_options(self, item: QueueItem, template: BatchOptions) -> BatchOptions:
        """`template` (the worker's ledger, folders, batcher.toml limits and webhooks)
        with this item's sheet, batch and options: what `batcher run` would build."""
        limits = dict(template.max_total)
        sources = dict(template.limit_sources)
        for code, amount in self.max_total.items():
            limits[code] = Decimal(amount)
            sources[code] = "--max-total (at enqueue)"
        lookback = self.lookback_days or template.lookback_days
        return dataclasses.replace(
            template,
            sheet=Path(item.sheet_path),
            batch=item.batch,
            reading=SheetReading(
                self.sheet_name,
                dict(self.mapping),
                self.allow_duplicates,
                self.skip_hidden,
                template.reading.limits,
            ),
            skip_invalid=self.skip_invalid,
            order_fundable=self.order_fundable,
            max_rate=self.max_rate,
            max_total=limits,
            limit_sources=sources,
            run=dataclasses.replace(
                template.run,
                chunk_size=self.chunk_size,
                retry_failed=self.retry_failed,
                deadline_seconds=self.deadline,
            ),
            provider_options=self.provider_options(),
            allow_same_sheet=self.same_sheet_ok,
            lookback_days=lookback,
        )

    def provider_options(self) -> ProviderOptions:
        if self.mode == "payouts":
            return ProviderOptions("payouts", self.campaign, self.expires_in_days or 30)
        return ProviderOptions()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Outcome:
    """What became of one claimed item."""

    item: QueueItem
    state: QueueState
    exit_code: int | None
    message: str
    summary: dict[str, Any] = field(default_factory=dict)
    retry_in: float = 0.0
    recorded: bool = True  # False: another worker had reclaimed the item meanwhile


def backoff(attempts: int, base: float = BACKOFF_SECONDS) -> float:
    """The wait before the next claim of an item claimed `attempts` times."""
    return float(min(MAX_BACKOFF_SECONDS, base * 2 ** max(0, attempts - 1)))


def _brief(result: BatchResult) -> dict[str, Any]:
    """The run's summary in brief, for the queue item (the full one is summary.json)."""
    summary = result.summary
    rec = summary.get("reconciliation") or {}
    return {
        "run_id": summary.get("run_id"),
        "account_id": summary.get("account_id"),
        "by_state": summary.get("by_state", {}),
        "rows_total": summary.get("rows_total", 0),
        "totals_by_currency": summary.get("totals_by_currency", {}),
        "reconciliation": rec.get("verdict"),
        "stopped": summary.get("stopped"),
        "summary_file": str(result.report_dir / "summary.json"),
    }


def judge(
    item: QueueItem, result: BatchResult, *, stopped_by_us: bool, base: float = BACKOFF_SECONDS
) -> tuple[QueueState, float]:
    """The item's next state (and a retry's wait) from a run's result."""
    code = result.exit_code
    verdict = (result.summary.get("reconciliation") or {}).get("verdict")
    if code == ExitCode.OK:
        return (QueueState.DONE, 0.0) if verdict == RECONCILED else (QueueState.HELD, 0.0)
    if code == ExitCode.HELD:
        return QueueState.HELD, 0.0
    if code == ExitCode.INCOMPLETE:
        if stopped_by_us:
            return QueueState.QUEUED, 0.0
        return _retry(item, base)
    return QueueState.FAILED, 0.0


def _retry(item: QueueItem, base: float = BACKOFF_SECONDS) -> tuple[QueueState, float]:
    if item.attempts >= item.max_attempts:
        return QueueState.FAILED, 0.0
    return QueueState.QUEUED, backoff(item.attempts, base)


class Heartbeat:
    """Renews a claimed item's heartbeat on a connection of its own until stopped."""

    def __init__(self, queue_factory: Callable[[], BatchQueue], item: QueueItem, worker: str,
                 every: float) -> None:  # fmt: skip
        self._factory = queue_factory
        self._item = item
        self._worker = worker
        self._every = every
        self._done = threading.Event()
        self.lost = False  # the item was reclaimed by another worker
        self._thread = threading.Thread(target=self._beat, name="batcher-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=30)

    def _beat(self) -> None:
        queue: BatchQueue | None = None
        try:
            while not self._done.wait(self._every):
                try:
                    queue = queue or self._factory()
                    if not queue.heartbeat(self._item.id, self._worker):
                        self.lost = True
                        return
                except Exception:  # the server blinked: try again next beat
                    if queue is not None:
                        queue.close()
                    queue = None
        finally:
            if queue is not None:
                queue.close()


@dataclass(frozen=True)
class WorkerSetup:
    worker_id: str
    template: BatchOptions  # the worker's ledger, folders, batcher.toml limits and webhooks
    settings_for: Callable[[QueueItem, QueuedRun], ProviderSettings]
    stale_after: float = 60.0
    heartbeat_every: float = 5.0
    retry_backoff: float = BACKOFF_SECONDS  # the first retry's wait; doubled per claim


def run_item(
    queue: BatchQueue,
    item: QueueItem,
    setup: WorkerSetup,
    ui: RunUI,
    stop: threading.Event,
) -> Outcome:
    """Run one claimed item to an outcome and record it on the item."""
    outcome = _run_claimed(item, setup, ui, stop)
    recorded = queue.finish(
        item.id,
        setup.worker_id,
        outcome.state,
        exit_code=outcome.exit_code,
        summary=outcome.summary or None,
        message=outcome.message,
        retry_in=outcome.retry_in,
    )
    return dataclasses.replace(outcome, recorded=recorded)


def _run_claimed(item: QueueItem, setup: WorkerSetup, ui: RunUI, stop: threading.Event) -> Outcome:
    sheet = Path(item.sheet_path)
    try:
        found = file_sha256(sheet)
    except OSError as exc:
        return Outcome(
            item, QueueState.FAILED, int(ExitCode.USAGE),
            f"cannot read the sheet {sheet} on this worker ({exc.strerror}); nothing was sent",
        )  # fmt: skip
    if found != item.sheet_sha256:
        return Outcome(
            item, QueueState.FAILED, int(ExitCode.USAGE),
            f"the sheet {sheet} changed since it was enqueued (sha256 {item.sheet_sha256[:12]}… "
            f"then, {found[:12]}… now); nothing was sent: validate it and enqueue it again",
        )  # fmt: skip
    try:
        queued = QueuedRun.from_json(item.options)
        settings = setup.settings_for(item, queued)
        options = queued.batch_options(item, setup.template)
        with Heartbeat(lambda: BatchQueue(setup.template.ledger_location), item,
                       setup.worker_id, setup.heartbeat_every):  # fmt: skip
            result = run_batch(settings, options, ui, stop=stop)
    except (BatchLocked, ProviderUnavailable) as exc:
        state, wait = _retry(item, setup.retry_backoff)
        return Outcome(item, state, int(exc.exit_code), f"{exc}", retry_in=wait)
    except BatcherError as exc:
        return Outcome(item, QueueState.FAILED, int(exc.exit_code), str(exc))
    state, wait = judge(item, result, stopped_by_us=stop.is_set(), base=setup.retry_backoff)
    message = result.message or "done"
    if state == QueueState.HELD and result.exit_code == ExitCode.OK:
        verdict = (result.summary.get("reconciliation") or {}).get("verdict")
        message = f"the batch ran but did not reconcile ({verdict}): see its report"
    elif state == QueueState.QUEUED:
        message = f"{message}; queued again" + (f" in {wait:.0f}s" if wait else "")
    elif state == QueueState.FAILED and result.exit_code == ExitCode.INCOMPLETE:
        message = f"{message}; gave up after {item.attempts} attempt(s)"
    return Outcome(item, state, int(result.exit_code), message, _brief(result), wait)
