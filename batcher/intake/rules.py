"""Cell rules (missing, too long, email, codes) as frames of errors, and their common builder."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import polars as pl

from batcher.core.fields import SOURCE_ROW
from batcher.intake.result import ERROR_SCHEMA
from batcher.intake.scans import CONTROL_CHARACTERS, ORDER_ID, RECIPIENT_FIELDS, RowFacts, Rows
from batcher.intake.sheet import Sheet

MESSAGE_MAX_CHARS = 500
NAME_MAX_CHARS = 200
REFERENCE_MAX_CHARS = 255
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


def error_rows(
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


def missing_value_errors(
    work: pl.DataFrame, sheet: Sheet, fields: Sequence[str], *, key: str
) -> list[pl.LazyFrame]:
    return [
        error_rows(
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


def missing_recipient_errors(rows: Rows, sheet: Sheet, facts: RowFacts) -> list[pl.LazyFrame]:
    required = [n for n in RECIPIENT_FIELDS if n in sheet.required and facts.may_be_blank[n]]
    if not required:
        return []
    return missing_value_errors(rows.cells, sheet, required, key=SOURCE_ROW)


def text_errors(rows: Rows, facts: RowFacts) -> list[pl.LazyFrame]:
    """Over-long cells, references Excel turned into numbers, and control characters.

    Each check runs only when a cheap scan says it can find something: a cell
    has no more characters than bytes, a mangled reference contains an 'E', and
    the control characters were seen in the cells as read.
    """
    limits = (
        ("message", MESSAGE_MAX_CHARS, "message_too_long"),
        ("recipient_name", NAME_MAX_CHARS, "name_too_long"),
        ("reference", REFERENCE_MAX_CHARS, "reference_too_long"),
    )
    frames = [
        error_rows(
            rows.cells,
            pl.col(name).str.len_chars() > limit,
            field=name,
            code=code,
            message=pl.format(
                "{} characters; at most {} are allowed", pl.col(name).str.len_chars(), pl.lit(limit)
            ),
            hint=f"shorten it to {limit} characters or fewer",
            value=shortened(pl.col(name)),
        )
        for name, limit, code in limits
        if facts.longest_bytes[name] > limit
    ]
    if facts.reference_has_e:
        frames.append(
            error_rows(
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
    frames += [
        error_rows(
            rows.cells,
            pl.col(name).str.contains(pattern),
            field=name,
            code="control_character",
            message=pl.lit(
                "holds a control or text-direction character (shown as \ufffd): it would"
                " not read as typed at the provider or in the reports"
            ),
            hint=_CONTROL_HINTS[name],
            value=shortened(pl.col(name).str.replace_all(pattern, "\ufffd")),
        )
        for name, pattern in CONTROL_CHARACTERS.items()
        if facts.may_hold_control[name]
    ]
    return frames


_CONTROL_HINTS = {
    "reference": "delete it (Excel's CLEAN() removes most); a reference is one line of text",
    "recipient_name": "delete it (Excel's CLEAN() removes most); a name is one line of text",
    "message": "delete it; line breaks and tabs are allowed",
}


def shortened(expr: pl.Expr, limit: int = 60) -> pl.Expr:
    return pl.when(expr.str.len_chars() > limit).then(
        expr.str.slice(0, limit) + pl.lit("…")
    ).otherwise(expr)  # fmt: skip


def email_errors(facts: RowFacts) -> list[pl.LazyFrame]:
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
        error_rows(
            bad,
            pl.lit(True),
            field="recipient_email",
            code="bad_email",
            message=pl.format("'{}' is not a valid email address", shortened(email)),
            hint=pl.col("_email_reason"),
            value=shortened(email),
        )
    ]


@lru_cache(maxsize=4096)
def _email_problem(address: str) -> str | None:
    """email-validator's reason for refusing an address (syntax only), or None."""
    # Loaded here: only addresses the fast probe doubts get this far, and its import
    # (large compiled patterns) is a tenth of `batcher validate` of a clean sheet.
    from email_validator import EmailNotValidError, validate_email

    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        return str(exc)
    return None


def code_errors(orders: pl.DataFrame) -> list[pl.LazyFrame]:
    currency_shape = r"^[A-Z]{3}$"
    frames = [
        error_rows(
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
        error_rows(
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


def header_currency_errors(orders: pl.DataFrame, sheet: Sheet) -> list[pl.LazyFrame]:
    """A currency cell that contradicts the currency the amount header names ('Amount (EUR)')."""
    implied = sheet.implied_currency
    if not implied or "currency" not in sheet.columns:
        return []
    amount_header = sheet.header_for("amount")
    return [
        error_rows(
            orders,
            pl.col("currency").is_not_null() & (pl.col("currency") != implied),
            field="currency",
            code="currency_conflict",
            message=pl.format(
                "the currency is {} but the header '{}' says amounts are in {}",
                pl.col("currency"),
                pl.lit(amount_header),
                pl.lit(implied),
            ),
            hint=f"make them agree: fix the currency, or rename '{amount_header}' to 'Amount' "
            "if the sheet mixes currencies",
            key=ORDER_ID,
        )
    ]


def issue_errors(sheet: Sheet) -> list[pl.LazyFrame]:
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
