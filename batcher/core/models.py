"""Provider-neutral domain types shared by validation, planning, the runner and reports.

Provider clients translate their wire formats into these; nothing outside
`batcher.providers` needs to know how a given provider spells a field.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Product(_Frozen):
    """One orderable catalog entry.

    `denominations` non-empty means only those face values are allowed;
    otherwise any value in [min_value, max_value] with the currency's decimals.
    `discount` is a percentage: positive is a discount, negative a fee.
    """

    product_code: str
    name: str = ""
    merchant: str = ""
    currency: str
    countries: tuple[str, ...] = ()
    category: str = ""
    min_value: Decimal | None = None
    max_value: Decimal | None = None
    denominations: tuple[Decimal, ...] = ()
    discount: Decimal = Decimal(0)
    is_active: bool = True


class Balance(_Frozen):
    currency: str
    balance: Decimal
    available: Decimal  # balance minus holds; equals balance when the provider has no holds


class WalletTransaction(_Frozen):
    """One wallet movement. `amount` is signed: debits are negative."""

    transaction_type: str  # funding | purchase | refund | fx_fee | payout | ...
    amount: Decimal
    currency: str
    order_id: str | None = None
    transaction_id: str | None = None
    reference: str | None = None
    timestamp: datetime | None = None
    description: str = ""


class Campaign(_Frozen):
    """A payout campaign: recipients of its payouts choose a card among its brands."""

    campaign_id: str
    title: str = ""
    status: str = ""  # draft | active | paused | archived
    brands: tuple[str, ...] = ()


class AccountInfo(_Frozen):
    account_id: str
    name: str = ""
    email: str = ""
    plan: str = ""
    status: str = ""
    extra: dict[str, str] = Field(default_factory=dict)


class FxQuote(_Frozen):
    """The last conversion a provider reported from one currency into a paying wallet.

    `rate` is paying-currency units per unit of `source`; `fee_percent` the FX fee
    on the converted amount. A provider that publishes no rates still reports them
    on each cross-currency order: this is the newest of those.
    """

    source: str
    paying: str
    rate: Decimal
    fee_percent: Decimal
    seen_at: datetime | None = None
