"""One `batcher run`, end to end: read → validate → ledger → plan → submit/poll → outputs.

This is the library entry point the CLI wraps; a Python caller can use it directly
with its own `RunUI`. It never prints: everything the operator sees goes through the UI.
"""

from __future__ import annotations

import dataclasses
import errno
import importlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from batcher.config import ProviderSettings, WebhookSettings
from batcher.core.clock import utc_now
from batcher.core.collector import collector_paused
from batcher.core.errors import BatcherError, ConfigError, ExitCode
from batcher.core.models import Balance, FxQuote
from batcher.core.money import format_money, money_str
from batcher.core.names import batch_name_from_stem, check_batch_name
from batcher.core.states import HELD_STATES, UNFINISHED_STATES, UNSETTLED_STATES
from batcher.execute.check import SheetReading, check_sheet
from batcher.execute.events import POLL, RECONCILE, SUBMIT, RunStart, emit
from batcher.execute.funds import FundsCheck, Need, check_funds, left_out_message
from batcher.execute.recovery import DEFAULT_LOOKBACK_DAYS, RecoveryStopped, before_planning
from batcher.execute.rows import iter_sheet_rows
from batcher.execute.runner import PlanSummary, RunListener, Runner, RunOptions, RunStats
from batcher.execute.unchanged import (
    KeptReport,
    finish_kept,
    sent_nothing,
    sheet_already_synced,
    sheet_fingerprint,
    stamp_report,
    unchanged_report,
)
from batcher.execute.webhook_feed import open_feed
from batcher.intake.read import Sheet
from batcher.intake.validate import ValidationResult
from batcher.ledger.location import LedgerLocation
from batcher.ledger.lock import batch_lock
from batcher.ledger.rate_slots import shared_rate_slots
from batcher.ledger.store import Ledger
from batcher.providers import connect
from batcher.providers.base import Provider, ProviderOptions
from batcher.reporting.early_rows import EARLY_ROWS, EarlyRows, combine, read_early
from batcher.reporting.outputs import (
    RowsCsvDraft,
    batch_counts,
    verdict_json,
    write_json,
    write_validation_csv,
)
from batcher.reporting.reports import FAILED_ROWS_NAME, ROWS_NAME, ReportResult
from batcher.reporting.row_facts import RowFacts
from batcher.reporting.row_source import BatchRows


@dataclass(frozen=True)
class BatchOptions:
    sheet: Path
    batch: str | None = None
    reading: SheetReading = field(default_factory=SheetReading)
    skip_invalid: bool = False
    max_rate: float | None = None
    max_total: dict[str, Decimal] = field(default_factory=dict)
    #: short funds: order the largest fundable part in sheet order instead of refusing
    order_fundable: bool = False
    state_dir: Path = Path(".batcher")
    #: --ledger: where the ledger lives (default: ledger.sqlite in state_dir)
    ledger: LedgerLocation | None = None
    report_dir: Path = Path("reports")
    run: RunOptions = field(default_factory=RunOptions)
    provider_options: ProviderOptions = field(default_factory=ProviderOptions)
    #: where each --max-total limit came from, for the refusal message (default: the flag)
    limit_sources: dict[str, str] = field(default_factory=dict)
    webhooks: WebhookSettings | None = None  # enabled: settle from events, poll as a fallback
    #: run a sheet whose bytes another batch of the account already ran
    allow_same_sheet: bool = False
    #: how far back a batch new to the ledger asks the provider for its orders
    lookback_days: int = DEFAULT_LOOKBACK_DAYS

    @property
    def ledger_location(self) -> LedgerLocation:
        return self.ledger or LedgerLocation.in_state_dir(self.state_dir)

    @property
    def batch_name(self) -> str:
        """--batch, checked; else the sheet's stem made safe as a folder name."""
        if self.batch is not None:
            return check_batch_name(self.batch)
        return batch_name_from_stem(self.sheet.stem)


def record_batch(
    ledger: Ledger,
    settings: ProviderSettings,
    options: BatchOptions,
    account_id: str,
    sheet: Sheet,
    *,
    allow_same_sheet: bool,
) -> None:
    """Record the batch and the sheet it reads, as a run and a dry run both do first."""
    ledger.ensure_batch(
        options.batch_name,
        provider=settings.provider,
        account_id=account_id,
        source_path=str(options.sheet),
        source_sha256=sheet.sha256,
        sheet_headers=list(sheet.headers),
        sheet_columns=dict(sheet.columns),
        allow_same_sheet=allow_same_sheet,
    )


class RunUI(Protocol):
    @property
    def listener(self) -> RunListener: ...

    def validation_failed(self, result: ValidationResult, report_path: Path | None) -> None: ...
    def show_plan(self, plan: PlanSummary, balances: dict[str, Balance]) -> None: ...
    def confirm(self, plan: PlanSummary) -> bool: ...


@dataclass
class BatchResult:
    exit_code: ExitCode
    summary: dict[str, Any]
    report_dir: Path
    message: str = ""


def exit_code_for(states: Mapping[str, int], stats: RunStats) -> ExitCode:
    """The exit code for the rows of the sheet counted by state (`RowFacts.state_counts`)."""
    if stats.stopped or stats.blocked_currencies or any(states[s] for s in UNFINISHED_STATES):
        return ExitCode.INCOMPLETE
    if any(states[s] for s in HELD_STATES):
        return ExitCode.HELD  # possible duplicates outrank failures: a person decides
    # Invalid rows only reach the ledger under --skip-invalid: the operator chose to
    # leave them out, so they do not turn a clean run into a failed one.
    if states["failed"]:
        return ExitCode.SOME_FAILED
    return ExitCode.OK


def run_batch(
    settings: ProviderSettings,
    options: BatchOptions,
    ui: RunUI,
    *,
    stop: threading.Event | None = None,
    connect_provider: Callable[..., Provider] = connect,
) -> BatchResult:
    stop = stop or threading.Event()
    batch = options.batch_name
    out_dir = options.report_dir / batch
    check_writable(out_dir, "report folder", "--report-dir")
    check_writable(options.state_dir, "state folder", "--state-dir or BATCHER_STATE_DIR")
    started_at = utc_now()
    # The stop flag reaches the provider too: its own waits end on Ctrl-C or SIGTERM.
    # On a PostgreSQL ledger every process on this key keeps to one request schedule.
    slots = shared_rate_slots(options.ledger_location)
    try:
        provider = connect_provider(
            settings,
            max_rate=options.max_rate,
            options=dataclasses.replace(options.provider_options, stop=stop, shared_pace=slots),
        )
    except BaseException:
        if slots is not None:
            slots.close()
        raise
    try:
        return _run_connected(provider, settings, options, ui, stop, batch, out_dir, started_at)
    finally:
        provider.close()
        if slots is not None:
            slots.close()


def _run_connected(
    provider: Provider,
    settings: ProviderSettings,
    options: BatchOptions,
    ui: RunUI,
    stop: threading.Event,
    batch: str,
    out_dir: Path,
    started_at: str,
) -> BatchResult:
    account = provider.account()
    check = check_sheet(provider, options.sheet, options.reading)
    result, balances, quotes = check.result, check.balances, check.quotes
    sheet = result.sheet
    emit(ui.listener, "sheet_read", sheet)
    if result.invalid_rows and not options.skip_invalid:
        out_dir.mkdir(parents=True, exist_ok=True)
        report_path = write_validation_outputs(out_dir, result)
        ui.validation_failed(result, report_path)
        summary = _summary_without_run(
            batch, settings, account.account_id, result, started_at, ExitCode.USAGE
        )
        earlier = _earlier_runs(options, batch)
        if earlier:  # the ledger's figures, this sheet's beside them
            invalid = len(result.invalid_rows)
            summary |= {"sheet_rows": {"read": result.rows_read, "invalid": invalid}, **earlier}
        write_json(out_dir / "summary.json", summary)
        return BatchResult(ExitCode.USAGE, summary, out_dir, "validation failed; nothing was sent")
    options.state_dir.mkdir(parents=True, exist_ok=True)
    with batch_lock(options.state_dir, batch, options.ledger_location) as lock:
        # A PostgreSQL lock dies with its session: if it goes, stop before the next send.
        lock.watch(stop)
        ledger = Ledger.open(options.state_dir, options.ledger_location)
        try:
            # A batch begun under an id the provider client used to derive keeps it,
            # and with it its chunk keys.
            known = ledger.batch_info(batch)
            former = set(account.extra.get("former_account_ids", "").split(","))
            account_id = account.account_id
            if known is not None and known["account_id"] in former - {""}:
                account_id = known["account_id"]
            return _run_locked(
                ledger, provider, settings, options, ui, stop, account_id,
                result, sheet, balances, started_at, quotes, lock_lost=lambda: lock.lost,
            )  # fmt: skip
        except RecoveryStopped:
            if lock.lost is None:
                raise
            # stopped by the lost lock, not on request
            raise RecoveryStopped(
                f"{lock.lost}; nothing was sent", hint="rerun to continue"
            ) from None
        finally:
            ledger.close()


def _run_locked(
    ledger: Ledger,
    provider: Provider,
    settings: ProviderSettings,
    options: BatchOptions,
    ui: RunUI,
    stop: threading.Event,
    account_id: str,
    result: ValidationResult,
    sheet: Any,
    balances: dict[str, Balance],
    started_at: str,
    quotes: tuple[FxQuote, ...] = (),
    lock_lost: Callable[[], str | None] = lambda: None,
) -> BatchResult:
    batch = options.batch_name
    synced = sheet_already_synced(
        ledger, batch, options.report_dir, sheet_fingerprint(sheet, options.reading),
        all_valid=not result.invalid_rows,
    )  # fmt: skip
    # Read a slice at a time by the sheet sync: a million rows never exist at once.
    sheet_rows = None if synced else iter_sheet_rows(result)
    record_batch(
        ledger, settings, options, account_id, sheet, allow_same_sheet=options.allow_same_sheet
    )
    run_id = ledger.start_run(batch, "run")
    emit(ui.listener, "run_started", RunStart(
        batch, run_id, str(options.sheet), sheet.sha256, settings.provider, account_id,
        options.ledger_location.shown,
    ))  # fmt: skip
    feed = open_feed(provider, options.ledger_location, options.webhooks, ui.listener.message)
    early = _EarlyRead(ledger, batch)
    runner = Runner(
        provider, ledger, batch, account_id, options.run,
        listener=_LastSendTold(ui.listener, early.start), stop=stop, events=feed,
    )  # fmt: skip
    funds = _FundsRule(balances, quotes, options.order_fundable)
    lookback = timedelta(days=options.lookback_days)
    plan = funds.in_paying_wallets(
        runner.prepare(
            sheet_rows,
            hold=funds.hold,
            recovery=lambda r: before_planning(r, lookback=lookback),
        )
    )
    ui.show_plan(plan, balances)

    if funds.check is not None:
        for note in funds.check.unverified:
            ui.listener.message(note.message)
        for wallet, why in funds.held_reasons().items():
            ledger.mark_pending_reason(batch, wallet, "insufficient_funds", why)
    refusal = funds.refusal() or guardrail_refusal(plan, options.max_total, options.limit_sources)
    if refusal is None and not ui.confirm(plan):
        refusal = "cancelled at the confirmation prompt; nothing was sent"
    if refusal is not None:
        runner.declined()  # a --release-held takes effect only in a confirmed run
        return _finish(ledger, run_id, settings, options, account_id, sheet, started_at,
                       runner.stats, plan, ExitCode.USAGE, refusal, provider=provider,
                       listener=ui.listener)  # fmt: skip

    emit(ui.listener, "phase", SUBMIT, plan.rows_to_send)
    emit(ui.listener, "phase", POLL, sum(plan.rows_by_state.get(s, 0) for s in UNSETTLED_STATES))
    _warm_report_imports()
    early.allowed = plan.rows_total <= EARLY_ROWS  # what it holds is bounded as planning's
    try:
        stats = runner.execute()
    except BatcherError as exc:
        # The provider went away mid-run: everything in flight is in the ledger.
        runner.stats.stopped = f"provider error: {exc}"
        stats = runner.stats
    except BaseException:
        early.abandon()  # interrupted hard: the early read is not left running
        raise
    try:
        lost = lock_lost()
        if lost is not None:
            # Another run may hold the batch now: nothing more was sent once this was seen.
            stats.stopped = f"{lost}; it stopped sending when it noticed"
        if feed is not None:
            feed.report_orphans(ui.listener.message)
        kept = (
            unchanged_report(ledger, batch, options.report_dir)
            if sent_nothing(plan, stats)
            else None
        )
        read_early = early.take() if kept is None else None
    except BaseException:
        early.abandon()  # the end will not read its rows: the early read is not left running
        raise
    if kept is not None:
        early.abandon()  # the last report stands: the rows are not read
        return _finish(ledger, run_id, settings, options, account_id, sheet, started_at,
                       stats, plan, ExitCode.OK, "", provider=provider,
                       balances_before=balances, listener=ui.listener, kept=kept)  # fmt: skip
    # The end of the run reads the batch's rows a page at a time (`BatchRows`) and keeps
    # their sums (`RowFacts`): a million rows held at once would be over 1.5 GB.
    rows, facts, rows_csv = read_batch(ledger, batch, options.report_dir / batch, read_early)
    code = exit_code_for(facts.state_counts, stats)
    message = exit_message(code, facts, stats, options.report_dir / batch)
    if funds.check is not None and funds.check.left_out and options.order_fundable:
        message = (
            f"{left_out_message(funds.check)}; {message}"
            if message
            else left_out_message(funds.check)
        )
    return _finish(ledger, run_id, settings, options, account_id, sheet, started_at,
                   stats, plan, code, message, provider=provider,
                   balances_before=balances, listener=ui.listener,
                   rows=rows, facts=facts, rows_csv=rows_csv)  # fmt: skip


#: what the run's end imports to write the workbook (openpyxl: about a tenth of a second)
REPORT_MODULES = ("batcher.reporting.workbook",)


def _warm_report_imports() -> None:
    """Import the workbook's modules on a side thread while the run sends: its main
    thread mostly waits on the provider then, and the run's end needs them. Not at
    start-up, where they would delay the first request."""

    def load() -> None:
        for name in REPORT_MODULES:
            try:
                importlib.import_module(name)
            except Exception:  # the run's end imports it again and says why
                return

    threading.Thread(target=load, name="batcher-report-imports", daemon=True).start()


class _FundsRule:
    """The run's side of the one funds rule: checks the rows about to be sent.

    Only pending rows count (a rerun does not pay again for rows already ordered),
    so on a fresh batch it sees exactly the rows `batcher validate` sees.
    """

    def __init__(
        self, balances: dict[str, Balance], quotes: tuple[FxQuote, ...], order_fundable: bool
    ) -> None:
        self.balances = balances
        self.quotes = quotes
        self.order_fundable = order_fundable
        self.check: FundsCheck | None = None

    def hold(self, pending: Iterable[Need]) -> Collection[str]:
        """`pending` (the rows about to be sent) is read once: a million are not held."""
        needs = list(pending)
        self.check = check_funds(needs, self.balances.values(), self.quotes)
        if self.check.funded:
            return ()
        if self.order_fundable:
            return {n.row_key for n in self.check.left_out}
        return {n.row_key for n in needs}  # refused: nothing is planned

    def in_paying_wallets(self, plan: PlanSummary) -> PlanSummary:
        """The plan's cost per paying wallet: what the wallets will be charged."""
        if self.check is None:
            return plan
        cost = self.check.needed if self.refusal() else self.check.fundable_cost
        return dataclasses.replace(plan, cost_by_currency=dict(sorted(cost.items())))

    def held_reasons(self) -> dict[str, str]:
        """Per paying wallet, why its held rows were not sent (shown on each row)."""
        if self.check is None or self.check.funded:
            return {}
        return {
            e.currency: (
                f"insufficient funds in the {e.currency} wallet: needed "
                f"{format_money(e.needed, e.currency)} for the rows to send, available "
                f"{format_money(e.available, e.currency)}; top up and rerun"
            )
            for e in self.check.errors
        }

    def refusal(self) -> str | None:
        if self.check is None or self.check.funded or self.order_fundable:
            return None
        reasons = "; ".join(e.message for e in self.check.errors)
        return (
            f"not funded: {reasons}; nothing was sent (top up and rerun, or use "
            "--order-fundable to order the rows the wallets can pay for, in sheet order)"
        )


def exit_message(code: ExitCode, facts: RowFacts, stats: RunStats, out_dir: Path) -> str:
    """What exit 1 and exit 3 tell the operator: the counts, why, and where the rows are."""
    if code not in (ExitCode.SOME_FAILED, ExitCode.INCOMPLETE, ExitCode.HELD):
        return ""
    states = facts.state_counts
    parts = []
    if code == ExitCode.INCOMPLETE:
        why = stats.stopped or "; ".join(stats.blocked_currencies.values()) or "rows left to do"
        parts.append(f"stopped ({why})")
        flying = sum(states[s] for s in ("sending", "unknown", "accepted"))
        unsent = states["pending"] + states["planned"]
        if flying:
            parts.append(f"{flying} row(s) in flight")
        if unsent:
            parts.append(f"{unsent} row(s) not sent yet")
        parts.append("rerun the same command to continue (nothing is ordered twice)")
    failed = states["failed"]
    if failed:
        top = ", ".join(f"{n} {c}" for c, n in facts.failed_reasons.most_common(3))
        parts.append(f"{failed} row(s) failed ({top})")
    if held := sum(states[s] for s in HELD_STATES):
        parts.append(
            f"{held} row(s) held, never sent (possible duplicates, or a reference another "
            "batch holds): each row's reason says how to release it (--release-held ROWS)"
        )
    parts.append(
        f"rows to fix: {out_dir / FAILED_ROWS_NAME}; every row's state and reason: the "
        "Failures and Outstanding sheets of the workbook"
    )
    return "; ".join(parts)


def guardrail_refusal(
    plan: PlanSummary, max_total: dict[str, Decimal], sources: dict[str, str] | None = None
) -> str | None:
    for currency, limit in sorted(max_total.items()):
        planned = plan.cost_by_currency.get(currency, Decimal(0))
        if planned > limit:
            source = (sources or {}).get(currency, "--max-total")
            return (
                f"the plan would spend {format_money(planned, currency)} in {currency}, over the "
                f"limit of {format_money(limit, currency)} set by {source}; nothing was sent"
            )
    return None


def _finish(
    ledger: Ledger,
    run_id: str,
    settings: ProviderSettings,
    options: BatchOptions,
    account_id: str,
    sheet: Any,
    started_at: str,
    stats: RunStats,
    plan: PlanSummary,
    code: ExitCode,
    message: str,
    provider: Provider | None = None,
    balances_before: dict[str, Balance] | None = None,
    listener: RunListener | None = None,
    rows: BatchRows | None = None,
    facts: RowFacts | None = None,
    rows_csv: RowsCsvDraft | None = None,
    kept: KeptReport | None = None,
) -> BatchResult:
    """Write the summary, rows.csv and the report. `rows` are the batch's rows as the
    ledger holds them now, read a page at a time, and `facts` their sums (both made
    here when not given, with `rows_csv`, rows.csv as they were read): the summary,
    rows.csv and the report share them, so the rows are summed once. `kept`
    (`unchanged_report`): nothing changed, keep the last report (its figures come
    from its stamp)."""
    batch = options.batch_name
    out_dir = options.report_dir / batch
    if kept is not None:
        rows, facts = BatchRows.from_rows(()), RowFacts()
    elif rows is None or facts is None or rows_csv is None:
        rows, facts, rows_csv = read_batch(ledger, batch, out_dir)
    # An interrupted run ends quickly: one balance read, no listings; `batcher report`
    # does the full reconciliation.
    interrupted = stats.stopped == "interrupted"
    balances_after = _balances_now(provider) if stats.submits else balances_before
    summary = {
        **_summary_head(batch, settings.provider, account_id, sheet),
        "run_id": run_id,
        **_run_figures(facts, stats, plan, _throttle_stats(provider)),
        **_summary_end(code, message, started_at),
    }
    # A reused batch name (a nightly file): every order the batch ever paid is counted.
    earlier = facts.earlier_orders
    summary["paid_orders"] = {
        "in_sheet": summary["by_state"].get("succeeded", 0),
        "earlier_sheets": earlier,
        "total": summary["by_state"].get("succeeded", 0) + earlier,
    }
    summary["balances_before"] = _balances_json(balances_before)
    summary["balances_after"] = _balances_json(balances_after)
    if kept is not None:
        finish_kept(ledger, summary, kept, out_dir, listener)
        return BatchResult(code, summary, out_dir, message)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "summary.json", summary)
    assert rows_csv is not None
    rows_csv.commit(out_dir / ROWS_NAME, rows.in_sheet, list(facts.sheet_passthrough))
    ledger.finish_run(run_id, batch, int(code), summary)
    if interrupted and listener is not None:
        listener.message(
            f"interrupted: a quick report from the ledger and balances; full reconciliation "
            f"skipped, run `batcher report {batch}` for it"
        )
    stamp = ledger.change_stamp(batch)  # the ledger as this report reads it
    report = _write_report(
        ledger, batch, provider, options, sheet, listener, rows, facts, quick=interrupted
    )
    if report is not None:
        # The verdict is known only once the report is written; summary.json carries it.
        summary["reconciliation"] = {
            **verdict_json(report.reconciliation),
            "by_currency": {c.currency: str(c.verdict) for c in report.reconciliation.currencies},
            "workbook": str(report.workbook),
        }
        write_json(out_dir / "summary.json", summary)
        if stamp is not None:
            stamp_report(out_dir, stamp, summary, sheet_fingerprint(sheet, options.reading))
        if report.archive is not None and (report.archive / "summary.json").exists():
            write_json(report.archive / "summary.json", summary)
    return BatchResult(code, summary, out_dir, message)


def read_batch(
    ledger: Ledger, batch: str, out_dir: Path, early: EarlyRows | None = None
) -> tuple[BatchRows, RowFacts, RowsCsvDraft]:
    """The end of a run's one read of every row, a page at a time: their sums, and
    rows.csv drafted as they go by. A million rows held at once would be over 1.5 GB.

    `early`: what the sheet gave each row, read and rendered while the run waited on
    the provider (`early_rows.read_early`, from the last send on). The sheet is
    synced only in `prepare`, before the first send, under the batch's lock, and
    sending and settling write none of it, so only what they write is read here
    (`early_rows.combine`); a row not read early, or whose key, place, content hash
    or pass-through cells differ from the early read's, is read whole. The rows, sums
    and lines are those of the ledger now either way (tests/test_early_rows.py)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    facts, rows_csv = RowFacts(), RowsCsvDraft(out_dir)
    # Tens of thousands of records and their cells, none in a cycle: the collector
    # would walk everything the run holds, again and again, for nothing.
    with collector_paused():
        if early is not None and early.batch == batch:
            end = combine(ledger, batch, early)
            rows = BatchRows.from_ledger(ledger, batch, read=(end.keys, end.in_sheet, end.records))
            for row, parts in zip(end.records, end.parts, strict=True):
                facts.add(row)
                rows_csv.add(row, parts)
            return rows, facts, rows_csv
        rows = BatchRows.from_ledger(ledger, batch)
        for row in rows:
            facts.add(row)
            rows_csv.add(row)
    return rows, facts, rows_csv


#: how long the early read sleeps every `EARLY_SLICE` rows while the run goes on, so
#: its polls are not kept waiting for the interpreter (`_EarlyRead._between`)
GIVE_WAY = 0.0002


class _EarlyRead:
    """`early_rows.read_early` of the run's batch on a thread of its own, started at the
    run's last send (`start`): the run then mostly waits on the provider.

    It reads through a connection of its own (SQLite only), never the runner's. A
    failure in it only means the end reads every row whole, as it did before."""

    def __init__(self, ledger: Ledger, batch: str) -> None:
        self._location, self._batch = ledger.location, batch
        #: set once the plan is known: a batch of up to `EARLY_ROWS` rows is read early
        self.allowed = False
        self._cancel = threading.Event()
        self._waited_for = threading.Event()
        self._thread: threading.Thread | None = None
        self._found: EarlyRows | None = None

    def start(self) -> None:
        if self._thread is not None or not self.allowed or self._location.backend != "sqlite":
            return
        self._thread = threading.Thread(target=self._read, name="batcher-early-read", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            self._found = read_early(self._location, self._batch, cancelled=self._between)
        except Exception:  # the end reads every row whole then
            self._found = None

    def _between(self) -> bool:
        """Between two slices of the early read: while the run goes on, give its threads
        the interpreter (a thread that wants it would otherwise wait for up to the 5 ms
        switch interval, at every poll); whether to stop."""
        if not self._waited_for.is_set():
            time.sleep(GIVE_WAY)
        return self._cancel.is_set()

    def take(self) -> EarlyRows | None:
        """What the early read found, once it is done (None: not started, or failed)."""
        if self._thread is None:
            return None
        self._waited_for.set()  # nothing else to let in: no more sleeps
        self._thread.join()
        return self._found

    def abandon(self) -> None:
        """Stop the early read (it looks every thousand rows) and wait for it."""
        self._cancel.set()
        if self._thread is not None:
            self._thread.join()


class _LastSendTold:
    """The run's listener, for the runner: as `listener`, and `then()` is called when
    the run's last request is sent (the runner's `sends_done` hook)."""

    def __init__(self, listener: RunListener, then: Callable[[], None]) -> None:
        self._listener = listener
        self._then = then

    def message(self, text: str) -> None:
        self._listener.message(text)

    def advance(self, rows_settled: int) -> None:
        self._listener.advance(rows_settled)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._listener, name)  # the listener's other hooks (`emit`)

    def sends_done(self) -> None:
        self._then()
        emit(self._listener, "sends_done")


def _write_report(
    ledger: Ledger,
    batch: str,
    provider: Provider | None,
    options: BatchOptions,
    sheet: Any,
    listener: RunListener | None,
    rows: BatchRows,
    facts: RowFacts,
    *,
    quick: bool = False,
) -> ReportResult | None:
    """The reconciliation workbook. Its failure never costs the run its summary or exit code.

    `quick` (an interrupted run) reconciles from the ledger and balances without
    listing the provider's orders, so stopping stays fast."""
    from batcher.reporting.reports import write_batch_report

    say = listener.message if listener is not None else (lambda text: None)
    emit(listener, "phase", RECONCILE, 0)
    try:
        result = write_batch_report(
            ledger, batch, provider, options.report_dir,
            sheet_rows=getattr(sheet, "row_count", None), fetch="quick" if quick else "auto", rows=rows, facts=facts,
            archive_as="run",
        )  # fmt: skip
    except Exception as exc:
        detail = exc.message if isinstance(exc, BatcherError) else type(exc).__name__
        say(f"the reconciliation report could not be written ({detail}); "
            f"run `batcher report {batch}` to retry")  # fmt: skip
        return None
    rec = result.reconciliation
    say(f"reconciliation: {rec.verdict} ({rec.reason}); workbook {result.workbook}")
    return result


def _balances_now(provider: Provider | None) -> dict[str, Balance] | None:
    if provider is None:
        return None
    try:
        return {b.currency: b for b in provider.balances()}
    except (BatcherError, OSError):
        return None  # the summary says "unknown" rather than failing the run's bookkeeping


def _balances_json(balances: dict[str, Balance] | None) -> dict[str, dict[str, str]] | None:
    if balances is None:
        return None
    return {
        c: {"balance": money_str(b.balance, c), "available": money_str(b.available, c)}
        for c, b in sorted(balances.items())
    }


def _throttle_stats(provider: Provider | None) -> dict[str, Any]:
    limiter = getattr(provider, "limiter", None)
    if limiter is None:
        return {}
    stats = limiter.stats()
    rate = stats.achieved_rate
    return {
        "http_requests": stats.requests,
        "http_429s": stats.throttled,
        "throttle_wait_seconds": round(stats.waited_seconds, 3),
        "advertised_limit": stats.limit,
        "achieved_request_rate": None if rate is None else round(rate, 3),
    }


def _summary_head(batch: str, provider: str, account_id: str, sheet: Any) -> dict[str, Any]:
    """What summary.json opens with, whether or not anything was sent."""
    return {
        "batch": batch,
        "provider": provider,
        "account_id": account_id,
        "source_file": str(sheet.source.path),
        "source_sha256": sheet.sha256,
    }


def _summary_end(code: ExitCode, message: str, started_at: str) -> dict[str, Any]:
    """What summary.json closes with: how the command ended, and when."""
    return {
        "message": message,
        "exit_code": int(code),
        "started_at": started_at,
        "finished_at": utc_now(),
    }


def _run_figures(
    facts: RowFacts, stats: RunStats, plan: PlanSummary, throttle: dict[str, Any]
) -> dict[str, Any]:
    """The rows, the plan and the requests of a run that went ahead. The totals are the
    sheet's rows' and the earlier sheets' orders: every order the batch ever paid."""
    submit_seconds = stats.submit_seconds
    submit_rate = stats.submits / submit_seconds if submit_seconds > 0 else None
    wall = max(0.0, stats.finished - stats.started)
    return {
        "rows_total": facts.rows_in_sheet,
        "by_state": dict(facts.state_counts),
        "totals_by_currency": facts.totals.as_json(),
        "conflicts": facts.conflicts,
        "plan": {
            "rows_to_send": plan.rows_to_send,
            "new_chunks": plan.new_chunks,
            "unknown_chunks": plan.unknown_chunks,
            "accepted_chunks": plan.accepted_chunks,
            "estimated_cost": {c: money_str(v, c) for c, v in plan.cost_by_currency.items()},
        },
        "requests": {
            "submits": stats.submits,
            "polls": stats.polls,
            "settled_by_event": stats.settled_by_event,
            "lookups": stats.lookups,
            "unknown_outcomes": stats.unknown_outcomes,
            "submit_phase_seconds": round(submit_seconds, 3),
            "submit_rate_per_second": None if submit_rate is None else round(submit_rate, 3),
            "run_seconds": round(wall, 3),
            **throttle,
        },
        "blocked_currencies": stats.blocked_currencies,
        "recovery": stats.recovery,
        "stopped": stats.stopped,
    }


def _earlier_runs(options: BatchOptions, batch: str) -> dict[str, Any]:
    """For a batch earlier runs sent (an edited sheet that no longer validates), what
    the ledger holds for it: summary.json replaces the last run's, and must not say
    that its paid orders are pending. Nothing for a new batch; no ledger is created."""
    location = options.ledger_location
    if location.path is not None and not location.path.exists():
        return {}
    ledger = Ledger.open(options.state_dir, location)
    try:
        if ledger.batch_info(batch) is None:
            return {}
        return batch_counts(ledger, batch)
    finally:
        ledger.close()


def _summary_without_run(
    batch: str,
    settings: ProviderSettings,
    account_id: str,
    result: ValidationResult,
    started_at: str,
    code: ExitCode,
) -> dict[str, Any]:
    invalid = len(result.invalid_rows)
    return {
        **_summary_head(batch, settings.provider, account_id, result.sheet),
        "rows_total": result.rows_read,
        "by_state": {"invalid": invalid, "pending": result.rows_read - invalid},
        "totals_by_currency": {},
        **_summary_end(
            code,
            "validation failed; nothing was sent (fix the sheet or use --skip-invalid)",
            started_at,
        ),
    }


#: below this much free space a run would likely die mid-write; refuse before sending
MIN_FREE_BYTES = 64 * 1024 * 1024


def check_writable(folder: Path, what: str, option: str) -> None:
    """Create `folder` and prove a file can be written there, before anything is sent.

    A run that orders cards and then cannot write its ledger or its report has
    lost the operator's evidence; this refuses such a run up front.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".batcher-write-probe-{os.getpid()}"
        with probe.open("wb") as fh:
            fh.write(b"\0" * 4096)
            fh.flush()
            os.fsync(fh.fileno())
        probe.unlink()
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ConfigError(
                f"the disk holding the {what} {folder} is full; nothing was sent",
                hint="free some space and rerun",
            ) from None
        raise ConfigError(
            f"cannot write to the {what} {folder} ({exc.strerror}); nothing was sent",
            hint=f"choose another folder with {option}",
        ) from None
    if free < MIN_FREE_BYTES:
        raise ConfigError(
            f"the disk holding the {what} {folder} is nearly full "
            f"({free // (1024 * 1024)} MiB free); nothing was sent",
            hint="free some space and rerun",
        )


def write_validation_outputs(out_dir: Path, result: ValidationResult) -> Path:
    return write_validation_csv(result, out_dir / "validation.csv")
