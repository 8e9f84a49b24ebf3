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

import difflib
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cached_property, lru_cache, partial

import polars as pl
from email_validator import EmailNotValidError, validate_email

from batcher.core.models import Balance, Product
from batcher.core.money import (
    AmountError,
    cost_after_discount,
    currencies_marked,
    format_money,
    minor_units,
    money_str,
    parse_amount,
)
from batcher.intake.frames import chunked_like
from batcher.intake.read import CANONICAL_FIELDS, DERIVED_FIELDS, SOURCE_ROW, Sheet

MESSAGE_MAX_CHARS = 500
NAME_MAX_CHARS = 200
REFERENCE_MAX_CHARS = 255
_AMOUNT_MAX_INTEGER_DIGITS = 12  # a trillion: far beyond any gift card, and exact in Int64
_AMOUNT_SCALE = 4  # amounts compared as integers of 1/10,000 (the finest ISO 4217 minor unit)

#: columns of `ValidationResult.errors`
ERROR_SCHEMA: dict[str, pl.DataType] = {
    SOURCE_ROW: pl.Int64(),
    "column": pl.String(),
    "field": pl.String(),
    "code": pl.String(),
    "message": pl.String(),
    "hint": pl.String(),
    "value": pl.String(),
}

#: the canonical columns of `ValidationResult.valid`, before the pass-through columns
VALID_COLUMNS: tuple[str, ...] = (SOURCE_ROW, *CANONICAL_FIELDS, *DERIVED_FIELDS)

# A sound subset of RFC 5321 addresses: ASCII dot-atom local part, LDH domain
# labels, alphabetic TLD. Everything it accepts, email-validator accepts too
# (a property test checks this); anything else goes to email-validator, which
# decides (Unicode addresses included) and explains its refusal.
FAST_EMAIL = (
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)
# Text that sends an address the fast pattern accepts to email-validator anyway:
# special-use domains it refuses (.local covers .localhost), and '--', which it
# refuses in positions 3-4 of a domain label (reserved for IDNA, bar 'xn--').
_SLOW_PATH_MARKERS = [".arpa", ".invalid", ".local", ".onion", ".test", "--"]

_DATE_LIKE = re.compile(
    r"^\d{4}-\d{1,2}-\d{1,2}([ T]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?)?$|^\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}$"
)
_SCIENTIFIC_REFERENCE = r"(?i)^[0-9](\.[0-9]+)?E\+?[0-9]+$"

_ISO_COUNTRY_TEXT = """AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN
    BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE
    DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN
    GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE
    KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK
    ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA
    PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK
    SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG
    UM US UY UZ VA VC VE VG VI VN VU WF WS XK YE YT ZA ZM ZW"""
ISO_COUNTRIES: frozenset[str] = frozenset(_ISO_COUNTRY_TEXT.split())  # 3166-1 alpha-2, and XK
_COUNTRY_SLIPS = {"UK": "GB", "EL": "GR", "EN": "GB", "GER": "DE", "USA": "US"}

#: cells that describe the order; checked once per distinct combination
ORDER_FIELDS: tuple[str, ...] = (
    "product_code", "merchant", "amount", "currency", "country", "payment_currency",
)  # fmt: skip
#: cells that describe the recipient; checked on every row
RECIPIENT_FIELDS: tuple[str, ...] = ("reference", "recipient_email", "recipient_name", "message")
_CODE_FIELDS = ("currency", "country", "payment_currency")  # trimmed and upper-cased
ORDER_ID = "order_id"
ORDER_ROWS = "order_rows"


# ---------------------------------------------------------------------------
# Results.


@dataclass(frozen=True)
class FundingError:
    """A currency whose valid rows cost more than its wallet has available."""

    currency: str
    needed: Decimal
    available: Decimal
    has_wallet: bool = True
    code: str = "insufficient_funds"

    @property
    def shortfall(self) -> Decimal:
        return self.needed - self.available

    @property
    def message(self) -> str:
        needed = format_money(self.needed, self.currency)
        if not self.has_wallet:
            return f"there is no {self.currency} wallet: the valid rows need {needed}"
        return (
            f"{self.currency} wallet is short: needs {needed}, "
            f"available {format_money(self.available, self.currency)}, "
            f"short by {format_money(self.shortfall, self.currency)}"
        )

    @property
    def hint(self) -> str:
        if not self.has_wallet:
            return f"fund a {self.currency} wallet with the provider, or remove those rows"
        return "top up and rerun"


@dataclass(frozen=True)
class ValidationResult:
    """The verdict on every row of a sheet.

    - `valid`: `VALID_COLUMNS` then the pass-through columns. Text is trimmed;
      currency and country upper-cased; `product_code` and `merchant` spelled as
      in the catalog; `amount` exact decimal text with the currency's decimals
      ('50.00', JPY '1000'); `discount` as the catalog gives it; `cost` what the
      wallet is charged, decimal text.
    - `invalid`: the sheet's rows (cells as read) that have at least one error.
    - `errors`: `ERROR_SCHEMA`, ordered by row then column.
    - `cost_by_currency` sums the valid rows' costs; `available_by_currency`
      is each wallet's available balance.
    - `valid` is built on first use; `valid_count` needs no building.
    - `sheet` is the sheet validated (path, sha256, headers...); `rows_read`
      equals `valid.height + invalid.height`.
    """

    sheet: Sheet
    invalid: pl.DataFrame
    errors: pl.DataFrame
    invalid_rows: frozenset[int]
    cost_by_currency: dict[str, Decimal]
    available_by_currency: dict[str, Decimal]
    funding_errors: tuple[FundingError, ...]
    rows_read: int
    # Builds `valid` on first use: the verdict, the counts and the costs do not
    # need a normalised copy of every valid row, only `batcher run` does.
    valid_rows: Callable[[], pl.DataFrame] = field(repr=False, compare=False)

    @cached_property
    def valid(self) -> pl.DataFrame:
        return self.valid_rows()

    @property
    def valid_count(self) -> int:
        return self.rows_read - len(self.invalid_rows)

    @property
    def ok(self) -> bool:
        """Every row valid and every currency funded: safe to run."""
        return not self.invalid_rows and not self.funding_errors


# ---------------------------------------------------------------------------
# The catalog as frames.


def catalog_frame(products: Sequence[Product]) -> pl.DataFrame:
    """One row per product, keyed for joins.

    Columns: `product_key` (join key: the code upper-cased, or as is when the
    catalog has codes that differ only in case), `cat_code`, `cat_merchant`,
    `cat_currency`, `cat_active`, `cat_min`, `cat_max` (Int64 in 1/10,000),
    `cat_has_denoms`, `cat_denoms` (text for hints), `cat_countries` (text),
    `cat_has_countries`, `cat_discount` (decimal text).
    """
    unique = _unique_products(products)
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


def _unique_products(products: Sequence[Product]) -> list[Product]:
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
    scaled = value.scaleb(_AMOUNT_SCALE)
    return int(scaled.to_integral_value(rounding="ROUND_FLOOR" if upper else "ROUND_CEILING"))


def _plain(value: Decimal) -> str:
    text = format(value.normalize(), "f")
    return "0" if text == "-0" else text


def _denomination_frame(products: Sequence[Product], catalog: pl.DataFrame) -> pl.DataFrame:
    rows = [
        (key, int(d.scaleb(_AMOUNT_SCALE)))
        for p, key in zip(_unique_products(products), catalog["product_key"], strict=True)
        for d in p.denominations
        if d.scaleb(_AMOUNT_SCALE) == d.scaleb(_AMOUNT_SCALE).to_integral_value()
    ]
    return pl.DataFrame(
        rows, schema={"product_key": pl.String, "amount_scaled": pl.Int64}, orient="row"
    ).with_columns(pl.lit(True).alias("denomination_ok"))


def _country_frame(products: Sequence[Product], catalog: pl.DataFrame) -> pl.DataFrame:
    rows = [
        (key, country.upper())
        for p, key in zip(_unique_products(products), catalog["product_key"], strict=True)
        for country in p.countries
    ]
    return pl.DataFrame(
        rows, schema={"product_key": pl.String, "country": pl.String}, orient="row"
    ).with_columns(pl.lit(True).alias("country_ok"))


# ---------------------------------------------------------------------------
# Entry point.


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
    products = _unique_products(catalog)
    catalog_df = catalog_frame(products)
    orders, rows, facts = _scan_rows(sheet)
    orders = _add_amount_columns(orders, sheet.decimal_comma)
    orders = _join_catalog(orders, products, catalog_df)

    order_errors = [
        *_missing_value_errors(orders, sheet, ORDER_FIELDS, key=ORDER_ID),
        *_code_errors(orders),
        *_amount_errors(orders, from_excel=sheet.file_format == "xlsx"),
        *_catalog_errors(orders, catalog_df),
    ]
    row_errors = [
        *_missing_recipient_errors(rows, sheet, facts),
        *_text_errors(rows, facts),
        *_email_errors(facts),
        *_duplicate_errors(rows, orders, facts, allow_duplicates=allow_duplicates),
        *_issue_errors(sheet),
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
    valid_orders = _valid_orders(rows, orders, valid_mask)
    cost_by_currency = _cost_totals(valid_orders)
    available = {b.currency.upper(): b.available for b in balances}
    return ValidationResult(
        sheet=sheet,
        invalid=invalid,
        errors=errors,
        invalid_rows=invalid_rows,
        cost_by_currency=cost_by_currency,
        available_by_currency=available,
        funding_errors=_funding_errors(cost_by_currency, available),
        rows_read=sheet.row_count,
        valid_rows=partial(_valid_frame, rows, orders, valid_orders, sheet, valid_mask),
    )


# ---------------------------------------------------------------------------
# Normalising cells.


def _trimmed(name: str) -> pl.Expr:
    """Outer whitespace (Unicode, NBSP included) removed; a blank cell becomes null."""
    value = pl.col(name).str.strip_chars()
    return pl.when(value != "").then(value).alias(name)


def _scan_rows(sheet: Sheet) -> tuple[pl.DataFrame, _Rows, _RowFacts]:
    """The passes over every row: the distinct orders, and probes of the recipient cells.

    Returns the orders (see `_orders_from_groups`), the recipient side (`_Rows`,
    built only as far as a check needs it), and the `_RowFacts` that tell the
    later checks whether they can find anything at all.
    """
    frame = sheet.frame
    # Columns with no value at all (often merchant, payment currency) or the
    # same value on every row (often currency, country) cannot tell orders
    # apart; leaving them out of the grouping keys makes it cheaper.
    constant = _constant_columns(frame, ORDER_FIELDS)
    keys = [n for n in ORDER_FIELDS if n not in constant] or [ORDER_FIELDS[0]]
    grouped = (
        frame.lazy()
        .select(keys)
        .with_row_index(_POSITIONS)
        .group_by(keys)
        .agg(pl.col(_POSITIONS))
        .with_row_index(ORDER_ID)
    )
    # One after another: each already keeps both cores busy, and collect_all's
    # running them side by side measured slower.
    groups, doubtful, stats = (lazy.collect() for lazy in (grouped, *_row_probes(frame)))
    orders = _orders_from_groups(groups, keys, constant, sheet)
    rows = _Rows(frame, groups.select(ORDER_ID, _POSITIONS))
    return orders, rows, _row_facts(frame, doubtful, stats)


_POSITIONS = "_positions"  # an order's rows, as positions in the sheet's frame


class _Rows:
    """The recipient side of a sheet, built only as far as the checks need it.

    Most sheets have every recipient cell filled and trimmed, no over-long text
    and no repeated reference. Then no check needs a trimmed copy of every
    recipient cell, nor every row's order id, and neither is built until
    `ValidationResult.valid` asks for them.
    """

    def __init__(self, frame: pl.DataFrame, groups: pl.DataFrame) -> None:
        self._frame = frame
        self._groups = groups  # order_id, _positions

    @cached_property
    def cells(self) -> pl.DataFrame:
        """source_row, the recipient cells trimmed (a blank cell as null), and order_id."""
        frame = self._frame
        trimmed = (
            frame.lazy()
            .select(pl.col(SOURCE_ROW), *(pl.col(n).str.strip_chars() for n in RECIPIENT_FIELDS))
            # Two steps: in one expression polars would strip every cell twice.
            .with_columns(
                pl.when(pl.col(n) != "").then(pl.col(n)).alias(n) for n in RECIPIENT_FIELDS
            )
            .collect()
        )
        return trimmed.with_columns(
            chunked_like(self.order_of_row, trimmed[SOURCE_ROW]).alias(ORDER_ID)
        )

    @cached_property
    def order_of_row(self) -> pl.Series:
        """Each row's order id, by position."""
        # Scatter each order's id to its rows: cheaper than joining a million rows back.
        members = self._groups.explode(_POSITIONS)
        return pl.zeros(self._frame.height, dtype=pl.UInt32, eager=True).scatter(
            members[_POSITIONS], members[ORDER_ID]
        )

    def of_orders(self, order_ids: pl.Series) -> pl.DataFrame:
        """source_row and order_id of every row of these orders."""
        members = self._groups.filter(pl.col(ORDER_ID).is_in(order_ids.implode())).explode(
            _POSITIONS
        )
        return pl.DataFrame(
            [self._frame[SOURCE_ROW].gather(members[_POSITIONS]), members[ORDER_ID].rechunk()]
        )


def _constant_columns(frame: pl.DataFrame, names: Sequence[str]) -> dict[str, str | None]:
    """The columns among `names` with one value (or none) on every row, and that value."""
    nulls = {n: frame[n].null_count() for n in names}
    constant: dict[str, str | None] = {n: None for n in names if nulls[n] == frame.height}
    filled = [n for n in names if nulls[n] == 0]
    if filled:
        same = frame.select((pl.col(n) == pl.col(n).first()).all() for n in filled).row(0)
        constant |= {n: frame[n][0] for n, is_same in zip(filled, same, strict=True) if is_same}
    return constant


def _orders_from_groups(
    groups: pl.DataFrame, keys: Sequence[str], constant: Mapping[str, str | None], sheet: Sheet
) -> pl.DataFrame:
    """One row per distinct combination of order cells.

    The orders frame has `order_id`, `order_rows` (how many sheet rows share
    the order), the cells as read (`raw_<field>`) and the same cells normalised
    under the field names: trimmed, codes upper-cased, and the currency named
    by an "Amount (GBP)" header filled in.
    """
    raw = {name: f"raw_{name}" for name in ORDER_FIELDS}
    orders = groups.select(
        ORDER_ID,
        pl.col(_POSITIONS).list.len().alias(ORDER_ROWS),
        *(
            pl.col(n).alias(raw[n])
            if n in keys
            else pl.lit(constant.get(n), pl.String).alias(raw[n])
            for n in ORDER_FIELDS
        ),
    )
    normalised = [
        _trimmed(raw[n]).str.to_uppercase().alias(n)
        if n in _CODE_FIELDS
        else _trimmed(raw[n]).alias(n)
        for n in ORDER_FIELDS
    ]
    orders = orders.with_columns(normalised)
    if sheet.implied_currency:
        orders = orders.with_columns(pl.col("currency").fill_null(pl.lit(sheet.implied_currency)))
    return orders


def _add_amount_columns(orders: pl.DataFrame, decimal_comma: bool) -> pl.DataFrame:
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
    fits = (pl.col("amount_decimals") <= _AMOUNT_SCALE) & (
        pl.col("amount_int").str.len_bytes() <= _AMOUNT_MAX_INTEGER_DIGITS
    )
    scaled = pl.col("amount_int").cast(pl.Int64, strict=False) * 10**_AMOUNT_SCALE + pl.col(
        "amount_frac"
    ).str.pad_end(_AMOUNT_SCALE, "0").cast(pl.Int64, strict=False)
    return work.with_columns(pl.when(fits).then(scaled).alias("amount_scaled"))


def _parse_unusual_amounts(values: Sequence[str], decimal_comma: bool) -> pl.DataFrame:
    """Amounts the fast pattern did not take ('£50', '1,000.50', dates), one distinct value each."""
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
    try:
        value = parse_amount(raw, decimal_comma=decimal_comma)
    except AmountError as exc:
        return None, "bad_amount", str(exc), None
    marks = currencies_marked(raw)
    return _plain_signed(value), None, None, "|".join(sorted(marks)) if marks else None


def _plain_signed(value: Decimal) -> str:
    text = format(value, "f")
    return text[1:] if text.startswith("-") and value == 0 else text


def _join_catalog(
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
    work = work.join(
        _denomination_frame(products, catalog_df),
        on=["product_key", "amount_scaled"],
        how="left",
        maintain_order="left",
    )
    return work.join(
        _country_frame(products, catalog_df),
        on=["product_key", "country"],
        how="left",
        maintain_order="left",
    )


# ---------------------------------------------------------------------------
# Error frames. Each returns rows of ERROR_SCHEMA (the `column` is filled later).


def _errors(
    work: pl.DataFrame,
    condition: pl.Expr,
    *,
    field: str,
    code: str | pl.Expr,
    message: pl.Expr,
    hint: str | pl.Expr = "",
    value: pl.Expr | None = None,
    key: str = SOURCE_ROW,
) -> pl.LazyFrame:
    """Rows of `work` meeting `condition`, as errors keyed by `key` (row or order id)."""
    return (
        work.lazy()
        .filter(condition.fill_null(False))
        .select(
            pl.col(key),
            pl.lit(None, pl.String).alias("column"),  # the user's header, filled in later
            pl.lit(field).alias("field"),
            _as_expr(code).alias("code"),
            message.alias("message"),
            _as_expr(hint).fill_null("").alias("hint"),
            (value if value is not None else pl.col(field)).fill_null("").alias("value"),
        )
    )


def _as_expr(value: str | pl.Expr) -> pl.Expr:
    return pl.lit(value) if isinstance(value, str) else value


_MISSING_HINTS = {
    "recipient_email": "fill in the recipient's email address",
    "product_code": "fill in a product code from the catalog (batcher catalog lists them)",
    "amount": "fill in the gift card's value, e.g. 50",
    "currency": "fill in a 3-letter currency code such as GBP, EUR or USD",
    "country": "fill in the recipient's 2-letter country code such as GB or DE",
}


def _missing_value_errors(
    work: pl.DataFrame, sheet: Sheet, fields: Sequence[str], *, key: str
) -> list[pl.LazyFrame]:
    return [
        _errors(
            work,
            pl.col(name).is_null(),
            field=name,
            code="missing_value",
            message=pl.lit(f"{sheet.header_for(name)} is empty"),
            hint=_MISSING_HINTS.get(name, f"fill in {name}"),
            key=key,
        )
        for name in fields
        if name in sheet.required and work[name].null_count()  # a count polars keeps anyway
    ]


def _missing_recipient_errors(rows: _Rows, sheet: Sheet, facts: _RowFacts) -> list[pl.LazyFrame]:
    required = [n for n in RECIPIENT_FIELDS if n in sheet.required and facts.may_be_blank[n]]
    if not required:
        return []
    return _missing_value_errors(rows.cells, sheet, required, key=SOURCE_ROW)


@dataclass(frozen=True)
class _RowFacts:
    """What the probes of the recipient cells found, for the checks that follow."""

    doubtful_emails: pl.DataFrame  # source_row, recipient_email: not vouched for by FAST_EMAIL
    longest_bytes: dict[str, int]  # longest message, name and reference, in bytes
    reference_has_e: bool  # some reference could be scientific notation
    references_may_repeat: bool  # some upper-cased references share a hash
    may_be_blank: dict[str, bool]  # a recipient field with a cell that is blank once trimmed


def _row_probes(frame: pl.DataFrame) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Cheap scans of the recipient cells as read, for `_row_facts`.

    They look at the raw cells so that they need not wait for the trimmed ones,
    and each of them errs only towards looking closer: a raw cell is never
    shorter than trimmed, and an untrimmed address is never `surely_fine`.
    """
    email = pl.col("recipient_email")
    surely_fine = (
        email.str.contains(FAST_EMAIL)
        # Found anywhere (cheap to look for): email-validator decides those.
        & ~email.str.contains_any(_SLOW_PATH_MARKERS, ascii_case_insensitive=True)
        & (email.str.len_bytes() <= 64)  # longer ones: let email-validator check the lengths
    )
    doubtful = (
        frame.lazy()
        .filter(email.is_not_null() & ~surely_fine.fill_null(False))
        .select(SOURCE_ROW, email.str.strip_chars())
    )
    reference = pl.col("reference")
    stats = frame.lazy().select(
        *(
            pl.col(name).str.len_bytes().max().fill_null(0).alias(name)
            for name in ("message", "recipient_name", "reference")
        ),
        _unusual_reference(reference).any().alias("_unusual"),
        (_references_compared(reference).n_unique() < reference.count()).alias("_repeat"),
    )
    return doubtful, stats


# Text that upper-casing or trimming could change, or that has an 'E': a
# lower-case ASCII letter, ASCII white space anywhere, or any non-ASCII character
# (Unicode case and white space). Cheaper to look for than with a regex.
_FOLDABLE = [*string.ascii_lowercase, "E", " ", "\t", "\n", "\r", "\x0b", "\x0c"]


def _unusual_reference(reference: pl.Expr) -> pl.Expr:
    """True where upper-casing or trimming could change the reference, where it is
    blank (a quoted empty CSV field is read as empty text, not as null), or where
    it has an 'E'."""
    size = reference.str.len_bytes()
    return reference.str.contains_any(_FOLDABLE) | (size == 0) | (reference.str.len_chars() != size)


def _references_compared(reference: pl.Expr, *, folded: bool = False) -> pl.Expr:
    """A 64-bit hash per reference, as references compare (see `_row_facts`)."""
    if folded:
        reference = reference.str.strip_chars().str.to_uppercase()
    return reference.drop_nulls().hash()


def _row_facts(frame: pl.DataFrame, doubtful: pl.DataFrame, stats: pl.DataFrame) -> _RowFacts:
    found = stats.row(0, named=True)
    # References compare trimmed and case-insensitively, but upper-casing a
    # million cells is dear. When no reference is `_unusual_reference`,
    # comparing them as read is the same. The same look finds any 'E', which a
    # reference that Excel wrote in scientific notation has.
    has_e = repeat = False
    if found["_unusual"]:
        reference = pl.col("reference")
        has_e, repeat = frame.select(
            reference.str.contains_any(["E", "e"]).any().alias("has_e"),
            (_references_compared(reference, folded=True).n_unique() < reference.count()).alias(
                "repeat"
            ),
        ).row(0)
    # A cell is blank once trimmed when it is null, empty or only spaces. polars
    # counts the nulls anyway; an empty or spaces-only address fails FAST_EMAIL,
    # and an empty or spaces-only reference is `_unusual_reference`.
    blank_email = doubtful["recipient_email"] == ""
    may_be_blank = {
        "reference": frame["reference"].null_count() > 0 or bool(found["_unusual"]),
        "recipient_email": frame["recipient_email"].null_count() > 0 or bool(blank_email.any()),
        # not probed: only the trimmed cells can tell
        "recipient_name": True,
        "message": True,
    }
    return _RowFacts(
        doubtful_emails=doubtful.filter(~blank_email),  # a blank address is reported as missing
        longest_bytes={n: int(found[n]) for n in ("message", "recipient_name", "reference")},
        reference_has_e=bool(has_e),
        references_may_repeat=bool(repeat or found["_repeat"]),
        may_be_blank=may_be_blank,
    )


def _text_errors(rows: _Rows, facts: _RowFacts) -> list[pl.LazyFrame]:
    """Over-long cells and references Excel turned into numbers.

    Each check runs only when a cheap scan says it can find something: a cell
    has no more characters than bytes, and a mangled reference contains an 'E'.
    """
    limits = (
        ("message", MESSAGE_MAX_CHARS, "message_too_long"),
        ("recipient_name", NAME_MAX_CHARS, "name_too_long"),
        ("reference", REFERENCE_MAX_CHARS, "reference_too_long"),
    )
    frames = [
        _errors(
            rows.cells,
            pl.col(name).str.len_chars() > limit,
            field=name,
            code=code,
            message=pl.format(
                "{} characters; at most {} are allowed", pl.col(name).str.len_chars(), pl.lit(limit)
            ),
            hint=f"shorten it to {limit} characters or fewer",
            value=_shortened(pl.col(name)),
        )
        for name, limit, code in limits
        if facts.longest_bytes[name] > limit
    ]
    if facts.reference_has_e:
        frames.append(
            _errors(
                rows.cells,
                pl.col("reference").str.contains(_SCIENTIFIC_REFERENCE),
                field="reference",
                code="reference_mangled",
                message=pl.format(
                    "'{}' is a number in scientific notation: Excel has cut the reference's digits",
                    pl.col("reference"),
                ),
                hint="format the column as Text in Excel and enter the references again",
            )
        )
    return frames


def _shortened(expr: pl.Expr, limit: int = 60) -> pl.Expr:
    return pl.when(expr.str.len_chars() > limit).then(
        expr.str.slice(0, limit) + pl.lit("…")
    ).otherwise(expr)  # fmt: skip


def _email_errors(facts: _RowFacts) -> list[pl.LazyFrame]:
    """Addresses the fast pattern did not vouch for go to email-validator, once each."""
    doubtful = facts.doubtful_emails
    refused = {
        value: reason
        for value in doubtful["recipient_email"].unique().to_list()
        if (reason := _email_problem(value))
    }
    if not refused:
        return []
    reasons = pl.DataFrame(
        {"recipient_email": list(refused), "_email_reason": list(refused.values())}
    )
    bad = doubtful.join(reasons, on="recipient_email")
    email = pl.col("recipient_email")
    return [
        _errors(
            bad,
            pl.lit(True),
            field="recipient_email",
            code="bad_email",
            message=pl.format("'{}' is not a valid email address", _shortened(email)),
            hint=pl.col("_email_reason"),
            value=_shortened(email),
        )
    ]


@lru_cache(maxsize=4096)
def _email_problem(address: str) -> str | None:
    """email-validator's reason for refusing an address (syntax only), or None."""
    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        return str(exc)
    return None


def _code_errors(orders: pl.DataFrame) -> list[pl.LazyFrame]:
    currency_shape = r"^[A-Z]{3}$"
    frames = [
        _errors(
            orders,
            ~pl.col(name).str.contains(currency_shape),
            field=name,
            code="bad_currency" if name == "currency" else "bad_payment_currency",
            message=pl.format("'{}' is not a 3-letter currency code", pl.col(name)),
            hint="use an ISO 4217 code such as GBP, EUR or USD",
            key=ORDER_ID,
        )
        for name in ("currency", "payment_currency")
    ]
    slips = pl.col("country").replace_strict(_COUNTRY_SLIPS, default=None, return_dtype=pl.String)
    frames.append(
        _errors(
            orders,
            pl.col("country").is_not_null() & ~pl.col("country").is_in(list(ISO_COUNTRIES)),
            field="country",
            code="bad_country",
            message=pl.format("'{}' is not an ISO 3166 country code", pl.col("country")),
            hint=pl.when(slips.is_not_null())
            .then(pl.format("did you mean {}?", slips))
            .otherwise(pl.lit("use the 2-letter ISO code, e.g. GB, DE, FR or US")),
            key=ORDER_ID,
        )
    )
    return frames


def _amount_error_code(currency_ok: pl.Expr) -> pl.Expr:
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


def _currency_ok() -> pl.Expr:
    return pl.col("currency").str.contains(r"^[A-Z]{3}$").fill_null(False)


def _amount_errors(orders: pl.DataFrame, *, from_excel: bool) -> list[pl.LazyFrame]:
    code = _amount_error_code(_currency_ok())
    amount = _shortened(pl.col("amount"))
    decimals_hint = (
        "Excel may be showing a rounded value; round the cell itself, e.g. =ROUND(cell,2)"
        if from_excel
        else "round it to the currency's decimals"
    )
    message = (
        pl.when(code == "amount_is_date")
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
        .when(code == "amount_not_positive")
        .then(pl.lit("a gift card needs an amount above zero"))
        .when(code == "amount_currency_conflict")
        .then(pl.lit("fix the currency column or the symbol in the amount"))
        .when(code == "amount_too_many_decimals")
        .then(pl.lit(decimals_hint))
        .otherwise(pl.lit(""))
    )
    return [
        _errors(
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


def _catalog_errors(orders: pl.DataFrame, catalog_df: pl.DataFrame) -> list[pl.LazyFrame]:
    found = pl.col("cat_code").is_not_null()
    code = pl.col("product_code")
    same_currency = pl.col("currency") == pl.col("cat_currency")
    amount_ok = _amount_error_code(_currency_ok()).is_null() & pl.col("amount_scaled").is_not_null()
    not_allowed = pl.when(pl.col("cat_has_denoms")).then(
        pl.col("denomination_ok").is_null()
    ).otherwise(
        (pl.col("amount_scaled") < pl.col("cat_min")).fill_null(False)
        | (pl.col("amount_scaled") > pl.col("cat_max")).fill_null(False)
    )  # fmt: skip
    unknown = orders.filter(code.is_not_null() & ~found)["product_code"].unique().to_list()
    suggestions = _product_suggestions(unknown, catalog_df["cat_code"].to_list())
    order_error = partial(_errors, key=ORDER_ID)
    return [
        order_error(
            orders,
            code.is_not_null() & ~found,
            field="product_code",
            code="unknown_product",
            message=pl.format("there is no product '{}' in the catalog", _shortened(code)),
            hint=_suggestion_hint(code, suggestions),
        ),
        order_error(
            orders,
            found & ~pl.col("cat_active"),
            field="product_code",
            code="product_inactive",
            message=pl.format("{} is not available at the moment (inactive)", pl.col("cat_code")),
            hint="choose another product; `batcher catalog` lists the active ones",
        ),
        order_error(
            orders,
            found & _currency_ok() & ~same_currency,
            field="currency",
            code="currency_mismatch",
            message=pl.format(
                "{} is sold in {}, not {}",
                pl.col("cat_code"),
                pl.col("cat_currency"),
                pl.col("currency"),
            ),
            hint=pl.format(
                "set the currency to {} or choose a {} product",
                pl.col("cat_currency"),
                pl.col("currency"),
            ),
        ),
        order_error(
            orders,
            found & same_currency & amount_ok & not_allowed,
            field="amount",
            code="amount_not_allowed",
            message=pl.format(
                "{} {} is not a value {} offers",
                pl.col("amount_plain"),
                pl.col("currency"),
                pl.col("cat_code"),
            ),
            hint=_allowed_amounts_hint(),
            value=_shortened(pl.col("amount")),
        ),
        order_error(
            orders,
            found
            & pl.col("cat_has_countries")
            & pl.col("country").is_in(list(ISO_COUNTRIES))
            & pl.col("country_ok").is_null(),
            field="country",
            code="country_not_allowed",
            message=pl.format("{} cannot be sent to {}", pl.col("cat_code"), pl.col("country")),
            hint=pl.format("countries for this product: {}", pl.col("cat_countries")),
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
                _shortened(pl.col("merchant")),
                pl.col("cat_code"),
                pl.col("cat_merchant"),
            ),
            hint=pl.format("write '{}' or leave the merchant empty", pl.col("cat_merchant")),
        ),
    ]


def _allowed_amounts_hint() -> pl.Expr:
    def bound(name: str) -> pl.Expr:
        # cat_min/cat_max are in 1/10,000; show them with the currency's decimals.
        whole = (pl.col(name) // 10**_AMOUNT_SCALE).cast(pl.String)
        frac = (pl.col(name) % 10**_AMOUNT_SCALE).cast(pl.String).str.pad_start(_AMOUNT_SCALE, "0")
        return pl.when(pl.col("minor_units") == 0).then(whole).otherwise(
            whole + pl.lit(".") + frac.str.slice(0, pl.col("minor_units"))
        )  # fmt: skip

    return (
        pl.when(pl.col("cat_has_denoms"))
        .then(pl.format("use one of {}", pl.col("cat_denoms")))
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


def _duplicate_errors(
    rows: _Rows, orders: pl.DataFrame, facts: _RowFacts, *, allow_duplicates: bool
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
        repeated = _rows_sharing(referenced.select(SOURCE_ROW, "reference"), ref_key)
    else:
        repeated = pl.DataFrame()
    if repeated.height:
        # polars 2.1 can panic formatting a frame whose chunks `over` left
        # misaligned; these frames hold only the repeats, so a copy is cheap.
        repeated = repeated.rechunk().with_columns(
            pl.col(SOURCE_ROW).min().over(ref_key).alias("_first")
        )
        frames.append(
            _errors(
                repeated,
                pl.col(SOURCE_ROW) != pl.col("_first"),
                field="reference",
                code="duplicate_reference",
                message=pl.format(
                    "reference '{}' is already used on row {}",
                    _shortened(pl.col("reference")),
                    pl.col("_first"),
                ),
                hint="give every row its own reference; remove the row if it is a duplicate",
            )
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
    twins = _rows_sharing(unreferenced, identity)
    if twins.height:
        twins = twins.rechunk().with_columns(
            pl.col(SOURCE_ROW).min().over(identity).alias("_first")
        )  # rechunked: see `repeated`
        frames.append(
            _errors(
                twins,
                pl.col(SOURCE_ROW) != pl.col("_first"),
                field="recipient_email",
                code="duplicate_row",
                message=pl.format(
                    "identical to row {} (same recipient, product and amount)", pl.col("_first")
                ),
                hint="remove the duplicate, or pass --allow-duplicates if both orders are intended",
            )
        )
    return frames


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


def _issue_errors(sheet: Sheet) -> list[pl.LazyFrame]:
    if not sheet.issues:
        return []
    frame = pl.DataFrame(
        [
            (i.source_row, i.column, i.field, i.code, i.message, i.hint, i.value)
            for i in sheet.issues
        ],
        schema=ERROR_SCHEMA,
        orient="row",
    )
    return [frame.lazy()]


def _finish_errors(
    rows: _Rows,
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
    return errors.sort(SOURCE_ROW, "_position", "code").select(list(ERROR_SCHEMA))


# ---------------------------------------------------------------------------
# Valid rows, cost and funds.


def _valid_orders(rows: _Rows, orders: pl.DataFrame, valid_mask: pl.Series | None) -> pl.DataFrame:
    """The orders that valid rows use, normalised with their cost, and `order_rows`
    counting only those valid rows."""
    counts = orders.select(ORDER_ID, ORDER_ROWS)
    if valid_mask is not None:
        invalid_per_order = (
            rows.order_of_row.filter(~valid_mask).alias(ORDER_ID).to_frame().group_by(ORDER_ID)
        ).len("_invalid")
        counts = (
            counts.join(invalid_per_order, on=ORDER_ID, how="left", maintain_order="left")
            .select(ORDER_ID, pl.col(ORDER_ROWS) - pl.col("_invalid").fill_null(0))
            .filter(pl.col(ORDER_ROWS) > 0)
        )
    used = orders.join(counts, on=ORDER_ID, how="semi", maintain_order="left")
    return _normalised_orders(used).join(counts, on=ORDER_ID, maintain_order="left")


def _valid_frame(
    recipients: _Rows,
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
    # and polars 2.1 has kernels that panic on such frames (see _duplicate_errors).
    return (
        pl.DataFrame([cells[name] for name in VALID_COLUMNS])
        .hstack(passthrough.drop(SOURCE_ROW))
        .rechunk()
    )


def _cost_totals(orders: pl.DataFrame) -> dict[str, Decimal]:
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
_COST_SCALE = _AMOUNT_SCALE + _DISCOUNT_DECIMALS + 2


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
    for places in range(_AMOUNT_SCALE, -1, -1):
        divisor = 10 ** (_COST_SCALE - places)
        rounded = (
            pl.when(minor == places).then((units + divisor // 2) // divisor).otherwise(rounded)
        )
    return rounded


def _minor_units_text(amount: pl.Expr, minor: pl.Expr) -> pl.Expr:
    """An integer count of minor units as decimal text: 4750 with 2 places -> '47.50'."""
    text: pl.Expr = amount.cast(pl.String)
    for places in range(1, _AMOUNT_SCALE + 1):
        whole = (amount // 10**places).cast(pl.String)
        frac = (amount % 10**places).cast(pl.String).str.pad_start(places, "0")
        text = (
            pl.when(minor == places).then(pl.concat_str([whole, pl.lit("."), frac])).otherwise(text)
        )
    return text


def _cost_text(units: pl.Expr, minor: pl.Expr) -> pl.Expr:
    """Round `units` (1/10^_COST_SCALE) half-up to `minor` decimals, as decimal text."""
    return _minor_units_text(_cost_minor(units, minor), minor)


def _funding_errors(
    cost_by_currency: Mapping[str, Decimal], available: Mapping[str, Decimal]
) -> tuple[FundingError, ...]:
    errors = []
    for currency, needed in cost_by_currency.items():
        has_wallet = currency in available
        funds = available.get(currency, Decimal(0))
        if needed > funds:
            errors.append(FundingError(currency, needed, funds, has_wallet=has_wallet))
    return tuple(errors)


# ---------------------------------------------------------------------------
# Reporting the verdict (pure: the CLI writes the files).

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
        for funding in result.funding_errors
    ]
    return records


def validation_document(sheet: Sheet, result: ValidationResult) -> dict[str, object]:
    """The whole verdict as JSON-ready data; money as decimal strings, never floats."""
    currencies = sorted(set(result.cost_by_currency) | set(result.available_by_currency))
    money = {}
    for currency in currencies:
        cost = result.cost_by_currency.get(currency, Decimal(0))
        available = result.available_by_currency.get(currency)
        short = max(cost - (available or Decimal(0)), Decimal(0))
        money[currency] = {
            "cost": money_str(cost, currency),
            "available": money_str(available, currency) if available is not None else None,
            "shortfall": money_str(short, currency),
        }
    return {
        "file": str(sheet.path),
        "sheet": sheet.sheet_name,
        "sha256": sheet.sha256,
        "format": sheet.file_format,
        "encoding": sheet.encoding,
        "delimiter": sheet.delimiter,
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
            for f in result.funding_errors
        ],
    }
