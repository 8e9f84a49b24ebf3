"""The provider's catalog as frames, the joins of orders against it, and the catalog rules."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from functools import partial

import polars as pl

from batcher.core.models import Product
from batcher.intake.amounts import AMOUNT_SCALE, amount_error_code, currency_is_code
from batcher.intake.rules import ISO_COUNTRIES, error_rows, shortened
from batcher.intake.scans import ORDER_ID


def catalog_frame(products: Sequence[Product]) -> pl.DataFrame:
    """One row per product, keyed for joins.

    Columns: `product_key` (join key: the code upper-cased, or as is when the
    catalog has codes that differ only in case), `cat_code`, `cat_merchant`,
    `cat_currency`, `cat_active`, `cat_min`, `cat_max` (Int64 in 1/10,000),
    `cat_has_denoms`, `cat_denoms` (text for hints), `cat_countries` (text),
    `cat_has_countries`, `cat_discount` (decimal text).
    """
    unique = unique_products(products)
    rows = [
        {
            "product_key": key,
            "cat_code": p.product_code,
            "cat_merchant": p.merchant,
            "cat_currency": p.currency.upper(),
            "cat_active": p.is_active,
            "cat_min": _scaled_bound(p.min_value, upper=False),
            "cat_max": _scaled_bound(p.max_value, upper=True),
            "cat_has_denoms": bool(p.denominations),
            "cat_denoms": ", ".join(_plain(d) for d in sorted(p.denominations)),
            "cat_countries": ", ".join(p.countries),
            "cat_has_countries": bool(p.countries),
            "cat_discount": _plain(p.discount),
        }
        for p, key in zip(unique, _product_keys(products, unique), strict=True)
    ]
    schema = {
        "product_key": pl.String, "cat_code": pl.String, "cat_merchant": pl.String,
        "cat_currency": pl.String, "cat_active": pl.Boolean, "cat_min": pl.Int64,
        "cat_max": pl.Int64, "cat_has_denoms": pl.Boolean, "cat_denoms": pl.String,
        "cat_countries": pl.String, "cat_has_countries": pl.Boolean, "cat_discount": pl.String,
    }  # fmt: skip
    return pl.DataFrame(rows, schema=schema)


def unique_products(products: Sequence[Product]) -> list[Product]:
    seen: dict[tuple[str, str], Product] = {}
    by_currency = _keys_by_currency(products)
    for product in products:
        key = (product.product_code, product.currency.upper() if by_currency else "")
        seen.setdefault(key, product)  # a code listed twice: first wins
    return list(seen.values())


def _keys_by_currency(products: Sequence[Product]) -> bool:
    """Some providers (GIFQ) sell one brand code in several currencies: then a row
    is matched on (code, currency) rather than on the code alone."""
    currencies: dict[str, str] = {}
    for product in products:
        seen = currencies.setdefault(product.product_code.upper(), product.currency.upper())
        if seen != product.currency.upper():
            return True
    return False


def _product_keys(products: Sequence[Product], unique: Sequence[Product]) -> list[str]:
    """The join key of each of `unique` (see `catalog_frame`), in the same order."""
    fold = _case_folds_safely(products)
    by_currency = _keys_by_currency(products)
    keys = []
    for product in unique:
        code = product.product_code.upper() if fold else product.product_code
        keys.append(f"{code}|{product.currency.upper()}" if by_currency else code)
    return keys


def _case_folds_safely(products: Sequence[Product]) -> bool:
    """Match codes case-insensitively unless two catalog codes differ only in case."""
    codes = {p.product_code for p in products}
    return len(codes) == len({c.upper() for c in codes})


def _scaled_bound(value: Decimal | None, *, upper: bool) -> int | None:
    if value is None:
        return None
    scaled = value.scaleb(AMOUNT_SCALE)
    return int(scaled.to_integral_value(rounding="ROUND_FLOOR" if upper else "ROUND_CEILING"))


def _plain(value: Decimal) -> str:
    text = format(value.normalize(), "f")
    return "0" if text == "-0" else text


def _offered(
    products: Sequence[Product],
    catalog: pl.DataFrame,
    values: Callable[[Product], Iterable[object]],
    column: str,
    dtype: type[pl.DataType],
    flag: str,
) -> pl.DataFrame:
    """(product_key, value) for every value a product offers, flagged `flag` for a left join."""
    rows = [
        (key, value)
        for p, key in zip(unique_products(products), catalog["product_key"], strict=True)
        for value in values(p)
    ]
    return pl.DataFrame(
        rows, schema={"product_key": pl.String, column: dtype}, orient="row"
    ).with_columns(pl.lit(True).alias(flag))


def _scaled_denominations(product: Product) -> list[int]:
    # A denomination finer than 1/10,000 can match no amount.
    scaled = (d.scaleb(AMOUNT_SCALE) for d in product.denominations)
    return [int(d) for d in scaled if d == d.to_integral_value()]


def join_catalog(
    orders: pl.DataFrame, products: Sequence[Product], catalog_df: pl.DataFrame
) -> pl.DataFrame:
    """Attach each order's catalog product, and whether its amount and country are offered."""
    code = pl.col("product_code")
    key = code.str.to_uppercase() if _case_folds_safely(products) else code
    if _keys_by_currency(products):
        key = pl.concat_str([key, pl.lit("|"), pl.col("currency")])
    work = orders.with_columns(key.alias("product_key")).join(
        catalog_df, on="product_key", how="left", maintain_order="left"
    )
    offered = (
        (_scaled_denominations, "amount_scaled", pl.Int64, "denomination_ok"),
        (lambda p: [c.upper() for c in p.countries], "country", pl.String, "country_ok"),
    )
    for values, column, dtype, flag in offered:
        work = work.join(
            _offered(products, catalog_df, values, column, dtype, flag),
            on=["product_key", column],
            how="left",
            maintain_order="left",
        )
    return work


def catalog_errors(orders: pl.DataFrame, catalog_df: pl.DataFrame) -> list[pl.LazyFrame]:
    found = pl.col("cat_code").is_not_null()
    code = pl.col("product_code")
    same_currency = pl.col("currency") == pl.col("cat_currency")
    amount_ok = (
        amount_error_code(currency_is_code()).is_null() & pl.col("amount_scaled").is_not_null()
    )
    not_allowed = pl.when(pl.col("cat_has_denoms")).then(
        pl.col("denomination_ok").is_null()
    ).otherwise(
        (pl.col("amount_scaled") < pl.col("cat_min")).fill_null(False)
        | (pl.col("amount_scaled") > pl.col("cat_max")).fill_null(False)
    )  # fmt: skip
    unknown = orders.filter(code.is_not_null() & ~found)["product_code"].unique().to_list()
    suggestions = _product_suggestions(unknown, catalog_df["cat_code"].to_list())
    order_error = partial(error_rows, key=ORDER_ID)
    return [
        order_error(
            orders,
            code.is_not_null() & ~found,
            field="product_code",
            code="unknown_product",
            message=pl.format("there is no product '{}' in the catalog", shortened(code)),
            hint=_suggestion_hint(code, suggestions),
        ),
        order_error(
            orders,
            found & ~pl.col("cat_active"),
            field="product_code",
            code="product_inactive",
            message=_text_of("{} is not available at the moment (inactive)", "cat_code"),
            hint="choose another product; `batcher catalog` lists the active ones",
        ),
        order_error(
            orders,
            found & currency_is_code() & ~same_currency,
            field="currency",
            code="currency_mismatch",
            message=_text_of("{} is sold in {}, not {}", "cat_code", "cat_currency", "currency"),
            hint=_text_of(
                "set the currency to {} or choose a {} product", "cat_currency", "currency"
            ),
        ),
        order_error(
            orders,
            found & same_currency & amount_ok & not_allowed,
            field="amount",
            code="amount_not_allowed",
            message=_text_of(
                "{} {} is not a value {} offers", "amount_plain", "currency", "cat_code"
            ),
            hint=_allowed_amounts_hint(),
            value=shortened(pl.col("amount")),
        ),
        order_error(
            orders,
            found
            & pl.col("cat_has_countries")
            & pl.col("country").is_in(list(ISO_COUNTRIES))
            & pl.col("country_ok").is_null(),
            field="country",
            code="country_not_allowed",
            message=_text_of("{} cannot be sent to {}", "cat_code", "country"),
            hint=_text_of("countries for this product: {}", "cat_countries"),
        ),
        order_error(
            orders,
            found
            & pl.col("merchant").is_not_null()
            & (pl.col("merchant").str.to_lowercase() != pl.col("cat_merchant").str.to_lowercase()),
            field="merchant",
            code="merchant_mismatch",
            message=pl.format(
                "merchant '{}' does not match {}, which is sold by '{}'",
                shortened(pl.col("merchant")),
                pl.col("cat_code"),
                pl.col("cat_merchant"),
            ),
            hint=_text_of("write '{}' or leave the merchant empty", "cat_merchant"),
        ),
    ]


def _text_of(template: str, *columns: str) -> pl.Expr:
    """`template` with each `{}` filled from the next of `columns`, per row."""
    return pl.format(template, *(pl.col(c) for c in columns))


def _allowed_amounts_hint() -> pl.Expr:
    def bound(name: str) -> pl.Expr:
        # cat_min/cat_max are in 1/10,000; show them with the currency's decimals.
        whole = (pl.col(name) // 10**AMOUNT_SCALE).cast(pl.String)
        frac = (pl.col(name) % 10**AMOUNT_SCALE).cast(pl.String).str.pad_start(AMOUNT_SCALE, "0")
        return pl.when(pl.col("minor_units") == 0).then(whole).otherwise(
            whole + pl.lit(".") + frac.str.slice(0, pl.col("minor_units"))
        )  # fmt: skip

    return (
        pl.when(pl.col("cat_has_denoms"))
        .then(_text_of("use one of {}", "cat_denoms"))
        .when(pl.col("cat_min").is_not_null() & pl.col("cat_max").is_not_null())
        .then(pl.format("use an amount from {} to {}", bound("cat_min"), bound("cat_max")))
        .when(pl.col("cat_min").is_not_null())
        .then(pl.format("use at least {}", bound("cat_min")))
        .otherwise(pl.format("use at most {}", bound("cat_max")))
    )


def _suggestion_hint(code: pl.Expr, suggestions: Mapping[str, str]) -> pl.Expr:
    fallback = pl.lit("run `batcher catalog` to list the product codes")
    if not suggestions:
        return fallback
    return code.replace_strict(suggestions, default=fallback, return_dtype=pl.String)


def _product_suggestions(unknown: Sequence[str], codes: Sequence[str]) -> dict[str, str]:
    by_upper = {c.upper(): c for c in codes}
    suggestions: dict[str, str] = {}
    for value in unknown:
        close = difflib.get_close_matches(value.upper(), list(by_upper), n=1, cutoff=0.6)
        if close:
            suggestions[value] = f"did you mean {by_upper[close[0]]}?"
    return suggestions
