"""Validate recipient rows: cell rules, the provider's catalog, and the wallets.

`validate_rows` is what both `batcher validate` and `batcher run` call, so a
sheet that validates is exactly a sheet that runs. It is pure: the caller
reads the sheet and fetches the catalog and balances (once), and this module
only computes.

Everything is vectorised with polars so a million rows cost little more than
reading them. The order cells (product, merchant, amount, currency, country,
payment currency) repeat a lot, so they are checked once per *distinct
combination* ("order"), then each row picks up its order's verdict through an
integer key. Catalog rules are joins of those orders against a catalog frame.
The per-recipient cells (reference, email, name, message) are first probed as
read, with cheap vectorised scans; a check that the probes show can find
nothing is skipped, and a trimmed copy of the cells is made only when a check
(or `ValidationResult.valid`) needs it. A property test holds these shortcuts
to plain Python. Python only sees the few values that need it: unusual amount
spellings and emails the fast pattern does not accept. Costs are exact integer
arithmetic, property-tested against `money.cost_after_discount`.

Every input row ends in exactly one of `valid` and `invalid`, and every reason
a row is invalid is one line in `errors`: source row, the user's header,
a stable snake_case code, a message and a hint.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import polars as pl

from batcher.core.fields import CANONICAL_FIELDS, SOURCE_ROW
from batcher.core.models import Balance, Product
from batcher.intake.amounts import add_amount_columns, amount_errors
from batcher.intake.catalog import catalog_errors, catalog_frame, join_catalog, unique_products
from batcher.intake.costs import cost_totals, orders_of_valid_rows
from batcher.intake.duplicates import duplicate_errors
from batcher.intake.report import REPORT_COLUMNS, report_records, validation_document
from batcher.intake.result import (
    ERROR_SCHEMA,
    VALID_COLUMNS,
    Funding,
    FundingError,
    ValidationResult,
)
from batcher.intake.rules import (
    ISO_COUNTRIES,
    MESSAGE_MAX_CHARS,
    NAME_MAX_CHARS,
    REFERENCE_MAX_CHARS,
    code_errors,
    email_errors,
    header_currency_errors,
    issue_errors,
    missing_recipient_errors,
    missing_value_errors,
    text_errors,
)
from batcher.intake.scans import (
    FAST_EMAIL,
    ORDER_FIELDS,
    ORDER_ID,
    ORDER_ROWS,
    RECIPIENT_FIELDS,
    Rows,
    scan_rows,
)
from batcher.intake.sheet import Sheet
from batcher.intake.xlsx_issues import CELL_EXPLAINED

# Callers import the validation API from here; the pieces live in the modules above.
__all__ = [
    "ERROR_SCHEMA",
    "FAST_EMAIL",
    "ISO_COUNTRIES",
    "MESSAGE_MAX_CHARS",
    "NAME_MAX_CHARS",
    "ORDER_FIELDS",
    "RECIPIENT_FIELDS",
    "REFERENCE_MAX_CHARS",
    "REPORT_COLUMNS",
    "VALID_COLUMNS",
    "Funding",
    "FundingError",
    "ValidationResult",
    "catalog_frame",
    "report_records",
    "validate_rows",
    "validation_document",
]


def validate_rows(
    sheet: Sheet,
    catalog: Sequence[Product],
    balances: Sequence[Balance],
    *,
    allow_duplicates: bool = False,
) -> ValidationResult:
    """Check every row of `sheet` against the cell rules, `catalog` and `balances`.

    All errors are collected in one pass. Identical rows are errors unless
    `allow_duplicates`; a repeated reference always is.
    """
    products = unique_products(catalog)
    catalog_df = catalog_frame(products)

    def order_checks(orders: pl.DataFrame) -> tuple[pl.DataFrame, list[pl.LazyFrame]]:
        """The orders with their amounts parsed and their catalog product, and their errors."""
        orders = add_amount_columns(orders, sheet.source.decimal_comma)
        orders = join_catalog(orders, products, catalog_df)
        errors = [
            *missing_value_errors(orders, sheet, ORDER_FIELDS, key=ORDER_ID),
            *code_errors(orders),
            *header_currency_errors(orders, sheet),
            *amount_errors(
                orders,
                from_excel=sheet.source.file_format == "xlsx",
                decimal_comma=sheet.source.decimal_comma,
            ),
            *catalog_errors(orders, catalog_df),
        ]
        return orders, [f.lazy() for f in pl.collect_all(errors)]

    # The order checks run on scan_rows' worker thread, beside the row probes.
    (orders, order_errors), rows, facts = scan_rows(sheet, order_checks)
    row_errors = [
        *missing_recipient_errors(rows, sheet, facts),
        *text_errors(rows, facts),
        *email_errors(facts),
        *duplicate_errors(rows, orders, facts, allow_duplicates=allow_duplicates),
        *issue_errors(sheet),
    ]
    errors = _finish_errors(rows, order_errors, row_errors, sheet)
    invalid_rows = frozenset(errors[SOURCE_ROW].unique().to_list())

    if invalid_rows:
        is_invalid = pl.col(SOURCE_ROW).is_in(
            pl.Series(list(invalid_rows), dtype=pl.Int64).implode()
        )
        invalid = sheet.frame.filter(is_invalid)
        valid_mask = sheet.frame.select(~is_invalid).to_series()
    else:
        invalid = sheet.frame.clear()
        valid_mask = None
    valid_orders = orders_of_valid_rows(rows, orders, valid_mask)
    return ValidationResult(
        sheet=sheet,
        invalid=invalid,
        errors=errors,
        invalid_rows=invalid_rows,
        funding=Funding.of(
            cost_totals(valid_orders), {b.currency.upper(): b.available for b in balances}
        ),
        valid_rows=partial(_valid_frame, rows, orders, valid_orders, sheet, valid_mask),
    )


def _finish_errors(
    rows: Rows,
    order_errors: Sequence[pl.LazyFrame],
    row_errors: Sequence[pl.LazyFrame],
    sheet: Sheet,
) -> pl.DataFrame:
    """Every error keyed by source row, with the user's header, ordered by row and column."""
    collected = pl.collect_all([*order_errors, *row_errors])
    by_order = [f for f in collected[: len(order_errors)] if f.height]
    by_row = [f for f in collected[len(order_errors) :] if f.height]
    if by_order:
        per_order = pl.concat(by_order)
        failing = per_order[ORDER_ID].unique()
        by_row.append(
            rows.of_orders(failing).join(per_order, on=ORDER_ID, how="inner").drop(ORDER_ID)
        )
    if not by_row:
        return pl.DataFrame(schema=ERROR_SCHEMA)
    headers = {name: sheet.header_for(name) for name in CANONICAL_FIELDS}
    position = {
        name: sheet.headers.index(header) if header in sheet.headers else len(sheet.headers)
        for name, header in headers.items()
    }
    errors = pl.concat([f.select(list(ERROR_SCHEMA)) for f in by_row])
    errors = errors.with_columns(
        pl.coalesce(
            pl.col("column"), pl.col("field").replace_strict(headers, default=pl.col("field"))
        ).alias("column"),
        pl.col("field")
        .replace_strict(position, default=len(sheet.headers), return_dtype=pl.Int64)
        .alias("_position"),
    )
    explained = [(i.source_row, i.field) for i in sheet.issues if i.code in CELL_EXPLAINED]
    if explained:
        cells = pl.DataFrame(
            explained, schema={SOURCE_ROW: pl.Int64, "field": pl.String}, orient="row"
        )
        repeats = errors.filter(~pl.col("code").is_in(list(CELL_EXPLAINED))).join(
            cells, on=[SOURCE_ROW, "field"], how="semi"
        )
        errors = errors.join(repeats, on=list(ERROR_SCHEMA), how="anti", nulls_equal=True)
    return errors.sort(SOURCE_ROW, "_position", "code").select(list(ERROR_SCHEMA))


def _valid_frame(
    recipients: Rows,
    orders: pl.DataFrame,
    valid_orders: pl.DataFrame,
    sheet: Sheet,
    valid_mask: pl.Series | None,
) -> pl.DataFrame:
    """The valid rows, normalised, with their cost (`ValidationResult.valid`)."""
    # source_row keeps the frame's height when there is no pass-through column
    passthrough = sheet.frame.select(SOURCE_ROW, *sheet.passthrough)
    rows = recipients.cells
    if valid_mask is not None:
        rows, passthrough = rows.filter(valid_mask), passthrough.filter(valid_mask)
    # Each row picks up its order's normalised cells by position (`order_id` is
    # the order's row number in `orders`): cheaper than a join on a million rows.
    # Built from 0..n-1 rather than from `orders`, so it holds whatever order
    # the joins before left `orders` in.
    every_order_id = pl.int_range(orders.height, dtype=pl.UInt32, eager=True).alias(ORDER_ID)
    by_order_id = (
        every_order_id.to_frame()
        .join(valid_orders, on=ORDER_ID, how="left", maintain_order="left")
        .drop(ORDER_ID, ORDER_ROWS, "cost_minor")
    )
    picked = by_order_id.select(pl.all().gather(rows[ORDER_ID]))
    cells = {
        **{name: rows[name] for name in (SOURCE_ROW, *RECIPIENT_FIELDS)},
        **{name: picked[name] for name in picked.columns},
    }
    # One chunk per column: filters can leave the two halves cut differently,
    # and polars 2.1 has kernels that panic on such frames (see duplicate_errors).
    return (
        pl.DataFrame([cells[name] for name in VALID_COLUMNS])
        .hstack(passthrough.drop(SOURCE_ROW))
        .rechunk()
    )
