"""`batcher statement --from DAY --to DAY`: the month-end statement for finance.

One workbook over every batch with orders in the period (at the chosen
provider and account): spend per currency, product and cost centre, the
wallet's top-ups and debits, and opening and closing balances tied out to the
provider's transactions. See `batcher.reporting.statement`.

Exit codes: 0 every wallet ties out; 1 a difference (the workbook says where);
2 usage; 4 the provider cannot be reached.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import click

from batcher.cli.common import (
    handle_errors,
    report_options,
    resolve_ledger,
    resolve_settings,
)
from batcher.cli.terminal import echo
from batcher.core.errors import ExitCode
from batcher.core.money import format_money
from batcher.reporting.verdicts import RECONCILED
from batcher.services import statement as build


@click.command()
@click.option("--from", "first", type=click.DateTime(["%Y-%m-%d"]), required=True,
              help="First day of the period (UTC), e.g. 2026-11-01.")  # fmt: skip
@click.option("--to", "last", type=click.DateTime(["%Y-%m-%d"]), required=True,
              help="Last day of the period (UTC), included, e.g. 2026-11-30.")  # fmt: skip
@report_options
@handle_errors
def statement(
    first: datetime,
    last: datetime,
    provider: str,
    base_url: str | None,
    state_dir: Path | None,
    ledger_url: str | None,
    report_dir: Path,
) -> None:
    """Write REPORT_DIR/statements/statement-FROM-to-TO-<time>.xlsx for finance."""
    folder, location = resolve_ledger(state_dir, ledger_url)
    result = build(
        folder,
        resolve_settings(provider, base_url),
        first.date(),
        last.date(),
        report_dir=report_dir,
        location=location,
    )
    st = result.statement
    echo(f"statement {first.date()} to {last.date()}: {st.verdict}; batches {len(st.batches)}")
    for w in st.wallets:
        c = w.currency
        echo(
            f"  {c}: opening {format_money(w.opening, c)}, top-ups {format_money(w.top_ups, c)}, "
            f"batcher orders {format_money(w.order_debits, c)} ({w.orders} orders), other "
            f"debits {format_money(w.other_debits, c)}, closing {format_money(w.closing, c)}: "
            f"{w.verdict}"
        )
    echo(f"statement: {result.workbook}")
    if st.verdict != RECONCILED:
        sys.exit(int(ExitCode.SOME_FAILED))
