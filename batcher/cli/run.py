"""`batcher run` and `batcher status`: thin Click shells over `batcher.services`."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import FrameType
from typing import Any

import click

from batcher.cli.common import (
    echo_json,
    handle_errors,
    json_option,
    parse_mappings,
    payout_options,
    provider_mode,
    provider_options,
    report_dir_option,
    resolve_settings,
    sheet_options,
    state_dir_option,
)
from batcher.cli.render import render_summary
from batcher.cli.terminal import echo
from batcher.config import limits_from_config, load_file_config, parse_limit
from batcher.core.errors import ExitCode, UsageError
from batcher.core.models import Balance
from batcher.core.money import format_money
from batcher.execute.recovery import DEFAULT_LOOKBACK_DAYS
from batcher.execute.runner import PlanSummary, RunOptions
from batcher.services import BatchOptions, batch_status, run_batch


class ConsoleListener:
    """A progress bar on a TTY; plain timestamped log lines otherwise (cron, CI)."""

    def __init__(self, total: int = 0) -> None:
        self.tty = sys.stderr.isatty()
        self.total = total
        self.done = 0
        self._bar: Any = None
        self._last_logged = -1

    def start(self, total: int) -> None:
        self.total = total
        if self.tty and total:
            self._bar = click.progressbar(length=total, label="ordering", file=sys.stderr)
            self._bar.__enter__()

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None

    def message(self, text: str) -> None:
        if self._bar is not None:
            echo("", err=True)
        log(text)

    def advance(self, rows_settled: int) -> None:
        self.done += rows_settled
        if self._bar is not None:
            self._bar.update(rows_settled)
            return
        # Without a TTY, one line per ~10% keeps cron logs readable.
        step = max(1, self.total // 10) if self.total else 1
        if self.done // step != self._last_logged or self.done >= self.total:
            self._last_logged = self.done // step
            log(f"settled {self.done}/{self.total} rows")


def log(text: str) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    echo(f"{stamp} {text}", err=True)


class ConsoleUI:
    def __init__(self, assume_yes: bool) -> None:
        self.assume_yes = assume_yes
        self.listener = ConsoleListener()

    def validation_failed(self, result: Any, report_path: Path | None) -> None:
        echo(render_summary(result.sheet, result, report_path or Path("-")), err=True)
        echo(
            "nothing was sent: fix the sheet, or rerun with --skip-invalid to order the valid rows",
            err=True,
        )

    def show_plan(self, plan: PlanSummary, balances: dict[str, Balance]) -> None:
        echo(
            f"plan: {plan.rows_total} rows in the sheet, {plan.rows_to_send} to order in "
            f"{plan.new_chunks} chunk(s); {plan.unknown_chunks} unresolved and "
            f"{plan.accepted_chunks} accepted chunk(s) from earlier runs"
        )
        currencies = sorted(set(plan.cost_by_currency) | set(balances))
        for currency in currencies:
            cost = plan.cost_by_currency.get(currency, Decimal(0))
            face = plan.face_by_currency.get(currency, Decimal(0))
            balance = balances.get(currency)
            available = format_money(balance.available, currency) if balance else "no wallet"
            echo(
                f"  {currency}: face {format_money(face, currency)}, "
                f"cost {format_money(cost, currency)}, available {available}"
            )
        self.listener.start(plan.rows_to_send)

    def confirm(self, plan: PlanSummary) -> bool:
        if self.assume_yes or not sys.stdin.isatty() or plan.rows_to_send == 0:
            return True
        self.listener.stop()
        answer = click.confirm("send these orders?", default=False)
        self.listener.start(plan.rows_to_send)
        return answer


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """Ctrl-C or SIGTERM: stop new sends, let the request in flight finish, exit 3."""
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        if not stop.is_set():
            log(f"received {signal.Signals(signum).name}: finishing the request in flight")
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


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


@click.command()
@click.argument("sheet", type=click.Path(path_type=Path))
@click.option("--batch", default=None, help="Batch name (default: the sheet's file stem).")
@provider_options
@sheet_options
@click.option(
    "--chunk-size", type=click.IntRange(1, 10_000), default=None, help="Items per bulk order."
)
@click.option("--skip-invalid", is_flag=True, help="Order the valid rows even if some are invalid.")
@click.option("--retry-failed", is_flag=True, help="Also retry permanently failed rows.")
@click.option(
    "--deadline", type=click.FloatRange(min=0), default=None, help="Stop after SECONDS (exit 3)."
)
@click.option(
    "--max-rate", type=click.FloatRange(min=0.01), default=None, help="Never exceed R requests/s."
)
@click.option("--max-total", multiple=True, help="CUR=AMOUNT spend guardrail (repeatable).")
@state_dir_option
@report_dir_option
@click.option("--yes", "assume_yes", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--same-sheet-ok",
    is_flag=True,
    help="Run a sheet another batch already ran (orders its rows a second time).",
)
@click.option(
    "--lookback-days",
    type=click.IntRange(1, 3650),
    default=DEFAULT_LOOKBACK_DAYS,
    show_default=True,
    help="How far back a new batch asks the provider for orders it already holds.",
)
@payout_options
@handle_errors
def run(
    sheet: Path,
    batch: str | None,
    provider: str,
    base_url: str | None,
    sheet_name: str | None,
    mapping: tuple[str, ...],
    allow_duplicates: bool,
    chunk_size: int | None,
    skip_invalid: bool,
    retry_failed: bool,
    deadline: float | None,
    max_rate: float | None,
    max_total: tuple[str, ...],
    state_dir: Path,
    report_dir: Path,
    assume_yes: bool,
    same_sheet_ok: bool,
    lookback_days: int,
    payouts: bool,
    campaign: str | None,
    expires_in_days: int | None,
) -> None:
    """Order every valid row of SHEET exactly once; safe to rerun."""
    limits = limits_from_config(load_file_config()).max_total
    limits.update(parse_max_total(max_total))
    settings = resolve_settings(provider, base_url)
    options = BatchOptions(
        sheet=sheet,
        batch=batch,
        sheet_name=sheet_name,
        mapping=parse_mappings(mapping),
        allow_duplicates=allow_duplicates,
        skip_invalid=skip_invalid,
        max_rate=max_rate,
        max_total=limits,
        state_dir=state_dir,
        report_dir=report_dir,
        run=RunOptions(chunk_size=chunk_size, retry_failed=retry_failed, deadline_seconds=deadline),
        provider_options=provider_mode(payouts, campaign, expires_in_days),
        allow_same_sheet=same_sheet_ok,
        lookback_days=lookback_days,
    )
    ui = ConsoleUI(assume_yes)
    with stop_on_signals() as stop:
        try:
            result = run_batch(settings, options, ui, stop=stop)
        finally:
            ui.listener.stop()
    summary = result.summary
    states = ", ".join(f"{k} {v}" for k, v in summary.get("by_state", {}).items() if v)
    echo(f"batch {summary['batch']}: {states or 'no rows'}")
    for currency, totals in summary.get("totals_by_currency", {}).items():
        echo(
            f"  {currency}: {totals['orders']} orders, face {totals['face_value']}, cost {totals['cost']}"
        )
    echo(f"summary: {result.report_dir / 'summary.json'}")
    if result.exit_code != ExitCode.OK and result.message:
        echo(f"batcher: {_exit_meaning(result.exit_code)}: {result.message}", err=True)
    sys.exit(int(result.exit_code))


def _exit_meaning(code: ExitCode) -> str:
    return {
        ExitCode.SOME_FAILED: "finished, some rows failed",
        ExitCode.USAGE: "not started",
        ExitCode.INCOMPLETE: "incomplete, rerun to continue",
        ExitCode.CANNOT_START: "cannot start",
    }.get(code, "done")


@click.command()
@click.argument("batch", required=False)
@state_dir_option
@json_option
@handle_errors
def status(batch: str | None, state_dir: Path, as_json: bool) -> None:
    """Row counts by state and the last runs, read from the ledger (no network)."""
    found = batch_status(state_dir, batch)
    if as_json:
        echo_json(found)
        return
    if batch is None:
        for listed in found["batches"]:
            states = ", ".join(f"{k} {v}" for k, v in listed["by_state"].items() if v)
            echo(f"{listed['batch']}  ({listed['provider']})  {states}")
        return
    info = found["batch"]
    echo(f"batch {batch} ({info['provider']}, account {info['account_id']})")
    echo(f"source {info['source_path']} sha256 {info['source_sha256'][:12]}…")
    for state, count in found["by_state"].items():
        if count:
            echo(f"  {state:<10} {count}")
    echo("runs:")
    for r in found["runs"]:
        echo(
            f"  {r['run_id']}  started {r['started_at']}  finished {r['finished_at'] or '-'}"
            f"  exit {r['exit_code'] if r['exit_code'] is not None else '-'}"
        )
