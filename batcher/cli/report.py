"""`batcher report BATCH`: the reconciliation workbook, on demand.

`batcher run` writes the same report when it ends; this command rebuilds it from
the ledger and a fresh look at the provider's orders and wallet transactions,
and is the only way to get the live voucher codes (`--reveal-codes`).

Exit codes: 0 every currency RECONCILED; 1 a MISMATCH (the workbook says why);
2 usage (no ledger, no such batch, wrong provider); 4 the provider cannot be
reached, the key belongs to another account, or a run of the batch is in progress.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from batcher.cli.common import fail, handle_errors, provider_options, resolve_settings
from batcher.core.errors import ConfigError, ExitCode, UsageError
from batcher.core.money import format_money
from batcher.ledger.store import BatchLock, Ledger
from batcher.reporting.reconcile import MISMATCH, Reconciliation
from batcher.reporting.reports import ReportResult


@click.command()
@click.argument("batch")
@provider_options
@click.option("--state-dir", type=click.Path(path_type=Path), envvar="BATCHER_STATE_DIR",
              default=Path(".batcher"), show_default=True, help="Ledger folder.")  # fmt: skip
@click.option("--report-dir", type=click.Path(path_type=Path, file_okay=False),
              default=Path("reports"), show_default=True, help="Report folder.")  # fmt: skip
@click.option(
    "--reveal-codes",
    is_flag=True,
    help="Also write codes.xlsx (mode 0600) with the live voucher codes. They are bearer "
    "credentials: anyone holding the file can spend them.",
)
@handle_errors
def report(
    batch: str,
    provider: str,
    base_url: str | None,
    state_dir: Path,
    report_dir: Path,
    reveal_codes: bool,
) -> None:
    """Reconcile BATCH with the provider and write REPORT_DIR/BATCH/reconciliation.xlsx."""
    if not (state_dir / "ledger.sqlite").exists():
        fail(f"no ledger in {state_dir}: nothing has run here yet", ExitCode.USAGE)
    ledger = Ledger.open(state_dir)
    try:
        result = _report(ledger, batch, provider, base_url, state_dir, report_dir, reveal_codes)
    finally:
        ledger.close()
    _print_result(result)
    if result.reconciliation.provider_error:
        sys.exit(int(ExitCode.CANNOT_START))
    if result.reconciliation.verdict == MISMATCH:
        sys.exit(int(ExitCode.SOME_FAILED))


def _report(
    ledger: Ledger,
    batch: str,
    provider_name: str,
    base_url: str | None,
    state_dir: Path,
    report_dir: Path,
    reveal_codes: bool,
) -> ReportResult:
    from batcher.providers import connect
    from batcher.reporting.reports import write_batch_report

    info = ledger.batch_info(batch)
    if info is None:
        known = ", ".join(b["batch"] for b in ledger.batches()[:10]) or "none"
        raise UsageError(f"no batch named {batch!r} in {state_dir}", hint=f"known batches: {known}")
    settings = resolve_settings(_provider_for(info["provider"], provider_name), base_url)
    client = connect(settings)
    try:
        account = client.account()
        if account.account_id != info["account_id"]:
            raise ConfigError(
                f"batch {batch!r} was ordered by account {info['account_id']}, but the API key "
                f"belongs to account {account.account_id}",
                hint=f"use the key of account {info['account_id']}",
            )
        with BatchLock(state_dir, batch):
            return write_batch_report(
                ledger, batch, client, report_dir, reveal_codes=reveal_codes, fetch="full"
            )
    finally:
        client.close()


def _provider_for(recorded: str, given: str) -> str:
    """The batch's own provider, unless --provider was given and says otherwise."""
    source = click.get_current_context().get_parameter_source("provider")
    if source is not None and source.name != "DEFAULT" and given.lower() != recorded.lower():
        raise UsageError(
            f"this batch was ordered through {recorded}, not {given}",
            hint=f"leave out --provider or use --provider {recorded}",
        )
    return recorded


def _print_result(result: ReportResult) -> None:
    rec = result.reconciliation
    click.echo(f"verdict: {rec.verdict} ({rec.reason})")
    for currency in rec.currencies:
        debits = currency.wallet_debits
        shown = "unknown" if debits is None else format_money(debits, currency.currency)
        click.echo(
            f"  {currency.currency}: {currency.verdict}: {currency.orders} orders, cost "
            f"{format_money(currency.cost, currency.currency)}, wallet debits {shown}"
        )
    _print_orphans(rec)
    if result.codes is not None:
        click.echo(
            f"warning: {result.codes} holds live voucher codes: they are bearer credentials, "
            "anyone with the file can spend them. Share it only over a secure channel and "
            "delete it when done.",
            err=True,
        )
    click.echo(f"failed rows: {result.failed_rows}")
    click.echo(f"reconciliation: {result.workbook}")


def _print_orphans(rec: Reconciliation) -> None:
    if rec.orphans:
        click.echo(f"  {len(rec.orphans)} orphan order(s) at the provider are not in the ledger")
