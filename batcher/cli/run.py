"""`batcher run` and `batcher status`: thin Click shells over `batcher.services`.

`run` logs one line per event on stderr (see logs.py), prints its result document
on stdout with --json (schema batcher.run/1; batcher.plan/1 with --dry-run), and
POSTs that document to --notify when it ends. Exit codes: docs/operator.md.
"""

from __future__ import annotations

import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import click

from batcher import __version__
from batcher.cli.common import (
    OptionGroup,
    config_file,
    echo_json,
    file_config,
    handle_errors,
    json_option,
    ledger_options,
    log_format_option,
    parse_mappings,
    payout_options,
    provider_mode,
    provider_options,
    read_limits,
    report_dir_option,
    resolve_ledger,
    resolve_settings_for,
    sheet_options,
)
from batcher.cli.logs import Log, library_warnings
from batcher.cli.progress import ConsoleListener
from batcher.cli.render import column_lines, render_summary
from batcher.cli.signals import StopSignals, stop_on_signals
from batcher.cli.terminal import echo
from batcher.config import ProviderSettings, limits_from_config, parse_limit, webhook_settings
from batcher.core.errors import BatcherError, ConfigError, ExitCode, UsageError
from batcher.core.models import Balance
from batcher.core.money import format_money
from batcher.execute.check import SheetReading
from batcher.execute.events import VALIDATE
from batcher.execute.recovery import DEFAULT_LOOKBACK_DAYS
from batcher.execute.runner import PlanSummary, RunOptions
from batcher.services import (
    BatchOptions,
    BatchResult,
    DryRun,
    batch_status,
    check_notify_url,
    dry_run_batch,
    host_of,
    ledger_lost,
    run_batch,
    send_notification,
    slack_payload,
)

RUN_SCHEMA = "batcher.run/1"
STATUS_SCHEMA = "batcher.status/1"  # every batch
BATCH_SCHEMA = "batcher.batch/1"  # `status BATCH`: one batch and its runs

#: exit code -> what it means for the operator, in words
EXIT_MEANINGS = {
    ExitCode.OK: "done",
    ExitCode.SOME_FAILED: "finished, some rows failed",
    ExitCode.USAGE: "nothing was sent",
    ExitCode.INCOMPLETE: "incomplete, rerun to continue",
    ExitCode.CANNOT_START: "cannot start",
    ExitCode.HELD: "finished, rows held as possible duplicates",
}

#: RunStats.stopped codes -> a sentence
_STOP_REASONS = {
    "provider_unavailable": "the provider stopped answering; the chunk in flight is recorded "
    "and the next run resolves it with the same key. Rerun when the provider is back",
    "deadline": "the --deadline was reached; rerun to continue",
    "interrupted": "stopped on request; rerun to continue, then `batcher report` reconciles",
}


class ConsoleUI:
    """The RunUI of the CLI: validation errors, the column mapping, the plan, the prompt."""

    def __init__(
        self, log: Log, listener: ConsoleListener, signals: StopSignals, *, assume_yes: bool
    ) -> None:
        self.log = log
        self.listener = listener
        self.signals = signals
        self.assume_yes = assume_yes

    def validation_failed(self, result: Any, report_path: Path | None) -> None:
        for line in render_summary(result.sheet, result, report_path or Path("-")).splitlines():
            self.log.info(line)
        self.log.error(
            "nothing was sent: fix the sheet, or rerun with --skip-invalid to order the valid rows"
        )

    def show_plan(self, plan: PlanSummary, balances: dict[str, Balance]) -> None:
        self.log.info(
            f"plan: {plan.rows_total} rows in the sheet, {plan.rows_to_send} to order in "
            f"{plan.new_chunks} chunk(s); {plan.unknown_chunks} unresolved and "
            f"{plan.accepted_chunks} accepted chunk(s) from earlier runs"
        )
        # Cost is per paying wallet; face value per card currency (they differ for
        # cross-currency orders, and a refused plan may hold no rows at all).
        for currency in sorted(plan.cost_by_currency):  # only what this run would spend
            balance = balances.get(currency)
            available = format_money(balance.available, currency) if balance else "no wallet"
            face = plan.face_by_currency.get(currency)
            face_text = f"face {format_money(face, currency)}, " if face is not None else ""
            self.log.info(
                f"  {currency} wallet: {face_text}"
                f"cost {format_money(plan.cost_by_currency[currency], currency)}, "
                f"available {available}"
            )

    def confirm(self, plan: PlanSummary) -> bool:
        # Without a TTY (cron) there is nobody to ask: the run goes ahead (documented).
        if self.assume_yes or not sys.stdin.isatty() or plan.rows_to_send == 0:
            return True
        self.signals.prompting = self.listener.paused = True
        try:
            return click.confirm("send these orders?", default=False, err=True)
        except click.Abort:
            echo("", err=True)
            return False
        finally:
            self.signals.prompting = self.listener.paused = False


def parse_max_total(values: tuple[str, ...]) -> dict[str, Decimal]:
    limits: dict[str, Decimal] = {}
    for value in values:
        currency, sep, amount = value.partition("=")
        if not sep:
            raise UsageError(
                f"--max-total {value[:40]!r} is not CUR=AMOUNT", hint="e.g. --max-total GBP=5000"
            )
        code, limit = parse_limit(currency, amount, "--max-total", UsageError)
        limits[code] = limit
    return limits


def spend_limits(
    config: dict[str, Any], flags: tuple[str, ...]
) -> tuple[dict[str, Decimal], dict[str, str]]:
    """batcher.toml's [limits.max_total], overridden per currency by --max-total; and
    where each came from, so a refusal names the right one."""
    path = config_file()
    limits = limits_from_config(config, path).max_total
    sources = {code: f"{path} [limits.max_total]" for code in limits}
    for code, limit in parse_max_total(flags).items():
        limits[code] = limit
        sources[code] = "--max-total"
    return limits, sources


def _account_option(func: Any) -> Any:
    return click.option(
        "--account",
        default=None,
        metavar="NAME",
        help="A named account of batcher.toml ([accounts.NAME]); its provider and URL apply.",
    )(func)


#: How a batch is run: the same options, the same words, on `run` and on `enqueue` (a
#: worker runs the queued batch with them).
run_options = OptionGroup(
    provider_options,
    _account_option,
    sheet_options,
    click.option(
        "--chunk-size", type=click.IntRange(1, 10_000), default=None, help="Items per bulk order."
    ),
    click.option(
        "--skip-invalid", is_flag=True, help="Order the valid rows even if some are invalid."
    ),
    click.option("--retry-failed", is_flag=True, help="Also retry permanently failed rows."),
    click.option(
        "--order-fundable",
        is_flag=True,
        help="If a wallet is short, order the rows it can pay for (in sheet order) and leave "
        "the rest.",
    ),
    click.option(
        "--deadline",
        type=click.FloatRange(min=0),
        default=None,
        help="Stop after SECONDS (exit 3).",
    ),
    click.option(
        "--max-rate",
        type=click.FloatRange(min=0.01),
        default=None,
        help="Never exceed R requests/s.",
    ),
    click.option("--max-total", multiple=True, help="CUR=AMOUNT spend guardrail (repeatable)."),
    click.option(
        "--same-sheet-ok",
        is_flag=True,
        help="Run a sheet another batch already ran (orders its rows a second time).",
    ),
    click.option(
        "--lookback-days",
        type=click.IntRange(1, 3650),
        default=DEFAULT_LOOKBACK_DAYS,
        show_default=True,
        help="How far back a new batch asks the provider for orders it already holds.",
    ),
)


@click.command()
@click.argument("sheet", type=click.Path(path_type=Path))
@click.option("--batch", default=None, help="Batch name (default: the sheet's file stem).")
@run_options
@click.option(
    "--release-held",
    "release_held",
    default=None,
    metavar="ROWS|all",
    help="Order held rows after all (possible duplicates, ambiguous provider matches): the "
    "sheet rows named, e.g. 7,12, or all.",
)
@ledger_options
@report_dir_option
@click.option("--yes", "assume_yes", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Validate, check funds and plan the exact chunks and keys; send nothing. "
    "Writes REPORT_DIR/BATCH/plan.json.",
)
@click.option(
    "--notify",
    "notify_url",
    default=None,
    metavar="URL",
    help="POST the run's JSON summary (Slack-compatible) here when it ends; also notify_url "
    "in batcher.toml.",
)
@click.option(
    "--ledger-lost",
    is_flag=True,
    help="Start even though this batch has reports but the ledger has no record of it.",
)
@log_format_option
@json_option
@payout_options
@handle_errors
def run(
    sheet: Path,
    batch: str | None,
    provider: str,
    base_url: str | None,
    account: str | None,
    sheet_name: str | None,
    mapping: tuple[str, ...],
    allow_duplicates: bool,
    skip_hidden: bool,
    chunk_size: int | None,
    skip_invalid: bool,
    retry_failed: bool,
    release_held: str | None,
    order_fundable: bool,
    deadline: float | None,
    max_rate: float | None,
    max_total: tuple[str, ...],
    state_dir: Path | None,
    ledger_url: str | None,
    report_dir: Path,
    assume_yes: bool,
    dry_run: bool,
    notify_url: str | None,
    ledger_lost: bool,
    log_format: str | None,
    as_json: bool,
    same_sheet_ok: bool,
    lookback_days: int,
    payouts: bool,
    campaign: str | None,
    expires_in_days: int | None,
) -> None:
    """Order every valid row of SHEET exactly once; safe to rerun."""
    config = file_config()
    notify = _notify_target(notify_url, config)
    live = log_format is None and sys.stderr.isatty()
    log = Log(log_format or ("plain" if live else "text"))
    options: BatchOptions | None = None
    try:
        limits, sources = spend_limits(config, max_total)
        parsed_map = parse_mappings(mapping)
        folder, location = resolve_ledger(state_dir, ledger_url)
        options = BatchOptions(
            sheet=sheet,
            batch=batch,
            reading=SheetReading(
                sheet_name, parsed_map, allow_duplicates, skip_hidden, read_limits()
            ),
            skip_invalid=skip_invalid,
            order_fundable=order_fundable,
            max_rate=max_rate,
            max_total=limits,
            state_dir=folder,
            ledger=location,
            report_dir=report_dir,
            run=RunOptions(
                chunk_size=chunk_size,
                retry_failed=retry_failed,
                deadline_seconds=deadline,
                release_held=parse_release_held(release_held),
            ),
            provider_options=provider_mode(payouts, campaign, expires_in_days),
            limit_sources=sources,
            webhooks=webhook_settings(config),
            allow_same_sheet=same_sheet_ok,
            lookback_days=lookback_days,
        )
        log.bind(batch=options.batch_name)
        settings = resolve_settings_for(provider, base_url, account)
        log.info(
            f"batcher {__version__} {'dry run' if dry_run else 'run'} starting: sheet {sheet}, "
            f"provider {settings.provider}, ledger {location.shown}, reports "
            f"{(report_dir / options.batch_name).absolute()}"
        )
        _refuse_lost_ledger(options, allow=ledger_lost)
        if dry_run:
            planned = dry_run_batch(settings, options)
            _print_plan(log, planned, parsed_map)
            if as_json:
                echo_json(planned.plan)
            sys.exit(int(ExitCode.USAGE if planned.plan.get("refusal") else ExitCode.OK))
        result = _run(log, settings, options, live=live, assume_yes=assume_yes)
    except BatcherError as exc:
        # a log line like every other, so cron logs stay parseable to the last line
        meaning = EXIT_MEANINGS.get(exc.exit_code, "cannot start")
        log.error(f"exit {int(exc.exit_code)}: {meaning}: {exc}")
        if notify is not None:
            _notify(log, notify, _failure_document(options, exc), secrets=())
        sys.exit(int(exc.exit_code))
    document = run_document(result, options)
    _print_result(log, result)
    if as_json:
        echo_json(document)
    if notify is not None:
        _notify(log, notify, document, secrets=(settings.api_key.get_secret_value(),))
    sys.exit(int(result.exit_code))


def _run(
    log: Log, settings: ProviderSettings, options: BatchOptions, *, live: bool, assume_yes: bool
) -> BatchResult:
    listener = ConsoleListener(log, live=live, mapping=options.reading.mapping)
    listener.phase(VALIDATE, 0)
    with stop_on_signals(log) as signals, library_warnings(log):
        ui = ConsoleUI(log, listener, signals, assume_yes=assume_yes)
        try:
            return run_batch(settings, options, ui, stop=signals.stop)
        finally:
            listener.stop()


def _notify_target(flag: str | None, config: dict[str, Any]) -> str | None:
    url = flag or config.get("notify_url")
    if url is None:
        return None
    if not isinstance(url, str):
        raise ConfigError("batcher.toml: notify_url must be a URL (a string)")
    return check_notify_url(url)


def parse_release_held(value: str | None) -> frozenset[int] | None:
    """--release-held: 'all' (None: every held row) or sheet row numbers, '7,12'."""
    if value is None:
        return frozenset()
    if value.strip().lower() == "all":
        return None
    try:
        rows = frozenset(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        rows = frozenset()
    if not rows or min(rows) < 1:
        raise UsageError(
            f"--release-held takes sheet row numbers (e.g. 7,12) or all, not {value!r}"
        )
    return rows


def _refuse_lost_ledger(options: BatchOptions, *, allow: bool) -> None:
    batch = options.batch_name
    if allow or not ledger_lost(
        options.state_dir, options.report_dir, batch, options.ledger_location
    ):
        return
    raise ConfigError(
        f"batch {batch!r} has reports in {options.report_dir / batch} but the ledger "
        f"{options.ledger_location.shown} has no record of it: the ledger was moved or "
        "lost, or this is the wrong --state-dir; nothing was sent",
        hint="point --state-dir (or BATCHER_STATE_DIR) at the right ledger, or pass "
        "--ledger-lost to start the batch from its sheet again",
    )


def stop_sentence(result: BatchResult) -> str:
    """The run's message in words: a stop code becomes what happened and what to do."""
    stopped = result.summary.get("stopped")
    if stopped not in _STOP_REASONS:
        return result.message
    sentence = _STOP_REASONS[stopped]
    # The run's own message adds the counts and where the rows are; its stop code is
    # already said in words.
    detail = result.message.replace(f"stopped ({stopped}); ", "").replace(
        f"stopped ({stopped})", ""
    )
    return f"{sentence}; {detail}" if detail and detail != stopped else sentence


#: every key of batcher.run/1, for runs that stop before some of them exist (a sheet
#: that fails validation has no run id; a run that cannot start has no counts)
_RUN_DEFAULTS: dict[str, Any] = {
    "schema": RUN_SCHEMA,
    "batch": None,
    "run_id": None,
    "provider": None,
    "account_id": None,
    "exit_code": None,
    "outcome": None,
    "message": "",
    "by_state": {},
    "rows_total": 0,
    "totals_by_currency": {},
    "reconciliation": None,
    "plan": None,
    "requests": None,
    "recovery": None,
    "stopped": None,
    "started_at": None,
    "finished_at": None,
    "summary_file": None,
    "ledger": None,
}


def run_document(result: BatchResult, options: BatchOptions | None) -> dict[str, Any]:
    """batcher.run/1: the summary (counts by state, totals per currency, verdicts) plus
    where it was written and what the exit code means."""
    summary = result.summary
    return {
        **_RUN_DEFAULTS,
        **summary,
        "outcome": EXIT_MEANINGS.get(result.exit_code, "done"),
        "message": stop_sentence(result) if result.exit_code != ExitCode.OK else "",
        "reconciliation": summary.get("reconciliation"),
        "summary_file": str(result.report_dir / "summary.json"),
        "ledger": options.ledger_location.shown if options else None,
    }


def _failure_document(options: BatchOptions | None, exc: BatcherError) -> dict[str, Any]:
    return {
        **_RUN_DEFAULTS,
        "batch": options.batch_name if options else None,
        "exit_code": int(exc.exit_code),
        "outcome": EXIT_MEANINGS.get(exc.exit_code, "cannot start"),
        "message": str(exc),
        "ledger": options.ledger_location.shown if options else None,
    }


def _print_result(log: Log, result: BatchResult) -> None:
    summary = result.summary
    states = ", ".join(f"{k} {v}" for k, v in summary.get("by_state", {}).items() if v)
    log.info(f"batch {summary['batch']}: {states or 'no rows'}")
    paid = summary.get("paid_orders") or {}
    if paid.get("earlier_sheets"):
        log.info(
            f"  paid orders {paid['total']}: {paid['in_sheet']} in this sheet, "
            f"{paid['earlier_sheets']} from earlier sheets of this batch"
        )
    for currency, totals in summary.get("totals_by_currency", {}).items():
        face = format_money(Decimal(totals["face_value"]), currency)
        cost = format_money(Decimal(totals["cost"]), currency)
        log.info(f"  {currency}: {totals['orders']} orders, face {face}, cost {cost}")
    log.info(f"summary: {result.report_dir / 'summary.json'}")
    if result.exit_code == ExitCode.OK:
        log.info(f"exit 0: {EXIT_MEANINGS[ExitCode.OK]}")
        return
    meaning = EXIT_MEANINGS.get(result.exit_code, "done")
    log.error(f"exit {int(result.exit_code)}: {meaning}: {stop_sentence(result)}")


def _print_plan(log: Log, planned: DryRun, mapping: dict[str, str]) -> None:
    plan = planned.plan
    for level, text in column_lines(planned.sheet, mapping):
        log.write(level, text)
    rows = plan.get("rows", {})
    log.info(
        "dry run: would send {send}, retry {retry}, resend {resend} (same keys), poll {poll}; "
        "already done {done}, held {held} (--retry-failed or --release-held), invalid {invalid}".format(
            **{k: rows.get(k, 0) for k in _ROW_ACTIONS}
        )
    )
    for chunk in plan.get("chunks", []):
        log.info(
            f"  {chunk['action']:<6} chunk {chunk['key']}  {chunk['rows']} rows  "
            f"{format_money(Decimal(chunk['estimated_cost']), chunk['currency'])}"
        )
    for currency, info in plan.get("currencies", {}).items():
        available = info["available"]
        funds = "funded" if info["funded"] else f"NOT funded (available {available})"
        limit = "" if info["within_limit"] else f", over the limit of {info['limit']}"
        log.info(f"  {currency}: cost {info['estimated_cost']}, {funds}{limit}")
    if plan.get("refusal"):
        log.error(f"the run would refuse: {plan['refusal']}")
    log.info(f"plan: {planned.path}")


_ROW_ACTIONS = ("send", "retry", "resend", "poll", "done", "held", "invalid")


def _notify(log: Log, url: str, document: dict[str, Any], *, secrets: tuple[str, ...]) -> None:
    batch = document.get("batch") or "-"
    code = document.get("exit_code")
    headline = f"batcher {batch}: exit {code} ({document.get('outcome')})"
    lines = [f"{k}: {v}" for k, v in (document.get("by_state") or {}).items() if v]
    lines += [
        f"{cur}: {t['orders']} orders, face {t['face_value']}, cost {t['cost']}"
        for cur, t in (document.get("totals_by_currency") or {}).items()
    ]
    if document.get("message"):
        lines.append(str(document["message"]))
    payload = slack_payload(document, headline, lines)
    delivery = send_notification(url, payload, secrets=secrets)
    if delivery.delivered:
        log.info(f"notified {host_of(url)} ({delivery.detail})")
    else:
        log.warning(
            f"could not notify {host_of(url)} after {delivery.attempts} attempt(s) "
            f"({delivery.detail}); the exit code is unchanged"
        )


@click.command()
@click.argument("batch", required=False)
@ledger_options
@json_option
@handle_errors
def status(
    batch: str | None, state_dir: Path | None, ledger_url: str | None, as_json: bool
) -> None:
    """Row counts by state and the last runs, read from the ledger (no network)."""
    folder, location = resolve_ledger(state_dir, ledger_url)
    found = batch_status(folder, batch, location)
    if as_json:
        echo_json(found, STATUS_SCHEMA if batch is None else BATCH_SCHEMA)
        return
    if batch is None:
        for listed in found["batches"]:
            states = ", ".join(f"{k} {v}" for k, v in listed["by_state"].items() if v)
            last = listed["last_run"] or {}
            echo(
                f"{listed['batch']}  ({listed['provider']})  {listed['outcome']}  "
                f"updated {listed['updated_at']}  last exit "
                f"{last.get('exit_code', '-') if last.get('exit_code') is not None else '-'}"
            )
            echo(f"    {states or 'no rows'}{_totals_text(listed['totals_by_currency'])}")
        return
    info = found["batch"]
    echo(f"batch {batch} ({info['provider']}, account {info['account_id']}): {found['outcome']}")
    echo(f"source {info['source_path']} sha256 {info['source_sha256'][:12]}…")
    echo(f"created {info['created_at']}  updated {info['updated_at']}")
    for state, count in found["by_state"].items():
        if count:
            echo(f"  {state:<10} {count}")
    for currency, totals in found["totals_by_currency"].items():
        echo(
            f"  {currency}: {totals['orders']} orders, face "
            f"{format_money(Decimal(totals['face_value']), currency)}, cost "
            f"{format_money(Decimal(totals['cost']), currency)}"
        )
    paid = found["paid_orders"]
    if paid["earlier_sheets"]:
        echo(
            f"  paid orders {paid['total']}: {paid['in_sheet']} in this sheet, "
            f"{paid['earlier_sheets']} from earlier sheets of this batch"
        )
    echo("runs:")
    for r in found["runs"]:
        echo(
            f"  {r['run_id']}  started {r['started_at']}  finished {r['finished_at'] or '-'}"
            f"  exit {r['exit_code'] if r['exit_code'] is not None else '-'}"
        )


def _totals_text(totals: dict[str, dict[str, Any]]) -> str:
    parts = [
        f"{c} {format_money(Decimal(t['face_value']), c)} ({t['orders']} orders)"
        for c, t in totals.items()
    ]
    return "; " + ", ".join(parts) if parts else ""
