"""Validation: exact errors for every corpus file, and the invariants `batcher run` relies on."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings
from hypothesis import strategies as st

from batcher.core.fields import BASE_REQUIRED
from batcher.core.models import Balance, Product
from batcher.core.money import cost_after_discount, money_str
from batcher.intake.read import Sheet, read_sheet
from batcher.intake.validate import (
    ERROR_SCHEMA,
    FAST_EMAIL,
    VALID_COLUMNS,
    ValidationResult,
    catalog_frame,
    report_records,
    validate_rows,
    validation_document,
)

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).parent / "data" / "corpus"
SANDBOX_CATALOG = ROOT / "batcher" / "sandbox" / "data" / "ugiftme_catalog.json"

# Products the sandbox does not sell, for currencies with 0 and 3 decimals.
EXTRA_PRODUCTS = [
    Product(
        product_code="JPY_TEST",
        merchant="Test JP",
        currency="JPY",
        countries=("JP",),
        min_value=Decimal(500),
        max_value=Decimal(50000),
        discount=Decimal("2.5"),
    ),
    Product(
        product_code="KWD_TEST",
        merchant="Test KW",
        currency="KWD",
        countries=("KW",),
        min_value=Decimal(5),
        max_value=Decimal(500),
        discount=Decimal("1.25"),
    ),
]


def product_from_json(raw: dict[str, object]) -> Product:
    def money(value: object) -> Decimal:
        return Decimal(str(value))

    return Product(
        product_code=str(raw["productCode"]),
        name=str(raw["name"]),
        merchant=str(raw["merchant"]),
        currency=str(raw["currency"]),
        countries=tuple(raw["countries"]),  # type: ignore[arg-type]
        min_value=money(raw["minValue"]),
        max_value=money(raw["maxValue"]),
        denominations=tuple(money(d) for d in raw["denominations"]),  # type: ignore[attr-defined]
        discount=money(raw["discount"]),
        is_active=bool(raw["isActive"]),
    )


CATALOG = [product_from_json(p) for p in json.loads(SANDBOX_CATALOG.read_text())] + EXTRA_PRODUCTS
RICH = [
    Balance(currency=c, balance=Decimal(10_000), available=Decimal(10_000))
    for c in ("GBP", "EUR", "USD", "JPY", "KWD")
]


def check(
    name: str, *, balances: list[Balance] | None = None, **kwargs: object
) -> ValidationResult:
    sheet = read_sheet(CORPUS / name)
    return validate_rows(sheet, CATALOG, RICH if balances is None else balances, **kwargs)  # type: ignore[arg-type]


def codes(result: ValidationResult) -> list[tuple[int, str, str]]:
    """(row, the user's column header, code) for every error, in report order."""
    return [
        (row, col, code)
        for row, col, code in result.errors.select("source_row", "column", "code").rows()
    ]


def messages(result: ValidationResult) -> list[tuple[int, str, str, str]]:
    return result.errors.select("source_row", "code", "message", "hint").rows()  # type: ignore[return-value]


def valid_rows(result: ValidationResult) -> list[int]:
    return result.valid["source_row"].to_list()


# ---------------------------------------------------------------------------
# Exact outcomes, file by file.


def test_catalog_rules() -> None:
    result = check("catalog_rules.csv")
    assert messages(result) == [
        (2, "unknown_product", "there is no product 'AMAZON_UK_STDD' in the catalog",
         "did you mean AMAZON_UK_STD?"),
        (3, "product_inactive", "HMV_UK is not available at the moment (inactive)",
         "choose another product; `batcher catalog` lists the active ones"),
        (4, "currency_mismatch", "AMAZON_UK_STD is sold in GBP, not EUR",
         "set the currency to GBP or choose a EUR product"),
        (5, "amount_not_allowed", "30 GBP is not a value ARGOS_UK offers",
         "use one of 5, 10, 25, 50, 100, 250"),
        (6, "amount_not_allowed", "501 GBP is not a value TESCO_UK offers",
         "use an amount from 5.00 to 500.00"),
        (7, "country_not_allowed", "FNAC_FR cannot be sent to DE",
         "countries for this product: FR"),
        (8, "merchant_mismatch",
         "merchant 'Tesco' does not match AMAZON_UK_STD, which is sold by 'Amazon UK'",
         "write 'Amazon UK' or leave the merchant empty"),
    ]  # fmt: skip
    assert codes(result)[3] == (5, "Amount", "amount_not_allowed")
    assert valid_rows(result) == [9, 10, 11]
    valid = result.valid.to_dicts()
    # Merchant and product code take the catalog's spelling; no country is fine.
    assert [(r["product_code"], r["merchant"], r["country"]) for r in valid] == [
        ("AMAZON_UK_STD", "Amazon UK", "GB"),
        ("AMAZON_UK_STD", "Amazon UK", "GB"),
        ("AMAZON_UK_STD", "Amazon UK", None),
    ]


def test_bad_values() -> None:
    result = check("bad_values.csv")
    assert codes(result) == [
        (2, "Amount", "amount_not_positive"),
        (3, "Amount", "amount_not_positive"),
        (4, "Amount", "bad_amount"),
        (5, "Amount", "bad_amount"),
        (6, "Amount", "bad_amount"),
        (7, "Amount", "ambiguous_amount"),
        (9, "Email", "bad_email"),
        (10, "Email", "bad_email"),
        (11, "Email", "missing_value"),
        (12, "Currency", "bad_currency"),
        (16, "Amount", "amount_currency_conflict"),
        (18, "Product code", "missing_value"),
        (19, "Amount", "amount_is_date"),
        (20, "Email", "bad_email"),
    ]
    by_row = {row: (message, hint) for row, _, message, hint in messages(result)}
    assert by_row[4] == ("'NaN' is not a number", "write the amount as a number, e.g. 50 or 49.99")
    assert by_row[9] == (
        "'not-an-email' is not a valid email address",
        "An email address must have an @-sign.",
    )
    assert by_row[7] == (
        "'1,000.50' has a thousands separator (',')",
        "write it with the digits 0-9, no thousands separators and '.' for decimals, "
        "e.g. 1500 or 1.50",
    )
    assert by_row[16][0] == "'€25' is written in EUR but the row's currency is GBP"
    assert by_row[19][0] == "'2026-03-01' is a date, not an amount"
    valid = {r["source_row"]: r for r in result.valid.to_dicts()}
    assert sorted(valid) == [8, 13, 14, 15, 17]
    assert valid[8]["amount"] == "25.00"  # non-breaking spaces trimmed
    assert valid[13]["currency"] == "GBP"
    assert (valid[14]["recipient_email"], valid[14]["recipient_name"], valid[14]["message"]) == (
        "spaced@example.com",
        "Ana",
        "hi",
    )
    assert valid[15]["recipient_email"] == "jürgen@müller.de"


def test_minor_units_per_currency() -> None:
    result = check("minor_units.csv")
    assert messages(result) == [
        (3, "amount_too_many_decimals", "1000.5 has more decimals than JPY allows (0)",
         "round it to the currency's decimals"),
        (6, "amount_too_many_decimals", "10.1255 has more decimals than KWD allows (3)",
         "round it to the currency's decimals"),
        (7, "amount_too_many_decimals", "10.001 has more decimals than GBP allows (2)",
         "round it to the currency's decimals"),
    ]  # fmt: skip
    valid = result.valid.select("source_row", "amount", "currency", "cost").rows()
    assert valid == [
        (2, "1000", "JPY", "975"),
        (4, "1000", "JPY", "975"),
        (5, "10.125", "KWD", "9.998"),
    ]
    assert result.funding.cost_by_currency == {"JPY": Decimal("1950"), "KWD": Decimal("9.998")}


def test_semicolon_file_reads_decimal_commas() -> None:
    result = check("semicolon_decimal_comma.csv")
    assert codes(result) == [(4, "Amount", "ambiguous_amount"), (5, "Amount", "ambiguous_amount")]
    assert result.errors["message"].to_list() == [
        "'1.000,00' has a thousands separator ('.')",
        "'1.000' has a thousands separator ('.')",
    ]
    assert "',' for decimals, e.g. 1500 or 1,50" in result.errors["hint"][0]
    assert result.valid.select("source_row", "amount").rows() == [
        (2, "50.00"),
        (3, "12.50"),
        (6, "49.99"),
    ]


def test_duplicate_references_name_the_first_row() -> None:
    result = check("duplicate_references.csv")
    assert messages(result) == [
        (4, "duplicate_reference", "reference 'R-1' is already used on row 2",
         "give every row its own reference; remove the row if it is a duplicate"),
        (5, "duplicate_reference", "reference 'r-2' is already used on row 3",
         "give every row its own reference; remove the row if it is a duplicate"),
        (6, "duplicate_reference", "reference 'R-1' is already used on row 2",
         "give every row its own reference; remove the row if it is a duplicate"),
    ]  # fmt: skip
    assert valid_rows(result) == [2, 3]


def test_identical_rows_unless_allowed() -> None:
    result = check("identical_rows.csv")
    assert messages(result) == [
        (3, "duplicate_row", "identical to row 2 (same recipient, product and amount)",
         "remove the duplicate, or pass --allow-duplicates if both orders are intended"),
    ]  # fmt: skip
    assert valid_rows(result) == [2, 4, 5]
    allowed = check("identical_rows.csv", allow_duplicates=True)
    assert codes(allowed) == []
    assert valid_rows(allowed) == [2, 3, 4, 5]


@pytest.mark.parametrize(
    ("references", "repeated_on"),
    [
        (["R-1", "R-2", "R-3"], []),  # rising: no repeat possible, nothing to compare
        (["R-1", "", "R-2", "R-2", "R-3"], [5]),  # an equal neighbour does not rise
        (["R-1", "R-3", "R-2", "R-1"], [5]),  # not in order: compared
    ],
)
def test_references_in_order_are_still_checked_for_repeats(
    tmp_path: Path, references: list[str], repeated_on: list[int]
) -> None:
    path = tmp_path / "ordered.csv"
    lines = ["Reference,Email,Product,Amount,Currency"]
    lines += [f"{ref},a{i}@example.com,AMAZON_UK_STD,25,GBP" for i, ref in enumerate(references)]
    path.write_text("\n".join(lines) + "\n")
    result = validate_rows(read_sheet(path), CATALOG, RICH, allow_duplicates=True)
    assert [(row, code) for row, _, code in codes(result)] == [
        (row, "duplicate_reference") for row in repeated_on
    ]


def test_duplicate_references_are_errors_even_when_duplicates_are_allowed() -> None:
    assert len(check("duplicate_references.csv", allow_duplicates=True).errors) == 3


def test_bad_countries() -> None:
    result = check("bad_countries.csv")
    assert messages(result) == [
        (2, "bad_country", "'UK' is not an ISO 3166 country code", "did you mean GB?"),
        (3, "bad_country", "'XX' is not an ISO 3166 country code",
         "use the 2-letter ISO code, e.g. GB, DE, FR or US"),
        (5, "bad_country", "'GBR' is not an ISO 3166 country code",
         "use the 2-letter ISO code, e.g. GB, DE, FR or US"),
    ]  # fmt: skip
    assert result.valid["country"].to_list() == ["GB"]


def test_merged_cells_make_their_rows_invalid() -> None:
    result = check("merged_cells.xlsx")
    assert codes(result) == [
        (3, "Currency", "merged_cell"),
        (3, "Currency", "missing_value"),
        (4, "Currency", "merged_cell"),
        (4, "Currency", "missing_value"),
    ]
    assert valid_rows(result) == [2, 5]


def test_excel_date_in_the_amount_column() -> None:
    result = check("excel_date_amount.xlsx")
    assert messages(result) == [
        (3, "amount_is_date", "'2026-03-01' is a date, not an amount",
         "Excel has turned the amount into a date: format the column as Number"),
    ]  # fmt: skip


def test_numbers_from_excel() -> None:
    result = check("numbers.xlsx")
    assert codes(result) == [(4, "Amount", "amount_not_allowed")]  # 0.3 is below the minimum
    assert result.valid.select("source_row", "amount", "cost", "Employee ID").rows() == [
        (2, "49.99", "48.74", "007"),
        (3, "50.00", "48.75", "000123"),
        (5, "1234.50", "1203.64", "12345"),
        (6, "25.00", "24.38", "x"),
    ]


def test_scientific_notation() -> None:
    result = check("scientific_notation.csv")
    # An exponent in an amount is refused like any other form a person may misread.
    assert codes(result) == [
        (2, "Amount", "ambiguous_amount"),
        (3, "Amount", "ambiguous_amount"),
        (4, "Reference", "reference_mangled"),
    ]
    assert result.errors["message"][0] == "'5E+01' is in scientific notation (an exponent)"
    assert result.valid.height == 0


def test_long_cells() -> None:
    result = check("long_cells.csv")
    assert messages(result) == [
        (2, "message_too_long", "10000 characters; at most 500 are allowed",
         "shorten it to 500 characters or fewer"),
        (3, "name_too_long", "10000 characters; at most 200 are allowed",
         "shorten it to 200 characters or fewer"),
    ]  # fmt: skip
    assert result.errors["value"][0] == "x" * 60 + "…"  # reports never carry the whole cell
    assert valid_rows(result) == [4]


def test_ragged_rows() -> None:
    result = check("ragged_rows.csv")
    assert codes(result) == [(3, "(whole row)", "too_many_values")]
    assert valid_rows(result) == [2, 4]


def test_amount_header_gives_the_currency() -> None:
    result = check("amount_header_currency.csv")
    assert codes(result) == []
    assert result.valid.select("amount", "currency", "cost").rows() == [
        ("25.00", "GBP", "24.38"),
        ("20.00", "GBP", "19.20"),
    ]


def test_title_row_files() -> None:
    assert codes(check("title_row.csv")) == [(6, "Email", "bad_email")]
    assert codes(check("title_row.xlsx")) == [(5, "Amount", "bad_amount")]


def test_encodings_validate_cleanly() -> None:
    for name in ("utf8_bom.csv", "utf16_tab.txt", "cp1252_pound.csv", "old_mac_newlines.csv"):
        assert codes(check(name)) == [], name
    assert check("cp1252_pound.csv").valid["amount"].to_list() == ["50.00", "10.50"]


def test_pass_through_columns_follow_the_canonical_ones() -> None:
    result = check("header_aliases.csv")
    assert result.valid.columns == [*VALID_COLUMNS, "Cost centre", "Employee ID"]
    row = result.valid.to_dicts()[0]
    assert row == {
        "source_row": 2,
        "reference": "A-1",
        "recipient_email": "a@example.com",
        "recipient_name": "Ana",
        "product_code": "AMAZON_UK_STD",
        "merchant": "Amazon UK",
        "amount": "25.00",
        "currency": "GBP",
        "country": "GB",
        "message": "Hi",
        "payment_currency": None,
        "discount": "2.5",
        "cost": "24.38",
        "Cost centre": "CC-1",
        "Employee ID": "0042",
    }


def test_gifq_requires_a_country_on_every_row(tmp_path: Path) -> None:
    path = tmp_path / "gifq.csv"
    path.write_text(
        "Email,Product code,Amount,Currency,Country\n"
        "a@example.com,AMAZON_UK_STD,25,GBP,GB\n"
        "b@example.com,AMAZON_UK_STD,25,GBP,\n"
    )
    sheet = read_sheet(path, required=BASE_REQUIRED | {"country"})
    result = validate_rows(sheet, CATALOG, RICH)
    assert codes(result) == [(3, "Country", "missing_value")]


# ---------------------------------------------------------------------------
# Funds.


def test_short_wallet_gives_needed_available_and_shortfall() -> None:
    poor = [Balance(currency="GBP", balance=Decimal("40"), available=Decimal("30.00"))]
    result = check("cp1252_pound.csv", balances=poor)  # costs 48.75 + 10.24
    assert result.funding.cost_by_currency == {"GBP": Decimal("58.99")}
    (short,) = result.funding.errors
    assert short.message == ("GBP wallet is short: needs £58.99, available £30.00, short by £28.99")
    assert short.hint == "top up and rerun"
    assert not result.ok and not result.invalid_rows


def test_missing_wallet_is_a_funding_error() -> None:
    result = check("cp1252_pound.csv", balances=[])
    (short,) = result.funding.errors
    assert short.message == "there is no GBP wallet: the valid rows need £58.99"


def test_funded_and_valid_is_ok() -> None:
    result = check("utf8_bom.csv")
    assert result.ok
    assert result.funding.available_by_currency["GBP"] == Decimal(10_000)


def test_only_valid_rows_count_towards_the_cost() -> None:
    result = check("catalog_rules.csv")
    assert result.funding.cost_by_currency == {"GBP": Decimal("73.14")}  # three valid rows of 24.38


# ---------------------------------------------------------------------------
# Invariants over the whole corpus.

READABLE = [
    p.name
    for p in sorted(CORPUS.iterdir())
    if p.name
    not in {
        "ambiguous_columns.csv", "csv_renamed.xlsx", "damaged.xlsx", "empty.csv",
        "header_only.csv", "header_only.xlsx", "legacy.xls", "missing_amount_column.csv",
        "password_protected.xlsx", "recipients.pdf",
    }
]  # fmt: skip


@pytest.mark.parametrize("name", READABLE)
def test_every_row_is_either_valid_or_invalid(name: str) -> None:
    result = check(name)
    everything = set(result.sheet.frame["source_row"])
    valid = set(result.valid["source_row"])
    assert valid | result.invalid_rows == everything
    assert not valid & result.invalid_rows
    assert set(result.invalid["source_row"]) == result.invalid_rows
    assert result.valid.height + result.invalid.height == result.rows_read
    assert result.errors.schema == pl.Schema(ERROR_SCHEMA)
    assert result.errors["column"].null_count() == 0
    assert result.valid["cost"].null_count() == 0
    json.dumps(validation_document(result.sheet, result))  # JSON-ready, no floats or Decimals


def test_validation_is_pure_and_repeatable() -> None:
    sheet = read_sheet(CORPUS / "bad_values.csv")
    before = sheet.frame.clone()
    first = validate_rows(sheet, CATALOG, RICH)
    second = validate_rows(sheet, CATALOG, RICH)
    assert sheet.frame.equals(before)
    assert first.errors.equals(second.errors) and first.valid.equals(second.valid)


def test_report_records_and_document() -> None:
    poor = [Balance(currency="GBP", balance=Decimal(0), available=Decimal(0))]
    result = check("title_row.csv", balances=poor)
    records = report_records(result)
    assert [(r["row"], r["code"]) for r in records] == [
        (6, "bad_email"),
        (None, "insufficient_funds"),
    ]
    document = validation_document(result.sheet, result)
    assert document["currencies"] == {
        "GBP": {"cost": "24.38", "available": "0.00", "shortfall": "24.38"}
    }
    assert (document["rows_read"], document["valid_rows"], document["invalid_rows"]) == (2, 1, 1)
    assert document["ok"] is False
    assert document["funding_errors"][0]["shortfall"] == "24.38"  # type: ignore[index]


# ---------------------------------------------------------------------------
# The catalog.


def test_catalog_frame_columns() -> None:
    frame = catalog_frame(CATALOG)
    assert frame.height == len(CATALOG)
    argos = frame.filter(pl.col("cat_code") == "ARGOS_UK").to_dicts()[0]
    assert argos["cat_min"] == 50_000 and argos["cat_max"] == 2_500_000  # 1/10,000 units
    assert argos["cat_denoms"] == "5, 10, 25, 50, 100, 250"
    assert argos["product_key"] == "ARGOS_UK"


def test_codes_that_differ_only_in_case_are_matched_exactly(tmp_path: Path) -> None:
    products = [
        Product(product_code="amazon", merchant="Amazon", currency="GBP", discount=Decimal(0)),
        Product(product_code="AMAZON", merchant="Amazon Biz", currency="GBP", discount=Decimal(5)),
    ]
    path = tmp_path / "case.csv"
    path.write_text(
        "Email,Product code,Amount,Currency\na@example.com,amazon,10,GBP\n"
        "b@example.com,AMAZON,10,GBP\nc@example.com,Amazon,10,GBP\n"
    )
    result = validate_rows(read_sheet(path), products, RICH)
    assert codes(result) == [(4, "Product code", "unknown_product")]
    assert result.valid.select("product_code", "cost").rows() == [
        ("amazon", "10.00"),
        ("AMAZON", "9.50"),
    ]


# ---------------------------------------------------------------------------
# Properties.

EMAIL_RESTRICTED = (
    st.from_regex(FAST_EMAIL, fullmatch=True)
    .filter(lambda e: len(e) <= 64)
    .filter(lambda e: not re.search(r"(?i)\.(arpa|invalid|local|onion|test)|--", e))
)


@settings(max_examples=300)
@given(EMAIL_RESTRICTED)
def test_fast_email_pattern_accepts_only_what_email_validator_accepts(address: str) -> None:
    validate_email(address, check_deliverability=False)  # raises if the fast path was unsound


def one_row_sheet(tmp_path: Path, amount: str, product: str, currency: str) -> Sheet:
    path = tmp_path / "one.csv"
    path.write_text(
        f"Email,Product code,Amount,Currency\na@example.com,{product},{amount},{currency}\n"
    )
    return read_sheet(path)


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([("AMAZON_UK_STD", "GBP", 2), ("JPY_TEST", "JPY", 0), ("KWD_TEST", "KWD", 3)]),
    st.integers(min_value=5, max_value=499),
    st.integers(min_value=0, max_value=999),
    st.booleans(),
)
def test_valid_amount_and_cost_match_the_money_module(
    tmp_path_factory: pytest.TempPathFactory,
    product: tuple[str, str, int],
    whole: int,
    fraction: int,
    pad: bool,
) -> None:
    code, currency, places = product
    value = Decimal(whole * (100 if currency == "JPY" else 1)) + (
        Decimal(fraction).scaleb(-places) % 1 if places else Decimal(0)
    )
    text = f"{value:f}" + ("0" if pad and places else "")
    sheet = one_row_sheet(tmp_path_factory.mktemp("p"), text, code, currency)
    result = validate_rows(sheet, CATALOG, RICH)
    assert codes(result) == []
    discount = next(p.discount for p in CATALOG if p.product_code == code)
    (row,) = result.valid.to_dicts()
    assert row["amount"] == money_str(value, currency)
    assert row["cost"] == money_str(cost_after_discount(value, discount, currency), currency)


# ---------------------------------------------------------------------------
# The fast paths (probes that skip work, constant columns left out of the
# grouping, trimmed cells built on demand) against plain Python.

# Cells chosen to hit every shortcut: case and Unicode variants of one
# reference, outer white space (ASCII and NBSP), spaces-only cells, blanks.
# Control characters: ASCII (among text the probes would otherwise pass), C1, bidi,
# and white space that trimming removes or a message may hold.
_REFERENCES = ["R-1", "r-1", " R-1", "R-1\u00a0", "Café-2", "CAFÉ-2", "R-3", "1.2E+15", " ", "",
               "R-4\x1b", "R-\x856", "R\u202e-7", "R-8\t"]  # fmt: skip
_EMAILS = [
    "a@example.com", " a@example.com ", "b@example.com", "   ", "", "not-an-email",
    # past the fast pattern: special-use domains, '--' (refused or not), Unicode, length
    "c@example.TEST", "d@ab--cd.com", "e@a--b.com", "ñ@example.com", "f" * 65 + "@example.com",
]  # fmt: skip
_NAMES = ["Ann", " Ann ", "", "Bob", "N" * 201, "Ann\x07", "Ann\t", "A\u2066nn", "An\nn"]
_CONTROLS = {*map(chr, range(0x20)), *map(chr, range(0x7F, 0xA0)), *"\u202a\u202b\u202c\u202d\u202e",
             *"\u2066\u2067\u2068\u2069"}  # fmt: skip
_ORDERS = [
    ("AMAZON_UK_STD", "25", "GBP", "GB"),
    ("AMAZON_UK_STD", "25.00", " gbp", "GB"),
    ("TESCO_UK", "10", "GBP", "GB"),
    ("TESCO_UK", "10", "GBP", ""),
    ("JPY_TEST", "1000", "JPY", "JP"),
    ("NOPE", "10", "GBP", "GB"),
]


def _python_strip(text: str) -> str:
    return text.strip(" \t\n\r\x0b\x0c\u00a0")


def _refused(address: str) -> bool:
    """email-validator refuses it (a blank address is missing, not refused)."""
    if not address:
        return False
    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError:
        return True
    return False


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(_REFERENCES),
            st.sampled_from(_EMAILS),
            st.sampled_from(_NAMES),
            st.sampled_from(_ORDERS),
        ),
        min_size=1,
        max_size=12,
    ),
    st.booleans(),
)
def test_fast_paths_agree_with_plain_python(
    tmp_path_factory: pytest.TempPathFactory,
    rows: list[tuple[str, str, str, tuple[str, str, str, str]]],
    allow_duplicates: bool,
) -> None:
    path = tmp_path_factory.mktemp("fast") / "sheet.csv"
    lines = ["Reference,Email,Name,Product,Amount,Currency,Country"]
    lines += [
        ",".join(f'"{cell}"' for cell in (ref, email, name, *order))
        for ref, email, name, order in rows
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = validate_rows(read_sheet(path), CATALOG, RICH, allow_duplicates=allow_duplicates)

    errors: dict[int, set[str]] = {}
    for row, code in result.errors.select("source_row", "code").rows():
        errors.setdefault(row, set()).add(code)
    first_of_reference: dict[str, int] = {}
    for number, (ref, email, name, _order) in enumerate(rows, start=2):
        folded = _python_strip(ref).upper()
        expected_duplicate = bool(folded) and folded in first_of_reference
        first_of_reference.setdefault(folded, number)
        found = errors.get(number, set())
        assert ("duplicate_reference" in found) == expected_duplicate, (number, ref)
        assert ("missing_value" in found) == (not _python_strip(email)), (number, email)
        assert ("reference_mangled" in found) == (ref == "1.2E+15"), (number, ref)
        assert ("name_too_long" in found) == (len(_python_strip(name)) > 200), number
        assert ("bad_email" in found) == _refused(_python_strip(email)), (number, email)
        controlled = [
            field
            for field, text in (("reference", ref), ("recipient_name", name))
            if _CONTROLS & set(_python_strip(text))
        ]
        assert ("control_character" in found) == bool(controlled), (number, ref, name)

    # Every row ends in exactly one of valid and invalid.
    assert result.valid_count == result.valid.height
    assert result.valid.height + result.invalid.height == len(rows)
    assert set(result.valid["source_row"]) == set(range(2, len(rows) + 2)) - result.invalid_rows
    # Valid rows are normalised, and the totals are the sum of their costs.
    totals: dict[str, Decimal] = {}
    for row in result.valid.iter_rows(named=True):
        assert (
            row["reference"] == (_python_strip(row["reference"]) or None)
            if row["reference"]
            else True
        )
        assert row["recipient_email"] == _python_strip(row["recipient_email"])
        assert row["currency"] in {"GBP", "JPY"}
        totals[row["currency"]] = totals.get(row["currency"], Decimal(0)) + Decimal(row["cost"])
    assert result.funding.cost_by_currency == dict(sorted(totals.items()))


def test_pass_through_columns_named_like_derived_fields_are_renamed(tmp_path: Path) -> None:
    path = tmp_path / "clash.csv"
    path.write_text(
        "Reference,Email,Product,Amount,Currency,cost,Discount\n"
        "R1,a@example.com,AMAZON_UK_STD,25,GBP,CC-1,staff\n"
    )
    result = validate_rows(read_sheet(path), CATALOG, RICH)
    assert result.ok
    (row,) = result.valid.to_dicts()
    assert (row["cost (2)"], row["Discount"]) == ("CC-1", "staff")
    assert row["cost"] == money_str(cost_after_discount(Decimal(25), Decimal("2.5"), "GBP"), "GBP")


def test_a_discount_of_100_percent_or_more_is_costed_exactly(tmp_path: Path) -> None:
    free = Product(
        product_code="FREE", merchant="Free", currency="GBP", countries=("GB",),
        min_value=Decimal(1), max_value=Decimal(100), discount=Decimal(150),
    )  # fmt: skip
    path = tmp_path / "free.csv"
    path.write_text("Email,Product,Amount,Currency\na@example.com,FREE,25.01,GBP\n" * 1)
    result = validate_rows(read_sheet(path), [*CATALOG, free], RICH)
    expected = cost_after_discount(Decimal("25.01"), Decimal(150), "GBP")
    (row,) = result.valid.to_dicts()
    assert row["cost"] == money_str(expected, "GBP")
    assert result.funding.cost_by_currency == {"GBP": expected}
