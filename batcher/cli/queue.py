"""`batcher enqueue`, `batcher worker` and `batcher queue`: the work queue of a shared
PostgreSQL ledger, as thin Click shells over `batcher.services` and
`batcher.execute.worker`.

Exit codes: enqueue as `validate` (0 queued; 2 invalid rows, nothing queued, or
a SQLite ledger; 4 cannot reach the provider or the ledger). worker: 0 when it
stopped because the queue was empty (--once) or --max-batches were run, 3 when
stopped by a signal.
"""

from __future__ import annotations

import os
import socket
import sys
import uuid
from pathlib import Path

import click

from batcher.cli.common import (
    echo_json,
    file_config,
    handle_errors,
    json_option,
    ledger_options,
    log_format_option,
    parse_mappings,
    payout_options,
    provider_mode,
    read_limits,
    report_dir_option,
    resolve_ledger,
    resolve_settings_for,
)
from batcher.cli.logs import Log, library_warnings
from batcher.cli.progress import ConsoleListener
from batcher.cli.render import render_summary
from batcher.cli.run import ConsoleUI, parse_max_total, run_options, spend_limits
from batcher.cli.signals import stop_on_signals
from batcher.cli.terminal import echo
from batcher.config import ProviderSettings, webhook_settings
from batcher.core.errors import ExitCode
from batcher.core.states import QueueState
from batcher.execute.check import SheetReading
from batcher.execute.run import BatchOptions
from batcher.execute.worker import QueuedRun, WorkerSetup, run_item
from batcher.ledger.queue import BatchQueue, QueueItem, queue_needs_postgresql
from batcher.services import enqueue_batch, queue_items

QUEUE_SCHEMA = "batcher.queue/1"
ITEM_SCHEMA = "batcher.queue_item/1"


@click.command()
@click.argument("sheet", type=click.Path(path_type=Path))
@click.option("--batch", required=True, help="Batch name (the worker runs it under this name).")
@run_options
@click.option(
    "--max-attempts",
    type=click.IntRange(1, 100),
    default=5,
    show_default=True,
    help="Claims before a batch that keeps stopping early (provider down) is marked failed.",
)
@ledger_options
@report_dir_option
@json_option
@payout_options
@handle_errors
def enqueue(
    sheet: Path,
    batch: str,
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
    order_fundable: bool,
    deadline: float | None,
    max_rate: float | None,
    max_total: tuple[str, ...],
    same_sheet_ok: bool,
    lookback_days: int,
    max_attempts: int,
    state_dir: Path | None,
    ledger_url: str | None,
    report_dir: Path,
    as_json: bool,
    payouts: bool,
    campaign: str | None,
    expires_in_days: int | None,
) -> None:
    """Validate SHEET as `batcher run` would and queue it for `batcher worker`."""
    _, location = resolve_ledger(state_dir, ledger_url)
    queue_needs_postgresql(location)  # before the provider is asked anything
    parsed_map = parse_mappings(mapping)
    mode = provider_mode(payouts, campaign, expires_in_days)
    limits = {code: str(amount) for code, amount in parse_max_total(max_total).items()}
    queued = QueuedRun(
        sheet_name=sheet_name,
        mapping=parsed_map,
        allow_duplicates=allow_duplicates,
        skip_hidden=skip_hidden,
        skip_invalid=skip_invalid,
        order_fundable=order_fundable,
        retry_failed=retry_failed,
        same_sheet_ok=same_sheet_ok,
        chunk_size=chunk_size,
        max_rate=max_rate,
        deadline=deadline,
        max_total=limits,
        lookback_days=lookback_days,
        mode=mode.mode,
        campaign=mode.campaign_id,
        expires_in_days=mode.expires_in_days,
        base_url=base_url,
    )
    settings = resolve_settings_for(provider, base_url, account)
    outcome = enqueue_batch(
        settings,
        sheet,
        queued,
        batch=batch,
        account=account,
        location=location,
        reading=SheetReading(sheet_name, parsed_map, allow_duplicates, skip_hidden, read_limits()),
        report_dir=report_dir,
        max_attempts=max_attempts,
    )
    result = outcome.validation.result
    if outcome.item is None:
        if as_json:
            echo_json({**outcome.validation.document, "queued": None})
        else:
            echo(render_summary(result.sheet, result, outcome.validation.csv_path), err=True)
            echo(
                "batcher: error: nothing was enqueued: fix the sheet, or enqueue with "
                "--skip-invalid to order the valid rows",
                err=True,
            )
        sys.exit(int(ExitCode.USAGE))
    item = outcome.item
    if as_json:
        echo_json(item.as_dict(), ITEM_SCHEMA)
        return
    who = f"account {account}" if account else settings.provider
    echo(
        f"queued item {item.id}: batch {item.batch} ({who}), {result.valid_count} valid "
        f"row(s), sheet sha256 {item.sheet_sha256[:12]}…; ledger {location.shown}"
    )


@click.command()
@ledger_options
@report_dir_option
@click.option("--once", is_flag=True, help="Exit when no queued batch is due (cron, tests).")
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0.05),
    default=5.0,
    show_default=True,
    help="Seconds between looks at an empty queue.",
)
@click.option(
    "--max-batches", type=click.IntRange(min=1), default=None, help="Exit after N batches."
)
@click.option(
    "--stale-after",
    type=click.FloatRange(min=0.5),
    default=60.0,
    show_default=True,
    help="Take over a running batch whose worker's heartbeat is this many seconds old (and "
    "whose batch lock is free: its worker is gone).",
)
@click.option(
    "--heartbeat",
    "heartbeat_every",
    type=click.FloatRange(min=0.05),
    default=5.0,
    show_default=True,
    help="Seconds between heartbeats on the batch being run.",
)
@click.option(
    "--retry-backoff",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds before a batch that stopped early is claimed again; doubled per attempt "
    "(at most 15 minutes).",
)
@click.option("--worker-id", default=None, help="This worker's name (default: host:pid:random).")
@log_format_option
@handle_errors
def worker(
    state_dir: Path | None,
    ledger_url: str | None,
    report_dir: Path,
    once: bool,
    poll_interval: float,
    max_batches: int | None,
    stale_after: float,
    heartbeat_every: float,
    retry_backoff: float,
    worker_id: str | None,
    log_format: str | None,
) -> None:
    """Claim queued batches from the PostgreSQL ledger and run them, one at a time."""
    folder, location = resolve_ledger(state_dir, ledger_url)
    queue_needs_postgresql(location)
    log = Log(log_format or "text")
    name = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    config = file_config()
    limits, sources = spend_limits(config, ())
    template = BatchOptions(
        sheet=Path("-"),
        reading=SheetReading(limits=read_limits()),
        max_total=limits,
        limit_sources=sources,
        state_dir=folder,
        ledger=location,
        report_dir=report_dir,
        webhooks=webhook_settings(config),
    )

    def settings_for(item: QueueItem, queued: QueuedRun) -> ProviderSettings:
        return resolve_settings_for(item.provider, queued.base_url, item.account)

    setup = WorkerSetup(name, template, settings_for, stale_after, heartbeat_every, retry_backoff)
    ran = 0
    log.info(f"worker {name} starting: ledger {location.shown}, reports {report_dir.absolute()}")
    with stop_on_signals(log) as signals, library_warnings(log), BatchQueue(location) as queue:
        while not signals.stop.is_set():
            item = queue.claim(name, stale_after=stale_after)
            if item is None:
                if once:
                    log.info("the queue has nothing due: exiting (--once)")
                    break
                signals.stop.wait(poll_interval)
                continue
            item_log = Log(log.fmt, batch=item.batch)
            item_log.info(
                f"claimed item {item.id} (attempt {item.attempts} of {item.max_attempts}"
                f"{', ' + item.message if item.message else ''})"
            )
            listener = ConsoleListener(item_log, live=False, mapping=item.options.get("mapping"))
            ui = ConsoleUI(item_log, listener, signals, assume_yes=True)
            try:
                outcome = run_item(queue, item, setup, ui, signals.stop)
            finally:
                listener.stop()
            line = f"item {item.id}: {outcome.state} (exit {outcome.exit_code}): {outcome.message}"
            if not outcome.recorded:
                item_log.warning(f"{line}; not recorded: another worker took the item over")
            elif outcome.state in (QueueState.DONE, QueueState.QUEUED):
                item_log.info(line)
            else:
                item_log.error(line)
            ran += 1
            if max_batches is not None and ran >= max_batches:
                break
    if signals.stop.is_set():
        log.info(f"worker {name} stopped on request after {ran} batch(es)")
        sys.exit(int(ExitCode.INCOMPLETE))
    log.info(f"worker {name} exiting after {ran} batch(es)")


@click.command(name="queue")
@ledger_options
@click.option(
    "--state",
    type=click.Choice([s.value for s in QueueState]),
    default=None,
    help="Only items in this state.",
)
@json_option
@handle_errors
def queue_command(
    state_dir: Path | None, ledger_url: str | None, state: str | None, as_json: bool
) -> None:
    """The work queue's items, newest first: state, attempts, worker and outcome."""
    _, location = resolve_ledger(state_dir, ledger_url)
    items = queue_items(location, state=state)
    if as_json:
        echo_json({"ledger": location.shown, "items": [i.as_dict() for i in items]}, QUEUE_SCHEMA)
        return
    if not items:
        echo("the queue is empty")
    for item in items:
        who = f"account {item.account}" if item.account else item.provider
        worker = f" worker {item.worker}, heartbeat {item.heartbeat_at}" if item.worker else ""
        code = "-" if item.exit_code is None else item.exit_code
        echo(
            f"{item.id:>5}  {item.batch}  ({who})  {item.state}  attempts "
            f"{item.attempts}/{item.max_attempts}  exit {code}{worker}"
        )
        if item.message:
            echo(f"       {item.message}")
