"""`batcher validate SHEET`: every check `batcher run` makes, without placing an order.

A thin shell over `batcher.services.validate_sheet`, which takes the very path
`run` takes (`batcher.execute.check.check_sheet`). Prints a short summary and
writes `REPORT_DIR/<sheet stem>/validation.csv` (every error) and, with --json,
`validation.json` plus the same document on stdout.

Exit codes: 0 every row valid and funded; 2 invalid rows, short funds, or an
unreadable sheet; 4 the provider cannot be reached or refuses the key.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

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
)
from batcher.cli.render import render_summary
from batcher.cli.terminal import echo
from batcher.core.errors import ExitCode
from batcher.services import validate_sheet


@click.command()
@click.argument("sheet", type=click.Path(path_type=Path))
@provider_options
@sheet_options
@report_dir_option
@json_option
@payout_options
@handle_errors
def validate(
    sheet: Path,
    provider: str,
    base_url: str | None,
    sheet_name: str | None,
    mapping: Sequence[str],
    allow_duplicates: bool,
    report_dir: Path,
    as_json: bool,
    payouts: bool,
    campaign: str | None,
    expires_in_days: int | None,
) -> None:
    """Check SHEET against the provider's catalog and wallets; order nothing."""
    outcome = validate_sheet(
        resolve_settings(provider, base_url),
        sheet,
        sheet_name=sheet_name,
        mapping=parse_mappings(mapping),
        allow_duplicates=allow_duplicates,
        provider_options=provider_mode(payouts, campaign, expires_in_days),
        report_dir=report_dir,
        write_json=as_json,
    )
    if as_json:
        echo_json(outcome.document)
    else:
        echo(render_summary(outcome.result.sheet, outcome.result, outcome.csv_path))
    sys.exit(int(ExitCode.OK if outcome.result.ok else ExitCode.USAGE))
