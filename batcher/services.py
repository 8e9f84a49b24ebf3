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
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batcher.config import ProviderSettings
from batcher.core.errors import ConfigError, UsageError
from batcher.core.models import AccountInfo, Balance, Product, WalletTransaction
from batcher.core.names import check_batch_name
from batcher.execute.check import check_sheet
from batcher.execute.run import BatchOptions, BatchResult, RunUI, run_batch
from batcher.intake.validate import ValidationResult, validation_document
from batcher.ledger.store import BatchLock, Ledger
from batcher.providers import connect
from batcher.providers.base import Provider, ProviderOptions
from batcher.reporting.outputs import write_validation_csv
from batcher.reporting.reports import ReportResult, write_batch_report

__all__ = [
    "BatchOptions",
    "BatchResult",
    "RunUI",
    "ValidationOutcome",
    "account_info",
    "batch_status",
    "list_balances",
    "list_products",
    "list_transactions",
    "open_provider",
    "report_batch",
    "run_batch",
    "validate_sheet",
]


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


def validate_sheet(
    settings: ProviderSettings,
    sheet: Path,
    *,
    sheet_name: str | None = None,
    mapping: Mapping[str, str] | None = None,
    allow_duplicates: bool = False,
    provider_options: ProviderOptions | None = None,
    report_dir: Path = Path("reports"),
    write_json: bool = False,
) -> ValidationOutcome:
    """Every check `run_batch` makes, through the same `check_sheet`, without ordering.

    Writes ``REPORT_DIR/<sheet stem>/validation.csv`` (and ``validation.json`` when asked).
    """
    with open_provider(settings, provider_options) as client:
        result = check_sheet(
            client,
            sheet,
            sheet_name=sheet_name,
            mapping=mapping,
            allow_duplicates=allow_duplicates,
        ).result
    folder = report_dir / result.sheet.path.stem
    document = validation_document(result.sheet, result)
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
    return ValidationOutcome(result, csv_path, document, json_path)


# ---------------------------------------------------------------------------
# status and report


def open_ledger(state_dir: Path) -> Ledger:
    """The ledger in `state_dir`; a usage error when nothing has run there yet."""
    if not (state_dir / "ledger.sqlite").exists():
        raise UsageError(f"no ledger in {state_dir}: nothing has run here yet")
    return Ledger.open(state_dir)


def batch_status(state_dir: Path, batch: str | None = None) -> dict[str, Any]:
    """What the ledger knows, without the network: every batch, or one batch and its runs."""
    if batch is not None:
        check_batch_name(batch)
    ledger = open_ledger(state_dir)
    try:
        if batch is None:
            batches = ledger.batches()
            for listed in batches:
                listed["by_state"] = ledger.count_by_state(listed["batch"])
            return {"batches": batches}
        info = ledger.batch_info(batch)
        if info is None:
            raise UsageError(f"no batch named {batch!r} in {state_dir}")
        return {
            "batch": info,
            "by_state": ledger.count_by_state(batch),
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
) -> ReportResult:
    """Reconcile `batch` against a full listing at its provider and write its workbook.

    `settings_for(provider_name)` resolves the connection for the provider the
    batch was ordered through (the ledger records it).
    """
    check_batch_name(batch)
    ledger = open_ledger(state_dir)
    try:
        info = ledger.batch_info(batch)
        if info is None:
            known = ", ".join(b["batch"] for b in ledger.batches()[:10]) or "none"
            raise UsageError(
                f"no batch named {batch!r} in {state_dir}", hint=f"known batches: {known}"
            )
        with open_provider(settings_for(info["provider"])) as client:
            account = client.account()
            if account.account_id != info["account_id"]:
                raise ConfigError(
                    f"batch {batch!r} was ordered by account {info['account_id']}, but the API "
                    f"key belongs to account {account.account_id}",
                    hint=f"use the key of account {info['account_id']}",
                )
            with BatchLock(state_dir, batch):
                return write_batch_report(
                    ledger, batch, client, report_dir, reveal_codes=reveal_codes, fetch="full"
                )
    finally:
        ledger.close()
