"""`batcher validate SHEET`: every check `batcher run` makes, without placing an order.

Reads the sheet, fetches the catalog and balances once, runs
`batcher.validate.validate_rows` (the very function `run` uses), prints a short
summary, and writes `REPORT_DIR/<sheet stem>/validation.csv` (every error) and,
with --json, `validation.json` plus the same document on stdout.

Exit codes: 0 every row valid and funded; 2 invalid rows, short funds, or an
unreadable sheet; 4 the provider cannot be reached or refuses the key.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import click

from batcher.checking import check_sheet
from batcher.cli.common import handle_errors, parse_mappings, provider_options, resolve_settings
from batcher.cli.run import provider_mode
from batcher.errors import ConfigError, ExitCode
from batcher.money import format_money
from batcher.providers import connect
from batcher.run_outputs import write_validation_csv
from batcher.sheets import Sheet
from batcher.validate import (
    ValidationResult,
    report_records,
    validation_document,
)

ERRORS_SHOWN = 20  # the terminal shows the first ones; the report has them all


@click.command()
@click.argument("sheet_path", metavar="SHEET", type=click.Path(path_type=Path))
@provider_options
@click.option(
    "--sheet",
    "worksheet",
    default=None,
    metavar="NAME",
    help="Worksheet of an .xlsx file (default: the first visible one).",
)
@click.option(
    "--map",
    "mappings",
    multiple=True,
    metavar="FIELD=HEADER",
    help="Read FIELD from the column HEADER, e.g. --map amount='Card value'. Repeatable.",
)
@click.option(
    "--allow-duplicates",
    is_flag=True,
    help="Accept identical rows (same recipient, product, amount) as separate orders.",
)
@click.option(
    "--report-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("reports"),
    show_default=True,
    help="Where REPORT_DIR/<sheet name>/validation.csv is written.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON on stdout.")
@click.option("--payouts", is_flag=True, help="GIFQ payouts mode: rows need no product.")
@click.option("--campaign", default=None, help="Payout campaign id (with --payouts).")
@click.option("--expires-in-days", type=click.IntRange(1, 3650), default=None, hidden=True)
@handle_errors
def validate(
    sheet_path: Path,
    provider: str,
    base_url: str | None,
    worksheet: str | None,
    mappings: Sequence[str],
    allow_duplicates: bool,
    report_dir: Path,
    as_json: bool,
    payouts: bool,
    campaign: str | None,
    expires_in_days: int | None,
) -> None:
    """Check SHEET against the provider's catalog and wallets; order nothing."""
    mapping = parse_mappings(mappings)
    client = connect(
        resolve_settings(provider, base_url),
        options=provider_mode(payouts, campaign, expires_in_days),
    )
    try:
        result = check_sheet(
            client,
            sheet_path,
            sheet_name=worksheet,
            mapping=mapping,
            allow_duplicates=allow_duplicates,
        ).result
    finally:
        client.close()
    sheet = result.sheet

    folder = report_dir / sheet.path.stem
    document = json.dumps(validation_document(sheet, result), ensure_ascii=False, indent=2)
    try:
        csv_path = write_validation_csv(result, folder / "validation.csv")
        if as_json:
            (folder / "validation.json").write_text(document + "\n", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot write the report in {folder} ({exc.strerror})",
            hint="choose another folder with --report-dir",
        ) from None
    click.echo(document if as_json else render_summary(sheet, result, csv_path))
    sys.exit(int(ExitCode.OK if result.ok else ExitCode.USAGE))


def render_summary(sheet: Sheet, result: ValidationResult, report: Path) -> str:
    """What a person reads at the terminal: counts, money per currency, the first errors."""
    rows = "row" if result.rows_read == 1 else "rows"
    lines = [
        f"{sheet.label}: {result.rows_read} {rows} read, {result.valid_count} valid, "
        f"{len(result.invalid_rows)} invalid",
    ]
    for currency in sorted(set(result.cost_by_currency) | set(result.available_by_currency)):
        cost = result.cost_by_currency.get(currency)
        if cost is None:
            continue
        available = result.available_by_currency.get(currency)
        funds = format_money(available, currency) if available is not None else "no wallet"
        lines.append(f"  {currency}  cost {format_money(cost, currency)}  available {funds}")
    records = report_records(result)
    if records:
        lines.append(f"{len(records)} error{'s' if len(records) != 1 else ''}:")
        lines += [_error_line(record) for record in records[:ERRORS_SHOWN]]
        if len(records) > ERRORS_SHOWN:
            lines.append(f"  ... and {len(records) - ERRORS_SHOWN} more in the report")
    lines.append(f"Report: {report}")
    if result.ok:
        lines.append("OK: every row is valid and funded.")
    else:
        lines.append("Not ready: fix the errors and validate again. Nothing was ordered.")
    return "\n".join(lines)


def _error_line(record: dict[str, str | int | None]) -> str:
    where = f"row {record['row']}" if record["row"] is not None else "funds"
    column = f" {record['column']}" if record["column"] else ""
    hint = f" ({record['hint']})" if record["hint"] else ""
    return f"  {where}{column}: {record['code']}: {record['message']}{hint}"
