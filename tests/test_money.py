"""Money helpers: parsing amounts people type, half-up rounding, costs, currency marks."""

from __future__ import annotations

from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batcher.core.money import (
    AmountError,
    cost_after_discount,
    currencies_marked,
    minor_units,
    parse_amount,
    quantum,
    round_money,
)

CURRENCIES = ["GBP", "EUR", "USD", "JPY", "KWD", "CLF"]
Style = Callable[[Decimal], str]  # how a person might type an amount
NBSP = "\u00a0"


def amounts(places: int = 2) -> st.SearchStrategy[Decimal]:
    """Non-negative amounts with exactly `places` decimals, up to ten million."""
    return st.integers(min_value=0, max_value=10**7 * 10**places).map(
        lambda n: Decimal(n).scaleb(-places)
    )


def grouped(integer: int, separator: str) -> str:
    return f"{integer:,}".replace(",", separator)


def style_plain(value: Decimal) -> str:
    return f"{value:f}"


def style_thousands(value: Decimal) -> str:
    whole, _, frac = f"{value:f}".partition(".")
    return grouped(int(whole), ",") + (f".{frac}" if frac else "")


def style_symbol(value: Decimal) -> str:
    return "£" + style_thousands(value)


def style_code_suffix(value: Decimal) -> str:
    return f"{style_plain(value)} GBP"


def style_padded(value: Decimal) -> str:
    return f"{NBSP} {style_plain(value)}\t"


def style_decimal_comma(value: Decimal) -> str:
    return f"{value:f}".replace(".", ",")


def style_european(value: Decimal) -> str:
    whole, _, frac = f"{value:f}".partition(".")
    return grouped(int(whole), ".") + "," + (frac or "00")


def style_french(value: Decimal) -> str:
    whole, _, frac = f"{value:f}".partition(".")
    return grouped(int(whole), NBSP) + ("," + frac if frac else "") + " €"


POINT_STYLES = [style_plain, style_thousands, style_symbol, style_code_suffix, style_padded]
COMMA_STYLES = [style_decimal_comma, style_european, style_french]


@given(amounts(), st.sampled_from(POINT_STYLES))
def test_parse_amount_reads_back_point_styles(value: Decimal, style: Style) -> None:
    assert parse_amount(style(value)) == value


@given(amounts(), st.sampled_from(COMMA_STYLES))
def test_parse_amount_reads_back_decimal_comma_styles(value: Decimal, style: Style) -> None:
    assert parse_amount(style(value), decimal_comma=True) == value


@given(amounts(3).filter(lambda v: v > 0))
def test_parse_amount_keeps_the_sign_of_negatives(value: Decimal) -> None:
    assert parse_amount(f"-{value:f}") == -value
    assert parse_amount(f"(£{value:f})") == -value


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("50", "50"),
        ("£50", "50"),
        ("50.00", "50.00"),
        ("1,000.50", "1000.50"),
        ("5E+01", "50"),
        ("2.5E1", "25"),
        ("GBP 25", "25"),
        (f"25{NBSP}", "25"),
    ],
)
def test_parse_amount_examples(raw: str, expected: str) -> None:
    assert parse_amount(raw) == Decimal(expected)


@pytest.mark.parametrize("raw", ["NaN", "inf", "-Infinity", "twenty", "", "  ", "1.2.3", "£"])
def test_parse_amount_refuses_non_numbers(raw: str) -> None:
    with pytest.raises(AmountError):
        parse_amount(raw)


def test_parse_amount_refuses_an_ambiguous_thousand_in_a_decimal_comma_file() -> None:
    with pytest.raises(AmountError, match="ambiguous"):
        parse_amount("1.000", decimal_comma=True)
    assert parse_amount("1.000,00", decimal_comma=True) == Decimal("1000")
    assert parse_amount("49.99", decimal_comma=True) == Decimal("49.99")


def test_parse_amount_says_what_is_wrong_with_a_word() -> None:
    with pytest.raises(AmountError, match="'NaN' is not a number"):
        parse_amount("NaN")


@given(
    st.decimals(min_value=-(10**9), max_value=10**9, allow_nan=False, places=6),
    st.sampled_from(CURRENCIES),
)
def test_round_money_is_half_up_idempotent_and_within_half_a_quantum(
    value: Decimal, currency: str
) -> None:
    rounded = round_money(value, currency)
    step = quantum(currency)
    assert rounded.as_tuple().exponent == -minor_units(currency)
    assert round_money(rounded, currency) == rounded
    assert abs(rounded - value) <= step / 2
    if abs(rounded - value) == step / 2:  # a tie goes away from zero
        assert abs(rounded) > abs(value)


@pytest.mark.parametrize(
    ("value", "currency", "expected"),
    [
        ("2.345", "GBP", "2.35"),
        ("-2.345", "GBP", "-2.35"),
        ("2.344", "GBP", "2.34"),
        ("0.5", "JPY", "1"),
        ("1.0005", "KWD", "1.001"),
    ],
)
def test_round_money_examples(value: str, currency: str, expected: str) -> None:
    assert str(round_money(Decimal(value), currency)) == expected


@given(
    amounts(2).filter(lambda v: v > 0),
    st.decimals(min_value=-20, max_value=99, allow_nan=False, places=2),
    st.sampled_from(["GBP", "EUR", "USD"]),
)
def test_cost_after_discount_is_face_less_discount_half_up(
    face: Decimal, discount: Decimal, currency: str
) -> None:
    exact = face * (100 - discount) / 100
    expected = exact.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    assert cost_after_discount(face, discount, currency) == expected


def test_cost_after_discount_examples() -> None:
    assert cost_after_discount(Decimal("25"), Decimal("2.5"), "GBP") == Decimal("24.38")
    assert cost_after_discount(Decimal("60"), Decimal("-1.5"), "GBP") == Decimal("60.90")
    assert cost_after_discount(Decimal("1000"), Decimal("2.5"), "JPY") == Decimal("975")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("£50", {"GBP"}),
        ("50 EUR", {"EUR"}),
        ("gbp 50", {"GBP"}),
        ("(€5)", {"EUR"}),
        ("50", None),
        ("5E+01", None),
    ],
)
def test_currencies_marked(raw: str, expected: set[str] | None) -> None:
    marks = currencies_marked(raw)
    assert (set(marks) if marks is not None else None) == expected


def test_a_dollar_sign_allows_every_dollar_currency() -> None:
    marks = currencies_marked("$25")
    assert marks is not None and {"USD", "CAD", "AUD"} <= marks and "GBP" not in marks


# ---------------------------------------------------------------------------
# Validation's vectorised cost agrees with money.cost_after_discount to the cent.

from hypothesis import given as _given  # noqa: E402
from hypothesis import settings as _settings  # noqa: E402
from hypothesis import strategies as _st  # noqa: E402


@_given(
    _st.lists(
        _st.tuples(
            _st.decimals(min_value="0.0001", max_value="999999", places=4),
            _st.decimals(min_value="-20", max_value="60", places=3),
            _st.sampled_from(["GBP", "JPY", "KWD", "EUR", "CLF"]),
        ),
        min_size=1,
        max_size=40,
    )
)
@_settings(max_examples=150, deadline=None)
def test_vectorised_cost_matches_decimal_cost(cases: list) -> None:
    import polars as pl

    from batcher.core.money import cost_after_discount, minor_units, money_str, round_money
    from batcher.intake.costs import _cost_minor, _discount_factor, _minor_units_text

    rows = []
    for amount, discount, currency in cases:
        amount = round_money(amount, currency)
        if amount <= 0:
            continue
        rows.append((amount, discount, currency))
    if not rows:
        return
    frame = pl.DataFrame(
        {
            "scaled": [int(a.scaleb(4)) for a, _, _ in rows],
            "factor": [_discount_factor(str(d)) for _, d, _ in rows],
            "minor": [minor_units(c) for _, _, c in rows],
        },
        schema={"scaled": pl.Int128, "factor": pl.Int128, "minor": pl.Int64},
    )
    minor = pl.col("minor")
    got = frame.select(
        _minor_units_text(_cost_minor(pl.col("scaled") * pl.col("factor"), minor), minor)
    )
    expected = [money_str(cost_after_discount(a, d, c), c) for a, d, c in rows]
    assert got.to_series().to_list() == expected


def test_a_currencys_quantum_is_made_once_and_is_its_smallest_unit() -> None:
    from batcher.core.money import quantum

    assert quantum("GBP") == Decimal("0.01") and quantum("JPY") == Decimal(1)
    assert quantum("KWD") is quantum("KWD")  # cached: every order's cost is rounded to it
