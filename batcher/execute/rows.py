"""From a validation result to the rows the ledger tracks, with their keys.

Valid rows get row keys per docs/architecture.md (reference, or fields + occurrence);
invalid rows get keys of their own so that every input row is in the ledger and
in the report, exactly once.
"""

from __future__ import annotations

from decimal import Decimal

from batcher.execute.plan import RowFields, invalid_row_keys, row_keys
from batcher.intake.read import CANONICAL_FIELDS, SOURCE_ROW
from batcher.intake.validate import ValidationResult
from batcher.ledger.store import SheetRow


def _text(value: object) -> str:
    return "" if value is None else str(value)


def sheet_rows_from_validation(result: ValidationResult) -> list[SheetRow]:
    passthrough = list(result.sheet.passthrough)
    valid = result.valid.to_dicts()
    fields = [
        RowFields(
            recipient_email=_text(r["recipient_email"]),
            product_code=_text(r["product_code"]),
            amount=Decimal(r["amount"]),
            currency=_text(r["currency"]),
            recipient_name=_text(r["recipient_name"]),
            message=_text(r["message"]),
            country=_text(r["country"]),
            payment_currency=_text(r.get("payment_currency")),
        )
        for r in valid
    ]
    keys = row_keys(
        [(_text(r["reference"]) or None, f) for r, f in zip(valid, fields, strict=True)]
    )
    rows: list[SheetRow] = []
    for record, row_fields, key in zip(valid, fields, keys, strict=True):
        rows.append(
            SheetRow(
                row_key=key,
                source_row=int(record[SOURCE_ROW]),
                reference=_text(record["reference"]) or None,
                content_hash=row_fields.content_hash(),
                fields={name: _text(record.get(name)) for name in CANONICAL_FIELDS},
                passthrough={h: _text(record.get(h)) for h in passthrough},
                currency=row_fields.currency,
                face_value=row_fields.amount,
                est_cost=Decimal(record["cost"]) if record.get("cost") else None,
                valid=True,
            )
        )
    rows.extend(_invalid_rows(result, passthrough))
    rows.sort(key=lambda r: r.source_row)
    return rows


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
