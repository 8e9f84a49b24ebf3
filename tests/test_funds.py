"""The one funds rule (execute/funds.py): paying wallets, FX, the fundable part."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from batcher.core.models import Balance, FxQuote
from batcher.execute.funds import (
    FX_SAFETY_MARGIN,
    Need,
    check_funds,
    left_out_message,
    paying_cost,
)


def bal(currency: str, amount: str) -> Balance:
    return Balance(currency=currency, balance=Decimal(amount), available=Decimal(amount))


def need(row: int, currency: str, cost: str, paying: str = "") -> Need:
    return Need(row, f"k{row}", currency, Decimal(cost), paying or currency)


USD_GBP = FxQuote(
    source="USD", paying="GBP", rate=Decimal("0.7874"), fee_percent=Decimal("1.00"),
    seen_at=datetime(2026, 11, 30, tzinfo=UTC),
)  # fmt: skip


def test_same_currency_rows_are_checked_in_their_own_wallet() -> None:
    check = check_funds([need(2, "GBP", "60.00"), need(3, "GBP", "50.00")], [bal("GBP", "100")])
    assert not check.funded and check.needed == {"GBP": Decimal("110.00")}
    (error,) = check.errors
    assert error.message == "GBP wallet is short: needs £110.00, available £100.00, short by £10.00"


def test_cross_currency_rows_are_checked_in_the_paying_wallet_with_fee_and_margin() -> None:
    row = need(2, "USD", "100.00", paying="GBP")
    expected = Decimal("100.00") * Decimal("0.7874") * Decimal("1.01") * (1 + FX_SAFETY_MARGIN)
    cost = paying_cost(row, {("USD", "GBP"): USD_GBP})
    assert cost == Decimal("81.12") and cost >= expected  # rounded up, never down
    plenty_of_usd = [bal("USD", "5000"), bal("GBP", "81.11")]
    check = check_funds([row], plenty_of_usd, [USD_GBP])
    assert not check.funded, "the USD wallet does not pay for it"
    assert check.needed == {"GBP": Decimal("81.12")}
    assert "USD cards at the last reported rate 0.7874" in check.errors[0].message
    assert check_funds([row], [bal("GBP", "81.12")], [USD_GBP]).funded


def test_an_unknown_rate_is_said_never_ok_and_never_refused() -> None:
    check = check_funds([need(2, "USD", "10.00", paying="EUR")], [bal("EUR", "1000")])
    assert check.funded and check.fundable == {"k2"}
    (note,) = check.unverified
    assert "no USD→EUR rate" in note.message and "not verified" in note.message


def test_the_fundable_part_is_taken_in_sheet_order_whatever_the_order_given() -> None:
    needs = [need(5, "GBP", "30"), need(2, "GBP", "60"), need(3, "GBP", "50"), need(4, "GBP", "40")]
    check = check_funds(needs, [bal("GBP", "100")])
    assert check.fundable == {"k2", "k4"}, "row 2 (60), row 3 no longer fits, row 4 (40) fits"
    assert [n.source_row for n in check.left_out] == [3, 5]
    assert check.fundable_cost == {"GBP": Decimal("100")}
    assert "2 row(s) paid from the GBP wallet left out" in left_out_message(check)
    assert check_funds(list(reversed(needs)), [bal("GBP", "100")]).fundable == check.fundable


def test_no_wallet_at_all_is_short_by_everything() -> None:
    check = check_funds([need(2, "JPY", "1000")], [bal("GBP", "100")])
    (error,) = check.errors
    assert "no JPY wallet" in error.message and check.fundable == frozenset()
