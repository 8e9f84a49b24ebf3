"""What valid rows cost, exactly: integer arithmetic agreeing with `money.cost_after_discount`."""

from __future__ import annotations

from decimal import Decimal

import polars as pl

from batcher.core.money import (
    cost_after_discount,
    minor_units,
    money_str,
)
from batcher.intake.amounts import AMOUNT_SCALE
from batcher.intake.scans import ORDER_ID, ORDER_ROWS, Rows


def orders_of_valid_rows(
    rows: Rows, orders: pl.DataFrame, valid_mask: pl.Series | None
) -> pl.DataFrame:
    """The orders that valid rows use, normalised with their cost, and `order_rows`
    counting only those valid rows."""
    if valid_mask is None:  # every row valid: every order is used, by all its rows
        return _normalised_orders(orders).with_columns(orders[ORDER_ROWS])
    invalid_per_order = (
        rows.order_of_row.filter(~valid_mask).alias(ORDER_ID).to_frame().group_by(ORDER_ID)
    ).len("_invalid")
    counts = (
        orders.select(ORDER_ID, ORDER_ROWS)
        .join(invalid_per_order, on=ORDER_ID, how="left", maintain_order="left")
        .select(ORDER_ID, pl.col(ORDER_ROWS) - pl.col("_invalid").fill_null(0))
        .filter(pl.col(ORDER_ROWS) > 0)
    )
    used = orders.join(counts, on=ORDER_ID, how="semi", maintain_order="left")
    return _normalised_orders(used).join(counts, on=ORDER_ID, maintain_order="left")


def cost_totals(orders: pl.DataFrame) -> dict[str, Decimal]:
    """Total cost per currency, exact: each order's cost times its number of valid rows."""
    totals: dict[str, Decimal] = {}
    if orders["cost_minor"].null_count() == 0:
        sums = orders.group_by("currency").agg(
            (pl.col("cost_minor") * pl.col(ORDER_ROWS)).sum().alias("total")
        )
        for currency, total in sums.iter_rows():
            totals[currency] = Decimal(int(total)).scaleb(-minor_units(currency))
    else:
        for currency, cost, count in orders.select("currency", "cost", ORDER_ROWS).iter_rows():
            totals[currency] = totals.get(currency, Decimal(0)) + Decimal(cost) * count
    return {c: totals[c] for c in sorted(totals)}


def _normalised_orders(orders: pl.DataFrame) -> pl.DataFrame:
    """Valid orders as they go to the provider, with their cost.

    `cost` is what `money.cost_after_discount` gives, as text; `cost_minor` the
    same in the currency's minor units (null on the rare exact-Decimal path).
    The runner and reconciliation use the same function, so the figures agree.
    """
    normal_amount = pl.when(pl.col("minor_units") == 0).then(pl.col("amount_int")).otherwise(
        pl.col("amount_int") + pl.lit(".") + pl.col("amount_frac").str.pad_end(
            pl.col("minor_units"), "0"
        )
    )  # fmt: skip
    normal = orders.select(
        pl.col(ORDER_ID),
        pl.col("cat_code").alias("product_code"),
        pl.col("cat_merchant").alias("merchant"),
        normal_amount.alias("amount"),
        "currency",
        "country",
        "payment_currency",
        pl.col("cat_discount").alias("discount"),
        pl.col("amount_scaled").cast(pl.Int128).alias("_scaled"),
        pl.col("minor_units").alias("_minor"),
    )
    factors = {d: _discount_factor(d) for d in normal["discount"].unique().to_list()}
    if any(f is None for f in factors.values()):  # see _discount_factor: the exact Decimal path
        costs = [
            money_str(cost_after_discount(Decimal(amount), Decimal(discount), currency), currency)
            for amount, discount, currency in normal.select("amount", "discount", "currency").rows()
        ]
        return normal.drop("_scaled", "_minor").with_columns(
            pl.Series("cost", costs, dtype=pl.String), pl.lit(None, pl.Int128).alias("cost_minor")
        )
    units = pl.col("_scaled") * pl.col("discount").replace_strict(factors, return_dtype=pl.Int128)
    minor = pl.col("_minor")
    return (
        normal.with_columns(_cost_minor(units, minor).alias("cost_minor"))
        .with_columns(_minor_units_text(pl.col("cost_minor"), minor).alias("cost"))
        .drop("_scaled", "_minor")
    )


# Cost without a Python loop: amount (1/10^4 units) x (100 - discount) (1/10^6 units)
# is an exact integer in 1/10^12 of a unit (x 1/100 for the percentage), rounded half-up
# to the currency's minor units with integer arithmetic. Same result as
# money.cost_after_discount; a property test checks it.
_DISCOUNT_DECIMALS = 6
_COST_SCALE = AMOUNT_SCALE + _DISCOUNT_DECIMALS + 2


def _discount_factor(discount: str) -> int | None:
    """(100 - discount) in 1/10^6, or None when the integer path cannot take it: a
    discount finer than 1e-6 %, or one of 100 % or more (a cost of zero or less,
    which `money.cost_after_discount` rounds as a Decimal)."""
    factor = (Decimal(100) - Decimal(discount)).scaleb(_DISCOUNT_DECIMALS)
    if factor <= 0 or factor != factor.to_integral_value():
        return None
    return int(factor)


def _cost_minor(units: pl.Expr, minor: pl.Expr) -> pl.Expr:
    """`units` (1/10^_COST_SCALE, not negative) rounded half-up to `minor` decimals,
    as an integer count of those (pence for GBP)."""
    rounded: pl.Expr = pl.lit(None, dtype=pl.Int128)
    for places in range(AMOUNT_SCALE, -1, -1):
        divisor = 10 ** (_COST_SCALE - places)
        rounded = (
            pl.when(minor == places).then((units + divisor // 2) // divisor).otherwise(rounded)
        )
    return rounded


def _minor_units_text(amount: pl.Expr, minor: pl.Expr) -> pl.Expr:
    """An integer count of minor units as decimal text: 4750 with 2 places -> '47.50'."""
    text: pl.Expr = amount.cast(pl.String)
    for places in range(1, AMOUNT_SCALE + 1):
        whole = (amount // 10**places).cast(pl.String)
        frac = (amount % 10**places).cast(pl.String).str.pad_start(places, "0")
        text = (
            pl.when(minor == places).then(pl.concat_str([whole, pl.lit("."), frac])).otherwise(text)
        )
    return text
