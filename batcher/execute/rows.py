"""From a validation result to the rows the ledger tracks, with their keys.

Valid rows get row keys per docs/architecture.md (reference, or fields + occurrence);
invalid rows get keys of their own so that every input row is in the ledger and
in the report, exactly once.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import polars as pl

from batcher.execute.plan import RowFields, invalid_row_keys, row_keys
from batcher.intake.read import CANONICAL_FIELDS, SOURCE_ROW
from batcher.intake.validate import ValidationResult
from batcher.ledger.store import SheetRow


def _text(value: object) -> str:
    return "" if value is None else str(value)


def sheet_rows_from_validation(result: ValidationResult) -> list[SheetRow]:
    passthrough = list(result.sheet.passthrough)
    valid = result.valid
    # Keys first, from the order columns alone: a row's key depends on the rows
    # before it (its rank among identical rows), so they are made in one pass.
    order_columns = [c for c in _ORDER_COLUMNS if c in valid.columns]
    fields = [_row_fields(r) for r in _records(valid.select(order_columns))]
    references = [_text(r) or None for r in valid["reference"].to_list()]
    keys = row_keys(list(zip(references, fields, strict=True)))
    del references
    rows: list[SheetRow] = []
    # Then the rows, a slice of the frame at a time: a dict per cell row for all of
    # them at once would cost about a kilobyte a row (a gigabyte at a million rows).
    for index, record in enumerate(_records(valid)):
        row_fields, key = fields[index], keys[index]
        rows.append(
            SheetRow(
                row_key=key,
                source_row=int(record[SOURCE_ROW]),
                reference=_text(record["reference"]) or None,
                content_hash=row_fields.content_hash(),
                fields={name: _cell(name, record.get(name)) for name in CANONICAL_FIELDS},
                passthrough={h: _text(record.get(h)) for h in passthrough},
                currency=row_fields.currency,
                face_value=row_fields.amount,
                est_cost=Decimal(record["cost"]) if record.get("cost") else None,
                valid=True,
            )
        )
    del fields, keys
    rows.extend(_invalid_rows(result, passthrough))
    rows.sort(key=lambda r: r.source_row)
    return rows


_ORDER_COLUMNS = (
    "recipient_email", "product_code", "amount", "currency", "recipient_name", "message",
    "country", "payment_currency",
)  # fmt: skip
_SLICE_ROWS = 20_000
#: cells most rows share: one string object for all of them
_SHARED_CELLS = frozenset({"product_code", "currency", "country", "payment_currency", "message"})


def _records(frame: pl.DataFrame) -> Iterator[dict[str, Any]]:
    """The frame's rows as dicts, made a slice at a time."""
    for part in frame.iter_slices(_SLICE_ROWS):
        yield from part.to_dicts()


def _row_fields(record: dict[str, Any]) -> RowFields:
    return RowFields(
        recipient_email=_text(record["recipient_email"]),
        product_code=_cell("product_code", record["product_code"]),
        amount=Decimal(record["amount"]),
        currency=_cell("currency", record["currency"]),
        recipient_name=_text(record["recipient_name"]),
        message=_text(record["message"]),
        country=_cell("country", record["country"]),
        payment_currency=_text(record.get("payment_currency")),
    )


def _cell(name: str, value: object) -> str:
    text = _text(value)
    return sys.intern(text) if name in _SHARED_CELLS else text


def _invalid_rows(result: ValidationResult, passthrough: list[str]) -> list[SheetRow]:
    invalid = result.invalid.to_dicts()
    if not invalid:
        return []
    first_error: dict[int, tuple[str, str]] = {}
    for err in result.errors.iter_rows(named=True):
        row_number = int(err[SOURCE_ROW])
        if row_number not in first_error:
            where = f"column {err['column']}: " if err.get("column") else ""
            first_error[row_number] = (_text(err["code"]), where + _text(err["message"]))
    columns = [c for c in result.invalid.columns if c != SOURCE_ROW]
    keys = invalid_row_keys([tuple(_text(r.get(c)) for c in columns) for r in invalid])
    rows = []
    for record, key in zip(invalid, keys, strict=True):
        row_number = int(record[SOURCE_ROW])
        code, message = first_error.get(row_number, ("invalid", "the row failed validation"))
        rows.append(
            SheetRow(
                row_key=key,
                source_row=row_number,
                reference=None,
                content_hash=key,
                fields={name: _text(record.get(name)) for name in CANONICAL_FIELDS},
                passthrough={h: _text(record.get(h)) for h in passthrough},
                currency=_text(record.get("currency")).strip().upper(),
                face_value=Decimal(0),
                est_cost=None,
                valid=False,
                error_code=code,
                error_message=message,
            )
        )
    return rows
