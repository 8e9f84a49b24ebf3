"""The one validation path that both `batcher validate` and `batcher run` take.

A dry run can never pass a row the real run would reject, because both call
`check_sheet` with the same provider, the same catalog and the same rules.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path

import polars as pl

from batcher.core.models import Balance, FxQuote, Product
from batcher.core.money import quantum
from batcher.execute.funds import (
    FxRateSource,
    Need,
    check_funds,
    needs_of_valid_rows,
    with_paying_wallets,
)
from batcher.intake.read import Sheet, read_sheet
from batcher.intake.validate import ValidationResult, validate_rows
from batcher.intake.xlsx_limits import IntakeLimits
from batcher.providers.base import Provider

#: Payout rows name no product: they are validated against one open "product" per
#: wallet currency, so the amount, currency and funds rules still apply.
PAYOUT_PRODUCT = "PAYOUT"


def payout_catalog(balances: list[Balance]) -> list[Product]:
    return [
        Product(
            product_code=PAYOUT_PRODUCT,
            name="payout (recipient chooses)",
            currency=b.currency,
            min_value=quantum(b.currency),
            max_value=Decimal("1000000"),
        )
        for b in balances
    ]


@dataclasses.dataclass(frozen=True)
class SheetCheck:
    result: ValidationResult
    balances: dict[str, Balance]  # as fetched for the funds check, so a run need not ask again
    #: the provider's last FX rates, read only when a row is paid from another wallet
    quotes: tuple[FxQuote, ...] = ()
    #: what the funds check could not verify (no FX rate known), said instead of "OK"
    funds_notes: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class SheetReading:
    """How a sheet is read and checked: --sheet, --map, --allow-duplicates, --skip-hidden
    and batcher.toml's [intake] limits, the same for `validate`, `run` and a dry run."""

    sheet_name: str | None = None
    mapping: Mapping[str, str] = dataclasses.field(default_factory=dict)
    allow_duplicates: bool = False
    skip_hidden: bool = False
    limits: IntakeLimits | None = None


def check_sheet(provider: Provider, path: Path, reading: SheetReading | None = None) -> SheetCheck:
    """Read `path` and validate every row against the provider's catalog and wallets."""
    reading = reading or SheetReading()
    provider.preflight()
    sheet = read_sheet(
        path,
        sheet=reading.sheet_name,
        mapping=reading.mapping,
        required=provider.required_fields,
        skip_hidden=reading.skip_hidden,
        limits=reading.limits,
    )
    balances = provider.balances()
    if provider.validates_catalog:
        catalog = provider.catalog()
    else:
        catalog = payout_catalog(balances)
        sheet = _as_payout_rows(sheet)
    result = validate_rows(sheet, catalog, balances, allow_duplicates=reading.allow_duplicates)
    # Funds are checked per paying wallet by the one rule `batcher run` applies too
    # (execute/funds.py). Without a payment_currency column every row pays from its own
    # currency, so each currency's total stands in for its rows: no row-by-row frame.
    quotes: tuple[FxQuote, ...] = ()
    if "payment_currency" in sheet.columns and result.valid_count:
        quotes = fx_quotes(provider)
        needs = needs_of_valid_rows(result)
    else:
        needs = [Need(0, c, c, total, c) for c, total in result.funding.cost_by_currency.items()]
    check = check_funds(needs, balances, quotes)
    result = with_paying_wallets(result, check)
    notes = tuple(u.message for u in check.unverified)
    return SheetCheck(result, {b.currency: b for b in balances}, quotes, notes)


def fx_quotes(provider: Provider) -> tuple[FxQuote, ...]:
    """The provider's last FX rates; none from a provider that reports none."""
    if isinstance(provider, FxRateSource):
        return tuple(provider.fx_rates())
    return ()


def _as_payout_rows(sheet: Sheet) -> Sheet:
    frame = sheet.frame.with_columns(pl.lit(PAYOUT_PRODUCT).alias("product_code"))
    return dataclasses.replace(sheet, frame=frame)
