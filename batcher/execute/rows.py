"""From a validation result to the rows the ledger tracks, with their keys.

Valid rows get row keys per docs/architecture.md (reference, or fields + occurrence);
invalid rows get keys of their own so that every input row is in the ledger and
in the report, exactly once.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING

from batcher.execute.plan import (
    RowFields,
    content_hash_of,
    invalid_row_keys,
    reference_row_key,
    row_keys,
)
from batcher.intake.read import CANONICAL_FIELDS, SOURCE_ROW
from batcher.intake.validate import ValidationResult
from batcher.ledger.store import SheetRow

if TYPE_CHECKING:
    import polars as pl


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _text_columns(frame: pl.DataFrame, names: Sequence[str]) -> list[list[str]]:
    """Each named column as text, a list per column ('' for an empty cell or a column the
    frame lacks): one conversion per column instead of a dict per row."""
    import polars as pl

    return [
        frame.get_column(name).cast(pl.String).fill_null("").to_list()
        if name in frame.columns
        else [""] * frame.height
        for name in names
    ]


#: valid rows turned into `SheetRow`s at a time: memory is bounded by the slice
SLICE_ROWS = 20_000


def sheet_rows_from_validation(result: ValidationResult) -> list[SheetRow]:
    """Every row of the sheet for the ledger, in sheet order, as one list."""
    return list(iter_sheet_rows(result))


def iter_sheet_rows(result: ValidationResult, slice_rows: int = SLICE_ROWS) -> Iterator[SheetRow]:
    """Every row of the sheet for the ledger, in sheet order, built a slice of the
    valid frame at a time: a million rows never exist as objects all at once."""
    passthrough = list(result.sheet.passthrough)
    valid = result.valid
    invalid = _invalid_rows(result, passthrough)
    invalid.sort(key=lambda r: r.source_row)
    seen: Counter[bytes] = Counter()  # occurrences of unreferenced rows, across slices
    slices = (
        _valid_slice(valid.slice(start, slice_rows), passthrough, seen)
        for start in range(0, valid.height, slice_rows)
    )
    # The valid frame is in sheet order; the invalid rows are merged in by their row.
    yield from heapq.merge(
        (row for part in slices for row in part), invalid, key=lambda r: r.source_row
    )


def _valid_slice(
    valid: pl.DataFrame, passthrough: list[str], seen: Counter[bytes]
) -> list[SheetRow]:
    canonical = _text_columns(valid, CANONICAL_FIELDS)
    extra = _text_columns(valid, passthrough)
    (costs,) = _text_columns(valid, ["cost"])
    sources = valid.get_column(SOURCE_ROW).to_list()
    records = [
        dict(zip(CANONICAL_FIELDS, values, strict=True)) for values in zip(*canonical, strict=True)
    ]
    amounts = [Decimal(r["amount"]) for r in records]
    keys = _keys(records, amounts, seen)
    others = list(zip(*extra, strict=True)) if extra else [()] * valid.height
    rows: list[SheetRow] = []
    for record, amount, key, source, cost, other in zip(
        records, amounts, keys, sources, costs, others, strict=True
    ):
        currency = record["currency"]
        rows.append(
            SheetRow(
                row_key=key,
                source_row=int(source),
                reference=record["reference"] or None,
                content_hash=content_hash_of(
                    record["recipient_email"],
                    record["product_code"],
                    amount,
                    currency,
                    record["recipient_name"],
                    record["message"],
                    record["country"],
                    record["payment_currency"],
                ),
                fields=record,
                passthrough=dict(zip(passthrough, other, strict=True)),
                currency=currency,
                face_value=amount,
                est_cost=Decimal(cost) if cost else None,
                valid=True,
            )
        )
    return rows


def _keys(records: list[dict[str, str]], amounts: list[Decimal], seen: Counter[bytes]) -> list[str]:
    """`row_keys` of a slice's rows: a referenced row's key from its reference alone,
    so only the rows without one are made `RowFields` (their fields are the key)."""
    keys: list[str] = []
    unreferenced: list[int] = []
    for record in records:
        reference = record["reference"]
        if reference and reference.strip():
            keys.append(reference_row_key(reference))
        else:
            unreferenced.append(len(keys))
            keys.append("")
    if unreferenced:
        fields = [_row_fields(records[i], amounts[i]) for i in unreferenced]
        for i, key in zip(
            unreferenced, row_keys([(None, f) for f in fields], seen=seen), strict=True
        ):
            keys[i] = key
    return keys


def _row_fields(record: dict[str, str], amount: Decimal) -> RowFields:
    return RowFields(
        recipient_email=record["recipient_email"],
        product_code=record["product_code"],
        amount=amount,
        currency=record["currency"],
        recipient_name=record["recipient_name"],
        message=record["message"],
        country=record["country"],
        payment_currency=record["payment_currency"],
    )


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
