"""The verdict of validation: `ValidationResult`, its error schema, and funding shortfalls."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cached_property

import polars as pl

from batcher.core.fields import CANONICAL_FIELDS, DERIVED_FIELDS, SOURCE_ROW
from batcher.core.money import (
    format_money,
)
from batcher.intake.sheet import Sheet

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
class Funding:
    """What the valid rows cost per currency, what each wallet has available, and the
    currencies whose wallet cannot pay."""

    cost_by_currency: dict[str, Decimal]
    available_by_currency: dict[str, Decimal]
    errors: tuple[FundingError, ...]

    @classmethod
    def of(
        cls, cost_by_currency: dict[str, Decimal], available_by_currency: dict[str, Decimal]
    ) -> Funding:
        """Each currency's wallet paying for that currency's rows."""
        errors = funding_errors_for(cost_by_currency, available_by_currency)
        return cls(cost_by_currency, available_by_currency, errors)

    @property
    def currencies(self) -> list[str]:
        """Every currency with a cost or a wallet, sorted."""
        return sorted(set(self.cost_by_currency) | set(self.available_by_currency))


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
    - `funding`: the valid rows' costs per currency against each wallet.
    - `valid` is built on first use; `valid_count` needs no building.
    - `sheet` is the sheet validated (path, sha256, headers...); `rows_read`
      equals `valid.height + invalid.height`.
    """

    sheet: Sheet
    invalid: pl.DataFrame
    errors: pl.DataFrame
    invalid_rows: frozenset[int]
    funding: Funding
    # Builds `valid` on first use: the verdict, the counts and the costs do not
    # need a normalised copy of every valid row, only `batcher run` does.
    valid_rows: Callable[[], pl.DataFrame] = field(repr=False, compare=False)

    @cached_property
    def valid(self) -> pl.DataFrame:
        return self.valid_rows()

    @property
    def rows_read(self) -> int:
        return self.sheet.row_count

    @property
    def valid_count(self) -> int:
        return self.rows_read - len(self.invalid_rows)

    @property
    def ok(self) -> bool:
        """Every row valid and every currency funded: safe to run."""
        return not self.invalid_rows and not self.funding.errors


def funding_errors_for(
    cost_by_currency: Mapping[str, Decimal], available: Mapping[str, Decimal]
) -> tuple[FundingError, ...]:
    errors = []
    for currency, needed in cost_by_currency.items():
        has_wallet = currency in available
        funds = available.get(currency, Decimal(0))
        if needed > funds:
            errors.append(FundingError(currency, needed, funds, has_wallet=has_wallet))
    return tuple(errors)
