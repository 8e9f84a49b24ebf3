"""Amount cells: parsed into exact integers of 1/10,000, and the amount rules."""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal

import polars as pl

from batcher.core.money import (
    AmountError,
    currencies_marked,
    minor_units,
    parse_amount,
)
from batcher.intake.rules import error_rows, shortened
from batcher.intake.scans import ORDER_ID

_AMOUNT_MAX_INTEGER_DIGITS = 12  # a trillion: far beyond any gift card, and exact in Int64
AMOUNT_SCALE = 4  # amounts compared as integers of 1/10,000 (the finest ISO 4217 minor unit)

_DATE_LIKE = re.compile(
    r"^\d{4}-\d{1,2}-\d{1,2}([ T]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?)?$|^\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}$"
)


def add_amount_columns(orders: pl.DataFrame, decimal_comma: bool) -> pl.DataFrame:
    """Parse each order's amount into exact integer and text forms, or say why it cannot be.

    Adds `amount_plain` (sign, digits, '.' digits), `amount_problem` and
    `amount_reason` (why it is not an amount), `amount_marks` (currencies a
    typed symbol allows, '|'-joined), `amount_decimals`, `amount_int`,
    `amount_frac`, `amount_scaled` (Int64 in 1/10,000), `minor_units`.
    """
    raw = pl.col("amount")
    if decimal_comma:
        fast = raw.str.contains(r"^[0-9]+(,[0-9]+)?$")
        fast_plain = raw.str.replace(",", ".", literal=True)
    else:
        fast = raw.str.contains(r"^[0-9]+(\.[0-9]+)?$")
        fast_plain = raw
    work = orders.with_columns(
        fast.fill_null(False).alias("_fast"), fast_plain.alias("_fast_plain")
    )
    unusual = work.filter(~pl.col("_fast") & raw.is_not_null())["amount"].unique()
    parsed = _parse_unusual_amounts(unusual.to_list(), decimal_comma)
    work = (
        work.join(parsed, on="amount", how="left", maintain_order="left")
        if parsed.height
        else work.with_columns(
            pl.lit(None, pl.String).alias(c)
            for c in ("_slow_plain", "amount_problem", "amount_reason", "amount_marks")
        )
    )
    work = work.with_columns(
        pl.when(pl.col("_fast"))
        .then(pl.col("_fast_plain"))
        .otherwise(pl.col("_slow_plain"))
        .alias("amount_plain")
    ).drop("_fast", "_fast_plain", "_slow_plain")

    currencies = work["currency"].drop_nulls().unique().to_list()
    units = {c: minor_units(c) for c in currencies}
    digits = pl.col("amount_plain").str.strip_chars_start("-")
    parts = digits.str.split_exact(".", 1)
    work = work.with_columns(
        parts.struct.field("field_0").str.strip_chars_start("0").alias("amount_int"),
        parts.struct.field("field_1").fill_null("").str.strip_chars_end("0").alias("amount_frac"),
        pl.col("currency")
        .replace_strict(units, default=2, return_dtype=pl.Int32)
        .fill_null(2)
        .alias("minor_units"),
    ).with_columns(
        pl.col("amount_frac").str.len_bytes().alias("amount_decimals"),
        pl.when(pl.col("amount_int") == "").then(pl.lit("0")).otherwise(pl.col("amount_int"))
        .alias("amount_int"),
    )  # fmt: skip
    fits = (pl.col("amount_decimals") <= AMOUNT_SCALE) & (
        pl.col("amount_int").str.len_bytes() <= _AMOUNT_MAX_INTEGER_DIGITS
    )
    scaled = pl.col("amount_int").cast(pl.Int64, strict=False) * 10**AMOUNT_SCALE + pl.col(
        "amount_frac"
    ).str.pad_end(AMOUNT_SCALE, "0").cast(pl.Int64, strict=False)
    return work.with_columns(pl.when(fits).then(scaled).alias("amount_scaled"))


def _parse_unusual_amounts(values: Sequence[str], decimal_comma: bool) -> pl.DataFrame:
    """Amounts the fast pattern did not take ('£50', '1,500', dates), one distinct value each."""
    rows = [(value, *_parse_one_amount(value, decimal_comma)) for value in values]
    return pl.DataFrame(
        rows,
        schema={
            "amount": pl.String,
            "_slow_plain": pl.String,
            "amount_problem": pl.String,
            "amount_reason": pl.String,
            "amount_marks": pl.String,
        },
        orient="row",
    )


def _parse_one_amount(
    raw: str, decimal_comma: bool
) -> tuple[str | None, str | None, str | None, str | None]:
    """(plain decimal text, problem code, reason, '|'-joined currencies its symbol allows)."""
    if _DATE_LIKE.match(raw):
        shown = raw.removesuffix(" 00:00:00")  # how calamine renders a date-only cell
        return None, "amount_is_date", f"'{shown}' is a date, not an amount", None
    doubt = _ambiguity(raw.strip(), decimal_comma)
    if doubt:
        return None, "ambiguous_amount", doubt, None
    try:
        value = parse_amount(raw, decimal_comma=decimal_comma)
    except AmountError as exc:
        return None, "bad_amount", str(exc), None
    marks = currencies_marked(raw)
    return _plain_signed(value), None, None, "|".join(sorted(marks)) if marks else None


# Forms `money.parse_amount` would read, but which a person may have meant
# differently: batcher refuses to guess with money. Only the few distinct
# values the fast pattern did not take are looked at.
_EXPONENT = re.compile(r"\d[eE][+-]?\d")
_GROUPED = re.compile(r"\d{1,3}([,.' \u00a0\u202f])\d{3}(?:\1\d{3})*(?!\d)")
_SPACED = re.compile(r"\d[' \u00a0\u202f]+\d")


def _ambiguity(text: str, decimal_comma: bool) -> str | None:
    """Why an amount could be read more than one way, or None."""
    if any(ch.isdigit() and not ch.isascii() for ch in text):
        return f"'{text}' uses digits other than 0-9"
    if _EXPONENT.search(text):
        return f"'{text}' is in scientific notation (an exponent)"
    decimal_mark = "," if decimal_comma else "."
    grouped = _GROUPED.search(text)
    if grouped and (grouped[1] != decimal_mark or text.count(decimal_mark) > 1):
        return f"'{text}' has a thousands separator ('{grouped[1]}')"
    if _SPACED.search(text):
        return f"'{text}' has a space or apostrophe between digits"
    if not decimal_comma and "," in text:
        return f"'{text}' has a comma: a decimal comma or a thousands separator?"
    if decimal_comma and "," in text and "." in text:
        return f"'{text}' has both '.' and ','"
    return None


def _plain_signed(value: Decimal) -> str:
    text = format(value, "f")
    return text[1:] if text.startswith("-") and value == 0 else text


def amount_error_code(currency_ok: pl.Expr) -> pl.Expr:
    """The first thing wrong with an order's amount, or null."""
    return (
        pl.when(pl.col("amount").is_null())
        .then(None)
        .when(pl.col("amount_problem").is_not_null())
        .then(pl.col("amount_problem"))
        .when(pl.col("amount_plain").is_null())
        .then(pl.lit("bad_amount"))
        .when(pl.col("amount_plain").str.starts_with("-"))
        .then(pl.lit("amount_not_positive"))
        .when((pl.col("amount_int") == "0") & (pl.col("amount_decimals") == 0))
        .then(pl.lit("amount_not_positive"))
        .when(pl.col("amount_int").str.len_bytes() > _AMOUNT_MAX_INTEGER_DIGITS)
        .then(pl.lit("amount_too_large"))
        .when(
            currency_ok
            & pl.col("amount_marks").is_not_null()
            & ~pl.col("amount_marks").str.contains(pl.col("currency"), literal=True)
        )
        .then(pl.lit("amount_currency_conflict"))
        .when(currency_ok & (pl.col("amount_decimals") > pl.col("minor_units")))
        .then(pl.lit("amount_too_many_decimals"))
    )


def currency_is_code() -> pl.Expr:
    return pl.col("currency").str.contains(r"^[A-Z]{3}$").fill_null(False)


def amount_errors(
    orders: pl.DataFrame, *, from_excel: bool, decimal_comma: bool
) -> list[pl.LazyFrame]:
    code = amount_error_code(currency_is_code())
    amount = shortened(pl.col("amount"))
    decimals_hint = (
        "Excel may be showing a rounded value; round the cell itself, e.g. =ROUND(cell,2)"
        if from_excel
        else "round it to the currency's decimals"
    )
    example = "1500 or 1,50" if decimal_comma else "1500 or 1.50"
    plain_hint = (
        f"write it with the digits 0-9, no thousands separators and "
        f"'{',' if decimal_comma else '.'}' for decimals, e.g. {example}"
    )
    message = (
        pl.when(code.is_in(["amount_is_date", "ambiguous_amount"]))
        .then(pl.col("amount_reason"))
        .when(code == "bad_amount")
        .then(pl.col("amount_reason").fill_null(pl.format("'{}' is not an amount", amount)))
        .when(code == "amount_not_positive")
        .then(pl.format("the amount must be more than zero, not {}", amount))
        .when(code == "amount_too_large")
        .then(pl.format("{} is far larger than any gift card", amount))
        .when(code == "amount_currency_conflict")
        .then(
            pl.format(
                "'{}' is written in {} but the row's currency is {}",
                amount,
                pl.col("amount_marks").str.replace_all("|", " or ", literal=True),
                pl.col("currency"),
            )
        )
        .when(code == "amount_too_many_decimals")
        .then(
            pl.format(
                "{} has more decimals than {} allows ({})",
                amount,
                pl.col("currency"),
                pl.col("minor_units"),
            )
        )
    )
    hint = (
        pl.when(code == "amount_is_date")
        .then(pl.lit("Excel has turned the amount into a date: format the column as Number"))
        .when(code == "bad_amount")
        .then(pl.lit("write the amount as a number, e.g. 50 or 49.99"))
        .when(code == "ambiguous_amount")
        .then(pl.lit(plain_hint))
        .when(code == "amount_not_positive")
        .then(pl.lit("a gift card needs an amount above zero"))
        .when(code == "amount_currency_conflict")
        .then(pl.lit("fix the currency column or the symbol in the amount"))
        .when(code == "amount_too_many_decimals")
        .then(pl.lit(decimals_hint))
        .otherwise(pl.lit(""))
    )
    return [
        error_rows(
            orders,
            code.is_not_null(),
            field="amount",
            code=code,
            message=message,
            hint=hint,
            value=amount,
            key=ORDER_ID,
        )
    ]
