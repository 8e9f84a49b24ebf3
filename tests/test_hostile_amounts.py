"""Amounts and currencies that could be read more than one way are refused per row, with a reason."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from batcher.core.models import Balance, Product
from batcher.intake.read import read_sheet
from batcher.intake.validate import ValidationResult, validate_rows

PRODUCTS = [
    Product(product_code="SHOP_GB", merchant="Shop", currency="GBP", countries=("GB",)),
    Product(product_code="SHOP_EU", merchant="Shop", currency="EUR", countries=("DE",)),
]
WALLETS = [
    Balance(currency=c, balance=Decimal(10**6), available=Decimal(10**6)) for c in ("GBP", "EUR")
]


def validate_text(tmp_path: Path, text: str, name: str = "sheet.csv") -> ValidationResult:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return validate_rows(read_sheet(path), PRODUCTS, WALLETS)


def errors(result: ValidationResult) -> list[tuple[int, str, str]]:
    return result.errors.select("source_row", "column", "code").rows()  # type: ignore[return-value]


@pytest.mark.parametrize(
    "header, product, currency",
    [
        ("Value (£)", "SHOP_GB", "GBP"),
        ("Value [€]", "SHOP_EU", "EUR"),
        ("Amount (EUR)", "SHOP_EU", "EUR"),
    ],
)
def test_currency_from_the_amount_header(
    tmp_path: Path, header: str, product: str, currency: str
) -> None:
    result = validate_text(tmp_path, f'Email,Product code,"{header}"\na@example.com,{product},25\n')
    assert errors(result) == []
    assert result.valid["currency"].to_list() == [currency]
    assert result.funding.cost_by_currency == {currency: Decimal(25)}


def test_currency_cell_contradicting_the_header_is_an_error_on_that_row(tmp_path: Path) -> None:
    text = (
        "Email,Product code,Amount (EUR),Currency\n"
        "a@example.com,SHOP_EU,25,EUR\n"
        "b@example.com,SHOP_EU,25,GBP\n"
        "c@example.com,SHOP_EU,25,\n"
    )
    result = validate_text(tmp_path, text)
    assert "currency_conflict" in {code for _, _, code in errors(result)}
    assert [(row, code) for row, _, code in errors(result) if code == "currency_conflict"] == [
        (3, "currency_conflict")
    ]
    message = result.errors.filter(result.errors["code"] == "currency_conflict")["message"][0]
    assert message == "the currency is GBP but the header 'Amount (EUR)' says amounts are in EUR"
    assert result.valid["source_row"].to_list() == [2, 4]
    assert result.valid["currency"].to_list() == ["EUR", "EUR"]


@pytest.mark.parametrize(
    "cell, reason",
    [
        ('"1,500"', "'1,500' has a thousands separator (',')"),
        ('"1,5"', "'1,5' has a comma: a decimal comma or a thousands separator?"),
        ("1e3", "'1e3' is in scientific notation (an exponent)"),
        ("２５", "'２５' uses digits other than 0-9"),
        ("٢٥", "'٢٥' uses digits other than 0-9"),
        ("1 500", "'1 500' has a thousands separator (' ')"),
        ("1'500", "'1'500' has a thousands separator (''')"),
    ],
)
def test_ambiguous_amounts_are_refused_with_a_reason(
    tmp_path: Path, cell: str, reason: str
) -> None:
    text = f"Email,Product code,Amount,Currency\na@example.com,SHOP_GB,{cell},GBP\n"
    result = validate_text(tmp_path, text)
    assert errors(result) == [(2, "Amount", "ambiguous_amount")]
    assert result.errors["message"][0] == reason
    assert "no thousands separators" in result.errors["hint"][0]


@pytest.mark.parametrize("cell", ["25", "25.00", "£25.00", "GBP 25", " 25 "])
def test_plain_amounts_are_still_accepted(tmp_path: Path, cell: str) -> None:
    text = f"Email,Product code,Amount,Currency\na@example.com,SHOP_GB,{cell},GBP\n"
    result = validate_text(tmp_path, text)
    assert errors(result) == []
    assert result.valid["amount"].to_list() == ["25.00"]


def test_semicolon_file_refuses_a_point_as_thousands_separator(tmp_path: Path) -> None:
    text = "Email;Product code;Amount;Currency\na@example.com;SHOP_GB;1.500,00;GBP\nb@example.com;SHOP_GB;12,50;GBP\n"
    result = validate_text(tmp_path, text)
    assert errors(result) == [(2, "Amount", "ambiguous_amount")]
    assert result.valid["amount"].to_list() == ["12.50"]
