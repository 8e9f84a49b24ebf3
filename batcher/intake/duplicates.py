"""Repeated references and identical rows."""

from __future__ import annotations

import polars as pl

from batcher.core.fields import SOURCE_ROW
from batcher.intake.rules import error_rows, shortened
from batcher.intake.scans import ORDER_ID, RowFacts, Rows


def duplicate_errors(
    rows: Rows, orders: pl.DataFrame, facts: RowFacts, *, allow_duplicates: bool
) -> list[pl.LazyFrame]:
    """A repeated reference is always an error; identical rows unless allowed.

    References compare case-insensitively: 'rw-1' and 'RW-1' would be two
    orders for what is surely one. Rows with a reference are never 'identical'
    to each other unless their references are, which the first check reports.
    Both checks first compare 64-bit hashes, which is cheap, and only compare
    the text itself for the rows whose hashes repeat.
    """
    frames: list[pl.LazyFrame] = []
    ref_key = pl.col("reference").str.to_uppercase()
    missing_refs = rows.cells["reference"].null_count() if facts.may_be_blank["reference"] else 0
    if facts.references_may_repeat:
        cells = rows.cells
        # Filtering copies every column; skip it when all rows (or none) have a reference.
        referenced = cells if not missing_refs else cells.filter(pl.col("reference").is_not_null())
        frames += _later_repeats(
            referenced.select(SOURCE_ROW, "reference"),
            ref_key,
            field="reference",
            code="duplicate_reference",
            message=pl.format(
                "reference '{}' is already used on row {}",
                shortened(pl.col("reference")),
                pl.col(_FIRST),
            ),
            hint="give every row its own reference; remove the row if it is a duplicate",
        )
    if allow_duplicates or missing_refs < 2:
        return frames
    unreferenced = rows.cells.filter(pl.col("reference").is_null())
    # Orders that differ only in spelling (' gbp' and 'GBP') are the same order.
    same_order = orders.select(
        pl.struct(
            pl.col("product_code").str.to_uppercase(),
            pl.coalesce(pl.col("amount_scaled").cast(pl.String), pl.col("amount")),
            "currency",
            "country",
            "payment_currency",
        )
        .rank("dense")
        .alias("_same_order")
    ).to_series()
    identity = pl.struct(
        pl.col("recipient_email").str.to_lowercase(),
        pl.col("recipient_name"),
        pl.col("message"),
        pl.col(ORDER_ID).replace_strict(orders[ORDER_ID], same_order, return_dtype=pl.UInt64),
    )
    frames += _later_repeats(
        unreferenced,
        identity,
        field="recipient_email",
        code="duplicate_row",
        message=pl.format(
            "identical to row {} (same recipient, product and amount)", pl.col(_FIRST)
        ),
        hint="remove the duplicate, or pass --allow-duplicates if both orders are intended",
    )
    return frames


_FIRST = "_first"  # the earliest row that has a repeated key


def _later_repeats(
    rows: pl.DataFrame, key: pl.Expr, *, field: str, code: str, message: pl.Expr, hint: str
) -> list[pl.LazyFrame]:
    """Errors for every row whose `key` an earlier row has; `message` may name `_FIRST`."""
    repeats = _rows_sharing(rows, key)
    if not repeats.height:
        return []
    # polars 2.1 can panic formatting a frame whose chunks `over` left
    # misaligned; this frame holds only the repeats, so a copy is cheap.
    repeats = repeats.rechunk().with_columns(pl.col(SOURCE_ROW).min().over(key).alias(_FIRST))
    return [
        error_rows(
            repeats,
            pl.col(SOURCE_ROW) != pl.col(_FIRST),
            field=field,
            code=code,
            message=message,
            hint=hint,
        )
    ]


def _rows_sharing(rows: pl.DataFrame, key: pl.Expr) -> pl.DataFrame:
    """Rows whose `key` value appears more than once."""
    if rows.height < 2:
        return rows.clear()
    # Count 64-bit hashes first, which is cheap, then compare the text itself
    # only on the few rows whose hash repeats.
    hashes = rows.select(key.hash().alias("_hash")).to_series()
    counts = hashes.to_frame().group_by("_hash").len()
    if counts.height == rows.height:
        return rows.clear()  # all hashes differ, so all keys differ
    repeated = counts.filter(pl.col("len") > 1)["_hash"]
    candidates = rows.filter(hashes.is_in(repeated.implode()))
    return candidates.filter(key.is_duplicated())
