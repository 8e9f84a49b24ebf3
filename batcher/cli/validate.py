"""`batcher validate SHEET`: every check `batcher run` makes, without placing an order.

A thin shell over `batcher.services.validate_sheet`, which takes the very path
`run` takes (`batcher.execute.check.check_sheet`). Prints a short summary and
writes `REPORT_DIR/<sheet stem>/validation.csv` (every error) and, with --json,
`validation.json` plus the same document on stdout.

Exit codes: 0 every row valid and funded; 2 invalid rows, short funds, or an
unreadable sheet; 4 the provider cannot be reached or refuses the key.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click

from batcher.cli import common, finish
from batcher.cli.render import column_lines, render_summary
from batcher.cli.terminal import echo
from batcher.core.errors import ExitCode
from batcher.execute.check import SheetReading
from batcher.services import validate_sheet


@click.command()
@click.argument("sheet", type=click.Path(path_type=Path))
@common.provider_options
@common.sheet_options
@common.report_dir_option
@common.json_option
@common.payout_options
@common.handle_errors
def validate(
    sheet: Path,
    provider: str,
    base_url: str | None,
    sheet_name: str | None,
    mapping: Sequence[str],
    allow_duplicates: bool,
    skip_hidden: bool,
    report_dir: Path,
    as_json: bool,
    payouts: bool,
    campaign: str | None,
    expires_in_days: int | None,
) -> None:
    """Check SHEET against the provider's catalog and wallets; order nothing."""
    parsed_map = common.parse_mappings(mapping)
    outcome = validate_sheet(
        common.resolve_settings(provider, base_url),
        sheet,
        SheetReading(sheet_name, parsed_map, allow_duplicates, skip_hidden, common.read_limits()),
        provider_options=common.provider_mode(payouts, campaign, expires_in_days),
        report_dir=report_dir,
        write_json=as_json,
    )
    if as_json:
        common.echo_json(outcome.document)
    else:
        # which column feeds which field, and what is not sent: before the verdict
        for level, text in column_lines(outcome.result.sheet, parsed_map):
            echo(text if level == "INFO" else f"warning: {text}")
        echo(
            render_summary(
                outcome.result.sheet, outcome.result, outcome.csv_path, outcome.funds_notes
            )
        )
    finish(int(ExitCode.OK if outcome.result.ok else ExitCode.USAGE))
