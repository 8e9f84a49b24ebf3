"""The GIFQ sandbox's constants, its startup configuration and its FX rate table."""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from batcher.core.money import is_currency_code, round_money
from batcher.sandbox.common import (
    FAULT_KINDS,
    FaultSettings,
    fault_settings_for,
    merge_funding,
    money_input,
    unique_api_keys,
)

API_ROOT = "/api"
CONTROL_ROOT = "/api/__sandbox"
REQUEST_ID_HEADER = "X-Request-Id"
GIFQ_FAULT_KINDS = (*FAULT_KINDS, "payout_fail")
DEFAULT_FUNDING: Mapping[str, Decimal] = {
    "USD": Decimal("5000.00"),
    "GBP": Decimal("5000.00"),
    "EUR": Decimal("5000.00"),
}
# "A/B": one unit of A costs this many B.
DEFAULT_FX_RATES: Mapping[str, Decimal] = {
    "GBP/USD": Decimal("1.27"),
    "USD/GBP": Decimal("0.7874"),
    "GBP/EUR": Decimal("1.17"),
    "EUR/GBP": Decimal("0.8547"),
    "EUR/USD": Decimal("1.085"),
    "USD/EUR": Decimal("0.9217"),
}
INVERSE_RATE_QUANTUM = Decimal("0.000001")
DEFAULT_PAGE_LIMIT = 10
MAX_REFERENCE = 255
MAX_KEPT_CALLBACKS = 10_000
UNAUTHORIZED = {"message": "Unauthorized", "status": "error"}
TOO_MANY = {"message": "Too many requests. Try again later.", "status": "error"}
CREATION_PATHS = {f"{API_ROOT}/orders", f"{API_ROOT}/payout-orders"}
CAMPAIGN_STATUSES = ("draft", "active", "paused", "archived")
PAYOUT_CONTROL_STATUSES = ("sent", "redeemed", "expired")
UPSTREAM_FAILURE = "Upstream supplier error: the order could not be fulfilled"
PAYOUT_FAILURE = "Payout dispatch failed upstream; the charge was refunded"
EMAIL_PATTERN = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
CODE_ALPHABET = "".join(c for c in string.ascii_uppercase + string.digits if c not in "O0I1")


@dataclass
class GifqSandboxConfig:
    """Everything the sandbox starts from; `reset` returns to exactly this."""

    api_keys: tuple[str, ...] = ()  # the X-Api-Token values; empty: one random UUID
    rate_limit: int = 10
    rate_window_seconds: float = 1.0
    async_delay_seconds: float = 1.0  # pending -> final; queued -> processing -> final
    idempotency_ttl_seconds: float = 24 * 3600.0
    # Starting balances merged over DEFAULT_FUNDING (5,000 USD/GBP/EUR); 0 empties one.
    funding: Mapping[str, Decimal | int | str] = field(default_factory=dict)
    # "A/B" -> B per A, merged over DEFAULT_FX_RATES; a given pair also sets its inverse
    # (to 6 decimals) unless the inverse is given too.
    fx_rates: Mapping[str, Decimal | int | str] = field(default_factory=dict)
    fx_fee_percent: Decimal | int | str = Decimal("1.00")
    max_recipients: int = 1000
    max_page_limit: int = 20
    clamp_page_limit: bool = False  # True: a larger limit is lowered instead of refused
    payout_redeem_rate: float = 0.0  # chance a sent payout is redeemed one delay later
    day_seconds: float = 86400.0  # how long a day of expires_in_days lasts
    callback_timeout_seconds: float = 5.0
    seed: int | None = None
    fault_500: float = 0.0
    fault_429: float = 0.0
    fault_latency: float = 0.0
    latency_ms: int = 250
    fault_drop: float = 0.0
    fault_reject_item: float = 0.0  # a valid order refused with 422 "Out of stock"
    fault_async_fail: float = 0.0  # an order ends failed and is refunded
    fault_payout_fail: float = 0.0  # a payout order ends failed and is refunded
    burst_seconds: float = 1.0
    echo_credentials: bool = False  # error texts repeat the caller's key (see FaultSettings)

    def __post_init__(self) -> None:
        self.api_keys = unique_api_keys(self.api_keys)
        self.funding = merge_funding(DEFAULT_FUNDING, self.funding)
        self.fx_rates = merge_rates(DEFAULT_FX_RATES, self.fx_rates)
        self.fx_fee_percent = money_input(self.fx_fee_percent)
        if self.max_recipients < 1 or self.max_page_limit < 1:
            raise ValueError("max_recipients and max_page_limit must be at least 1")
        if not 0.0 <= self.payout_redeem_rate <= 1.0:
            raise ValueError("payout_redeem_rate must be within 0..1")

    def fault_settings(self) -> FaultSettings:
        return fault_settings_for(self, GIFQ_FAULT_KINDS)


def parse_pair(pair: str) -> tuple[str, str]:
    """'GBP/USD' -> ('GBP', 'USD')."""
    base, sep, quote = pair.strip().upper().partition("/")
    if not sep or not is_currency_code(base) or not is_currency_code(quote) or base == quote:
        raise ValueError(f"{pair!r} is not a currency pair like GBP/USD")
    return base, quote


def merge_rates(
    base: Mapping[str, Decimal], given: Mapping[str, Decimal | int | str]
) -> dict[str, Decimal]:
    """Merge rates over a table; each given pair also sets its inverse unless given."""
    rates = dict(base)
    parsed = {parse_pair(pair): money_input(rate) for pair, rate in given.items()}
    for (src, dst), rate in parsed.items():
        if rate <= 0:
            raise ValueError(f"the rate for {src}/{dst} must be positive")
        rates[f"{src}/{dst}"] = rate
        if (dst, src) not in parsed:
            inverse = (Decimal(1) / rate).quantize(INVERSE_RATE_QUANTUM)
            rates[f"{dst}/{src}"] = inverse.normalize()
    return rates


def money_out(amount: Decimal, currency: str) -> str:
    """An amount as the API writes it: a decimal string with the currency's minor units."""
    return str(round_money(amount, currency))
