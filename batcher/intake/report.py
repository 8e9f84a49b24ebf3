"""The verdict as report lines and as a JSON-ready document (pure: the CLI writes the files)."""

from __future__ import annotations

from decimal import Decimal

from batcher.core.fields import SOURCE_ROW
from batcher.core.money import (
    money_str,
)
from batcher.intake.result import ValidationResult
from batcher.intake.sheet import Sheet

#: columns of the validation report, one line per row error or funding error
REPORT_COLUMNS: tuple[str, ...] = ("row", "column", "code", "message", "hint", "value")


def report_records(result: ValidationResult) -> list[dict[str, str | int | None]]:
    """Every row error, then every funding error, as report lines (`REPORT_COLUMNS`)."""
    records: list[dict[str, str | int | None]] = [
        {
            "row": row,
            "column": column,
            "code": code,
            "message": message,
            "hint": hint,
            "value": value,
        }
        for row, column, code, message, hint, value in result.errors.select(
            SOURCE_ROW, "column", "code", "message", "hint", "value"
        ).iter_rows()
    ]
    records += [
        {
            "row": None,
            "column": "",
            "code": funding.code,
            "message": funding.message,
            "hint": funding.hint,
            "value": "",
        }
        for funding in result.funding.errors
    ]
    return records


def validation_document(sheet: Sheet, result: ValidationResult) -> dict[str, object]:
    """The whole verdict as JSON-ready data; money as decimal strings, never floats."""
    currencies = result.funding.currencies
    money = {}
    for currency in currencies:
        cost = result.funding.cost_by_currency.get(currency, Decimal(0))
        available = result.funding.available_by_currency.get(currency)
        short = max(cost - (available or Decimal(0)), Decimal(0))
        money[currency] = {
            "cost": money_str(cost, currency),
            "available": money_str(available, currency) if available is not None else None,
            "shortfall": money_str(short, currency),
        }
    return {
        "file": str(sheet.source.path),
        "sheet": sheet.source.sheet_name,
        "sha256": sheet.sha256,
        "format": sheet.source.file_format,
        "encoding": sheet.source.encoding,
        "delimiter": sheet.source.delimiter,
        "header_row": sheet.header_row,
        "columns": sheet.columns,
        "passthrough_columns": list(sheet.passthrough),
        "rows_read": result.rows_read,
        "valid_rows": result.valid_count,
        "invalid_rows": len(result.invalid_rows),
        "blank_rows_skipped": sheet.blank_rows,
        "ok": result.ok,
        "currencies": money,
        "errors": [r for r in report_records(result) if r["row"] is not None],
        "funding_errors": [
            {
                "currency": f.currency,
                "needed": money_str(f.needed, f.currency),
                "available": money_str(f.available, f.currency),
                "shortfall": money_str(f.shortfall, f.currency),
                "code": f.code,
                "message": f.message,
                "hint": f.hint,
            }
            for f in result.funding.errors
        ],
    }
