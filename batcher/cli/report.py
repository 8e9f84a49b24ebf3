"""`batcher report BATCH`: the reconciliation workbook, on demand.

`batcher run` writes the same report when it ends; this command rebuilds it from
the ledger and a fresh look at the provider's orders and wallet transactions,
and is the only way to get the live voucher codes (`--reveal-codes`).

Exit codes: 0 every currency RECONCILED; 1 a MISMATCH (the workbook says why);
2 usage (no ledger, no such batch, wrong provider); 4 the provider cannot be
reached, the key belongs to another account, or a run of the batch is in progress.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from batcher.cli import finish
from batcher.cli.common import (
    echo_json,
    handle_errors,
    json_option,
    report_options,
    resolve_ledger,
    resolve_settings,
)
from batcher.cli.terminal import echo
from batcher.core.collector import collector_paused
from batcher.core.errors import ExitCode, UsageError
from batcher.core.money import format_money, money_str
from batcher.reporting.reconcile import MISMATCH, Reconciliation
from batcher.reporting.reports import ReportResult
from batcher.services import report_batch


@click.command()
@click.argument("batch")
@report_options
@click.option(
    "--reveal-codes",
    is_flag=True,
    help="Also write codes.xlsx (mode 0600) with the live voucher codes. They are bearer "
    "credentials: anyone holding the file can spend them.",
)
@json_option
@handle_errors
def report(
    batch: str,
    provider: str,
    base_url: str | None,
    state_dir: Path | None,
    ledger_url: str | None,
    report_dir: Path,
    reveal_codes: bool,
    as_json: bool,
) -> None:
    """Reconcile BATCH with the provider and write REPORT_DIR/BATCH/reconciliation.xlsx."""
    folder, location = resolve_ledger(state_dir, ledger_url)
    # The cyclic collector stays off from the listing to the exit: every object the
    # report makes (the listings, the rows, the wallet lines) lives until the end and
    # none is in a cycle. Turned back on between its steps, it walked them all for
    # nothing (about 0.4 s at 100,000 rows). The program then ends at once (`finish`,
    # the ledger closed and every file written by then), without freeing them one by one.
    with collector_paused():
        result = report_batch(
            folder,
            batch,
            lambda recorded: resolve_settings(_provider_for(recorded, provider), base_url),
            report_dir=report_dir,
            reveal_codes=reveal_codes,
            location=location,
        )
        if as_json:
            echo_json(report_document(result), "batcher.report/1")
            _warn_codes(result)
        else:
            _print_result(result)
        finish(int(_exit_code(result.reconciliation)))


def _exit_code(rec: Reconciliation) -> ExitCode:
    if rec.provider_error:
        return ExitCode.CANNOT_START
    if rec.verdict == MISMATCH:
        return ExitCode.SOME_FAILED
    return ExitCode.OK


def _provider_for(recorded: str, given: str) -> str:
    """The batch's own provider, unless --provider was given and says otherwise."""
    source = click.get_current_context().get_parameter_source("provider")
    if source is not None and source.name != "DEFAULT" and given.lower() != recorded.lower():
        raise UsageError(
            f"this batch was ordered through {recorded}, not {given}",
            hint=f"leave out --provider or use --provider {recorded}",
        )
    return recorded


def report_document(result: ReportResult) -> dict[str, Any]:
    rec = result.reconciliation
    return {
        "verdict": str(rec.verdict),
        "reason": rec.reason,
        "provider_error": rec.provider_error,
        "by_state": dict(rec.state_counts),
        "currencies": {
            c.currency: {
                "verdict": str(c.verdict),
                "reason": c.reason,
                "orders": c.orders,
                "face_value": money_str(c.face_value, c.currency),
                "cost": money_str(c.cost, c.currency),
                "wallet_debits": None
                if c.wallet_debits is None
                else money_str(c.wallet_debits, c.currency),
            }
            for c in rec.currencies
        },
        "orphans": len(rec.orphans),
        "webhook_orphans": result.webhook_orphans,
        "workbook": str(result.workbook),
        "failed_rows": str(result.failed_rows),
        "codes": None if result.codes is None else str(result.codes),
    }


def _print_result(result: ReportResult) -> None:
    rec = result.reconciliation
    echo(f"verdict: {rec.verdict} ({rec.reason})")
    for currency in rec.currencies:
        debits = currency.wallet_debits
        shown = "unknown" if debits is None else format_money(debits, currency.currency)
        echo(
            f"  {currency.currency}: {currency.verdict}: {currency.orders} orders, cost "
            f"{format_money(currency.cost, currency.currency)}, wallet debits {shown}"
        )
    _print_orphans(rec)
    if result.webhook_orphans:
        echo(
            f"  {result.webhook_orphans} webhook event(s) for order requests no batch sent"
            " (see the Orphans sheet)"
        )
    _warn_codes(result)
    echo(f"failed rows: {result.failed_rows}")
    echo(f"reconciliation: {result.workbook}")


def _warn_codes(result: ReportResult) -> None:
    if result.codes is not None:
        echo(
            f"warning: {result.codes} holds live voucher codes: they are bearer credentials, "
            "anyone with the file can spend them. Share it only over a secure channel and "
            "delete it when done.",
            err=True,
        )


def _print_orphans(rec: Reconciliation) -> None:
    if rec.orphans:
        echo(f"  {len(rec.orphans)} orphan order(s) at the provider are not in the ledger")
