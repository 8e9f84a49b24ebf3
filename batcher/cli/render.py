"""Plain-text renderings of library results that more than one command prints."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from batcher.core.money import format_money
from batcher.intake.read import Sheet, normalise_header
from batcher.intake.validate import ValidationResult, report_records

ERRORS_SHOWN = 20  # the terminal shows the first ones; the report has them all


def render_summary(
    sheet: Sheet, result: ValidationResult, report: Path, funds_notes: Sequence[str] = ()
) -> str:
    """What a person reads at the terminal: counts, money per currency (per paying
    wallet), the first errors, and what the funds check could not verify."""
    rows = "row" if result.rows_read == 1 else "rows"
    lines = [
        f"{sheet.label}: {result.rows_read} {rows} read, {result.valid_count} valid, "
        f"{len(result.invalid_rows)} invalid",
    ]
    for currency in result.funding.currencies:
        cost = result.funding.cost_by_currency.get(currency)
        if cost is None:
            continue
        available = result.funding.available_by_currency.get(currency)
        funds = format_money(available, currency) if available is not None else "no wallet"
        lines.append(f"  {currency}  cost {format_money(cost, currency)}  available {funds}")
    records = report_records(result)
    if records:
        lines.append(f"{len(records)} error{'s' if len(records) != 1 else ''}:")
        lines += [_error_line(record) for record in records[:ERRORS_SHOWN]]
        if len(records) > ERRORS_SHOWN:
            lines.append(f"  ... and {len(records) - ERRORS_SHOWN} more in the report")
    lines.append(f"Report: {report}")
    lines += [f"  {note}" for note in funds_notes]
    if result.ok and funds_notes:
        lines.append("Valid; funds not verified for the rows above (no FX rate known yet).")
    elif result.ok:
        lines.append("OK: every row is valid and funded.")
    else:
        lines.append("Not ready: fix the errors and validate again. Nothing was ordered.")
    return "\n".join(lines)


def _error_line(record: dict[str, str | int | None]) -> str:
    where = f"row {record['row']}" if record["row"] is not None else "funds"
    column = f" {record['column']}" if record["column"] else ""
    hint = f" ({record['hint']})" if record["hint"] else ""
    return f"  {where}{column}: {record['code']}: {record['message']}{hint}"


#: a dropped column with one of these words is probably a field the sheet meant to send
_FIELD_LIKE = re.compile(r"note|msg|message|comment|remark|memo|greeting|dedication", re.I)


def column_lines(sheet: Sheet, mapped: Mapping[str, str]) -> list[tuple[str, str]]:
    """(level, text) lines saying which column feeds which field, and which are not sent.

    taken: the header is the field's own name; mapped: --map said so; inferred: an
    alias ("Cur" -> currency). Columns not sent are warnings when they look like a
    message, since a dropped gift message is silent everywhere else.
    """
    lines: list[tuple[str, str]] = []
    for field, header in sheet.columns.items():
        if field in mapped:
            how = "mapped"
        elif normalise_header(header) == field.replace("_", ""):
            how = "taken"
        else:
            how = "inferred"
        lines.append(("INFO", f"column {header!r} -> {field} ({how})"))
    for header in sheet.passthrough:
        if _FIELD_LIKE.search(header):
            lines.append(
                (
                    "WARN",
                    f"column {header!r} is not sent to the provider; if it is the gift "
                    f"message, rerun with --map message={header!r}",
                )
            )
        else:
            lines.append(("INFO", f"column {header!r} -> not sent (kept in the reports)"))
    # What the reader saw but did not refuse: hidden rows or columns, and the like.
    for issue in sheet.warnings:
        hint = f" ({issue.hint})" if issue.hint else ""
        lines.append(("WARN", f"{issue.message}{hint}"))
    return lines
