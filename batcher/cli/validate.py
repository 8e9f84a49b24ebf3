"""`batcher validate SHEET`: every check `batcher run` makes, without placing an order.

Reads the sheet, fetches the catalog and balances once, runs
`batcher.intake.validate.validate_rows` (the very function `run` uses), prints a short
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

from batcher.cli.common import (
    handle_errors,
    parse_mappings,
    provider_mode,
    provider_options,
    resolve_settings,
)
from batcher.cli.render import render_summary
from batcher.core.errors import ConfigError, ExitCode
from batcher.execute.check import check_sheet
from batcher.intake.validate import (
    validation_document,
)
from batcher.providers import connect
from batcher.reporting.outputs import write_validation_csv


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
