"""The library's front door: what the CLI calls, and what a Python caller can import.

Each function does one whole job and returns a result object; none of them
prints or exits. The CLI (``batcher.cli``) parses options, calls one of these and
renders what it returns::

    from batcher.config import provider_settings
    from batcher.services import validate_sheet

    outcome = validate_sheet(provider_settings("ugiftme"), Path("nightly.csv"))
    print(outcome.result.ok, outcome.csv_path)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from batcher.config import ProviderSettings, is_loopback_host
from batcher.core.clock import utc_text
from batcher.core.errors import ConfigError, UsageError
from batcher.core.models import AccountInfo, Balance, Campaign, Product, WalletTransaction
from batcher.core.names import check_batch_name
from batcher.providers import connect
from batcher.providers.base import Provider, ProviderOptions

# The ledger (store, queue, lock) and reconciliation are imported by the functions that
# use them: `batcher validate` needs neither, and they cost it a twentieth of its start-up.
# So is validation (with polars, a fifth of a second and threads of its own): a report
# never reads a sheet.
if TYPE_CHECKING:
    from batcher.execute.check import SheetReading
    from batcher.execute.dryrun import DryRun, dry_run_batch
    from batcher.execute.run import BatchOptions, BatchResult, RunUI, run_batch
    from batcher.execute.worker import QueuedRun
    from batcher.intake.validate import ValidationResult
    from batcher.ledger.location import LedgerLocation
    from batcher.ledger.queue import QueueItem
    from batcher.ledger.store import Ledger, RowRecord
    from batcher.reporting.reports import ReportResult
    from batcher.reporting.statement import Checkpoint, Statement
    from batcher.transport.notify import Delivery, host_of, send_notification, slack_payload

#: names this front door re-exports, loaded on first use: the run path (and with it
#: openpyxl, the workbook and the runner) costs `batcher validate` a tenth of a second
#: it would never use
_LAZY = {
    "SheetReading": "batcher.execute.check",
    "check_sheet": "batcher.execute.check",
    "ValidationResult": "batcher.intake.validate",
    "validation_document": "batcher.intake.validate",
    "BatchOptions": "batcher.execute.run",
    "BatchResult": "batcher.execute.run",
    "RunUI": "batcher.execute.run",
    "run_batch": "batcher.execute.run",
    "DryRun": "batcher.execute.dryrun",
    "dry_run_batch": "batcher.execute.dryrun",
    "Delivery": "batcher.transport.notify",
    "host_of": "batcher.transport.notify",
    "send_notification": "batcher.transport.notify",
    "slack_payload": "batcher.transport.notify",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BatchOptions",
    "BatchResult",
    "Delivery",
    "DryRun",
    "EnqueueOutcome",
    "RunUI",
    "ValidationOutcome",
    "account_info",
    "batch_status",
    "check_notify_url",
    "default_state_dir",
    "dry_run_batch",
    "enqueue_batch",
    "host_of",
    "ledger_lost",
    "list_balances",
    "list_campaigns",
    "list_products",
    "list_transactions",
    "open_provider",
    "queue_items",
    "report_batch",
    "run_batch",
    "send_notification",
    "slack_payload",
    "statement",
    "validate_sheet",
]

LEDGER_FILE = "ledger.sqlite"
VALIDATE_SCHEMA = "batcher.validate/1"


@contextmanager
def open_provider(
    settings: ProviderSettings, options: ProviderOptions | None = None
) -> Iterator[Provider]:
    """A connected provider client, closed on exit."""
    client = connect(settings, options=options)
    try:
        yield client
    finally:
        client.close()


# ---------------------------------------------------------------------------
# Looking at an account


def account_info(settings: ProviderSettings) -> AccountInfo:
    with open_provider(settings) as client:
        return client.account()


def list_products(
    settings: ProviderSettings, *, search: str | None = None, currency: str | None = None
) -> list[Product]:
    """The catalog, optionally only products whose code, name or merchant contain `search`."""
    with open_provider(settings) as client:
        products = client.catalog()
    needle = (search or "").strip().casefold()
    wanted = (currency or "").strip().upper()
    return [
        p
        for p in products
        if (not wanted or p.currency.upper() == wanted)
        and needle in f"{p.product_code} {p.name} {p.merchant}".casefold()
    ]


def list_campaigns(settings: ProviderSettings) -> list[Campaign]:
    """The account's payout campaigns, for providers that have them (GIFQ)."""
    with open_provider(settings) as client:
        campaigns = getattr(client, "campaigns", None)
        if campaigns is None:
            raise UsageError(
                f"{settings.profile.name} has no payout campaigns",
                hint="campaigns belong to GIFQ: add --provider gifq",
            )
        found: list[Campaign] = campaigns()
        return found


def list_balances(settings: ProviderSettings) -> list[Balance]:
    with open_provider(settings) as client:
        return client.balances()


def list_transactions(settings: ProviderSettings) -> list[WalletTransaction]:
    with open_provider(settings) as client:
        return client.transactions()


# ---------------------------------------------------------------------------
# validate


@dataclass(frozen=True)
class ValidationOutcome:
    result: ValidationResult
    csv_path: Path
    document: dict[str, Any]
    json_path: Path | None = None
    funds_notes: tuple[str, ...] = ()  # funds the check could not verify (no FX rate)


def validate_sheet(
    settings: ProviderSettings,
    sheet: Path,
    reading: SheetReading | None = None,
    *,
    provider_options: ProviderOptions | None = None,
    report_dir: Path = Path("reports"),
    write_json: bool = False,
) -> ValidationOutcome:
    """Every check `run_batch` makes, through the same `check_sheet`, without ordering.

    Writes ``REPORT_DIR/<sheet stem>/validation.csv`` (and ``validation.json`` when asked).
    """
    from batcher.execute import check as checks  # the one code path `run_batch` takes too
    from batcher.intake.validate import validation_document
    from batcher.reporting.outputs import write_validation_csv

    with open_provider(settings, provider_options) as client:
        check = checks.check_sheet(client, sheet, reading)
    result = check.result
    folder = report_dir / result.sheet.source.path.stem
    # the schema tag first: the same document is printed by `validate --json`
    document = {"schema": VALIDATE_SCHEMA, **validation_document(result.sheet, result)}
    json_path = folder / "validation.json" if write_json else None
    try:
        csv_path = write_validation_csv(result, folder / "validation.csv")
        if json_path is not None:
            text = json.dumps(document, ensure_ascii=False, indent=2)
            json_path.write_text(text + "\n", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot write the report in {folder} ({exc.strerror})",
            hint="choose another folder with --report-dir",
        ) from None
    if check.funds_notes:
        document["funds_not_verified"] = list(check.funds_notes)
    return ValidationOutcome(result, csv_path, document, json_path, check.funds_notes)


# ---------------------------------------------------------------------------
# the work queue (PostgreSQL ledgers)


@dataclass(frozen=True)
class EnqueueOutcome:
    """A validated sheet and its queue item; no item when the sheet failed validation."""

    validation: ValidationOutcome
    item: QueueItem | None


def enqueue_batch(
    settings: ProviderSettings,
    sheet: Path,
    run: QueuedRun,
    *,
    batch: str,
    account: str | None,
    location: LedgerLocation,
    reading: SheetReading | None = None,
    report_dir: Path = Path("reports"),
    max_attempts: int = 5,
) -> EnqueueOutcome:
    """Validate `sheet` exactly as `batcher run` would (`validate_sheet`), then queue it.

    Nothing is queued when a row is invalid (unless `run.skip_invalid`, as a run
    would order the valid ones). The item records the sheet's SHA-256 as validated:
    a worker refuses the sheet if its bytes change before it runs.
    """
    from batcher.ledger.queue import BatchQueue, queue_needs_postgresql

    queue_needs_postgresql(location)
    check_batch_name(batch)
    with BatchQueue(location):  # a reachable, migrated ledger before the provider is asked
        pass
    outcome = validate_sheet(
        settings,
        sheet,
        reading,
        provider_options=run.provider_options(),
        report_dir=report_dir,
    )
    result = outcome.result
    if result.invalid_rows and not run.skip_invalid:
        return EnqueueOutcome(outcome, None)
    with BatchQueue(location) as queue:
        item = queue.enqueue(
            batch=batch,
            provider=settings.provider,
            account=account,
            sheet_path=str(sheet.absolute()),
            sheet_sha256=result.sheet.sha256,
            options=run.to_json(),
            max_attempts=max_attempts,
        )
    return EnqueueOutcome(outcome, item)


def queue_items(location: LedgerLocation, *, state: str | None = None) -> list[QueueItem]:
    """The work queue's items, newest first."""
    from batcher.ledger.queue import BatchQueue

    with BatchQueue(location) as queue:
        return queue.items(state=state)


# ---------------------------------------------------------------------------
# status and report


# ---------------------------------------------------------------------------
# notifications


def check_notify_url(url: str) -> str:
    """The URL, if batcher may POST a summary to it; a ConfigError naming only its host."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
    except ValueError:
        raise ConfigError("the --notify URL is not a valid URL") from None
    if parts.scheme not in {"http", "https"} or not host or "@" in parts.netloc:
        raise ConfigError(
            "the --notify URL must be an http(s) URL without user info",
            hint="e.g. https://hooks.slack.com/services/...",
        )
    if parts.scheme == "http" and not is_loopback_host(host):
        raise ConfigError(
            f"the --notify URL to {host} uses plain http", hint="use https (http only to localhost)"
        )
    return url.strip()


# ---------------------------------------------------------------------------
# where state lives


def default_state_dir(
    file_config: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> Path:
    """Where the ledger lives when neither --state-dir nor BATCHER_STATE_DIR says.

    batcher.toml's `state_dir`, else the XDG state folder ($XDG_STATE_HOME/batcher,
    i.e. ~/.local/state/batcher): one fixed place whatever the working directory,
    so a cron job started elsewhere never begins from an empty ledger.
    """
    env = os.environ if environ is None else environ
    configured = file_config.get("state_dir")
    if configured is not None:
        if not isinstance(configured, str) or not configured.strip():
            raise ConfigError("batcher.toml: state_dir must be a folder path (a string)")
        return Path(configured).expanduser()
    base = env.get("XDG_STATE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".local/state")
    return Path(base) / "batcher"


def ledger_lost(
    state_dir: Path, report_dir: Path, batch: str, location: LedgerLocation | None = None
) -> bool:
    """True when a run of `batch` left reports but the ledger has never heard of it.

    That is a ledger that was moved, deleted or is being looked for in the wrong
    place: a run now would start the batch from scratch. The provider's idempotency
    keys would still catch exact repeats, but not rows whose attempt changed.
    """
    from batcher.ledger.store import Ledger

    summary = report_dir / batch / "summary.json"
    try:
        ran = "run_id" in json.loads(summary.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False  # no report of a run (a validation-only summary has no run_id)
    if not ran:
        return False
    from batcher.ledger.location import LedgerLocation

    where = location or LedgerLocation.in_state_dir(state_dir)
    if where.path is not None and not where.path.exists():
        return True
    ledger = Ledger.open(state_dir, where)
    try:
        return ledger.batch_info(batch) is None
    finally:
        ledger.close()


def open_ledger(state_dir: Path, location: LedgerLocation | None = None) -> Ledger:
    """The ledger at `location` (default: in `state_dir`); a usage error when a SQLite
    ledger does not exist yet (nothing has run there)."""
    from batcher.ledger.location import LedgerLocation
    from batcher.ledger.store import Ledger

    where = location or LedgerLocation.in_state_dir(state_dir)
    if where.path is not None and not where.path.exists():
        raise UsageError(f"no ledger in {where.path.parent}: nothing has run here yet")
    return Ledger.open(state_dir, where)


def _ledger_place(ledger: Ledger) -> str:
    """Where the ledger is, for a message: a SQLite ledger's folder, else its URL."""
    return str(ledger.path.parent) if ledger.path is not None else ledger.location.shown


def batch_status(
    state_dir: Path, batch: str | None = None, location: LedgerLocation | None = None
) -> dict[str, Any]:
    """What the ledger knows, without the network: every batch, or one batch and its runs.

    Each batch carries its row counts by state, the succeeded totals per currency,
    an outcome word, and its last run (ids, dates, exit code).
    """
    from batcher.reporting.outputs import batch_counts

    if batch is not None:
        check_batch_name(batch)
    ledger = open_ledger(state_dir, location)
    try:
        if batch is None:
            batches = ledger.batches()
            for listed in batches:
                listed.update(batch_counts(ledger, listed["batch"]))
                runs = ledger.runs(listed["batch"], limit=1)
                listed["last_run"] = runs[0] if runs else None
            return {"ledger": ledger.location.shown, "batches": batches}
        info = ledger.batch_info(batch)
        if info is None:
            raise UsageError(f"no batch named {batch!r} in {_ledger_place(ledger)}")
        return {
            "ledger": ledger.location.shown,
            "batch": info,
            **batch_counts(ledger, batch),
            "runs": ledger.runs(batch),
        }
    finally:
        ledger.close()


def report_batch(
    state_dir: Path,
    batch: str,
    settings_for: Callable[[str], ProviderSettings],
    *,
    report_dir: Path = Path("reports"),
    reveal_codes: bool = False,
    location: LedgerLocation | None = None,
) -> ReportResult:
    """Reconcile `batch` against a full listing at its provider and write its workbook.

    `settings_for(provider_name)` resolves the connection for the provider the
    batch was ordered through (the ledger records it).
    """
    from batcher.ledger.lock import batch_lock

    check_batch_name(batch)
    ledger = open_ledger(state_dir, location)
    try:
        info = ledger.batch_info(batch)
        if info is None:
            known = ", ".join(b["batch"] for b in ledger.batches()[:10]) or "none"
            raise UsageError(
                f"no batch named {batch!r} in {_ledger_place(ledger)}",
                hint=f"known batches: {known}",
            )
        with open_provider(settings_for(info["provider"])) as client:
            account = client.account()
            if account.account_id != info["account_id"]:
                raise ConfigError(
                    f"batch {batch!r} was ordered by account {info['account_id']}, but the API "
                    f"key belongs to account {account.account_id}",
                    hint=f"use the key of account {info['account_id']}",
                )
            from batcher.reporting.reports import write_batch_report  # openpyxl: only here

            with batch_lock(state_dir, batch, ledger.location):
                return write_batch_report(
                    ledger, batch, client, report_dir, reveal_codes=reveal_codes, fetch="full"
                )
    finally:
        ledger.close()


# ---------------------------------------------------------------------------
# statement


@dataclass(frozen=True)
class StatementResult:
    workbook: Path
    statement: Statement


def statement(
    state_dir: Path,
    settings: ProviderSettings,
    first_day: date,
    last_day: date,
    *,
    report_dir: Path = Path("reports"),
    location: LedgerLocation | None = None,
) -> StatementResult:
    """One workbook over every batch of `settings.provider` with orders in the period,
    tied out to the provider's transactions (`batcher.reporting.statement`).

    Writes ``REPORT_DIR/statements/statement-FIRST-to-LAST-<UTC time>.xlsx``: a new
    file each time, so a filed statement is never overwritten.
    """
    from batcher.reporting.statement import build_statement
    from batcher.reporting.statement_book import write_statement  # openpyxl: only here
    from batcher.reporting.verdicts import Window

    if last_day < first_day:
        raise UsageError(f"--to {last_day} is before --from {first_day}")
    start = datetime.combine(first_day, time.min, UTC)
    period = Window(start, datetime.combine(last_day + timedelta(days=1), time.min, UTC))
    ledger = open_ledger(state_dir, location)
    try:
        with open_provider(settings) as client:
            account = client.account()
            rows_by_batch: dict[str, list[RowRecord]] = {}
            checkpoints: list[Checkpoint] = []
            for name in ledger.batches_ordering_between(utc_text(start), utc_text(period.end)):
                info = ledger.batch_info(name) or {}
                if info.get("provider") != settings.provider:
                    continue
                if info.get("account_id") != account.account_id:
                    continue
                rows_by_batch[name] = ledger.rows(name, in_sheet_only=False)
                checkpoints += _checkpoints(ledger, name)
            transactions = client.transactions(start)
            balances = {b.currency: b.balance for b in client.balances()}
    finally:
        ledger.close()
    built = build_statement(period, rows_by_batch, transactions, balances, checkpoints)
    now = datetime.now(UTC)
    folder = report_dir / "statements"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"statement-{first_day.isoformat()}-to-{last_day.isoformat()}-{now:%Y%m%dT%H%M%S%fZ}"
    return StatementResult(write_statement(folder / f"{name}.xlsx", built, now), built)


def _checkpoints(ledger: Ledger, batch: str) -> list[Checkpoint]:
    """The balances each run of the batch read at its start, as fixed points to tie out to."""
    from batcher.ledger.store import parse_ts
    from batcher.reporting.statement import Checkpoint

    found = []
    for run in ledger.runs(batch, limit=1_000_000):
        summary = ledger.run_summary(run["run_id"]) or {}
        moment = parse_ts(summary.get("started_at"))
        before = summary.get("balances_before")
        if moment is None or not isinstance(before, Mapping):
            continue
        for currency, values in before.items():
            if isinstance(values, Mapping) and values.get("balance") is not None:
                found.append(
                    Checkpoint(
                        run["run_id"], moment, str(currency), Decimal(str(values["balance"]))
                    )
                )
    return found
