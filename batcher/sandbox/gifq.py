"""A faithful local GIFQ API, for rehearsals and end-to-end tests.

The API lives under ``/api`` and follows docs/providers/gifq.md line by line.
Each configured token (``X-Api-Token``) is its own account, with its own
balances, transactions, orders, payout orders, campaigns, idempotency keys and
rate-limit window. The catalog (and its stock) is shared, as at GIFQ.

Sandbox controls live at ``/api/__sandbox`` (never rate limited, never faulted,
no token needed). An account is chosen with the ``X-Api-Token`` (or
``X-API-Key``) header, which may be left out when only one token is configured.
Listings (orders, payout orders, payouts, stats) cover every account unless the
header narrows them to one. Control bodies are JSON; money may be a JSON number
or a decimal string.

======================================  ===================================================
``GET    /health``                      ``{"ok": true, "provider": "gifq"}``
``GET    /config``                      runtime settings (delays, limits, FX, faults, tokens)
``PATCH  /config``                      any of ``asyncDelaySeconds``,
                                        ``idempotencyTtlSeconds``, ``maxRecipients``,
                                        ``fxRates`` (``{"GBP/USD": "1.27"}``, merged),
                                        ``fxFeePercent``, ``payoutRedeemRate``,
                                        ``daySeconds``, ``clampPageLimit``
``GET    /faults``                      ``{"500","429","latency","drop","reject_item",
                                        "async_fail","payout_fail","latencyMs",
                                        "burstSeconds","seed","counts"}``
``PATCH  /faults``                      any of the keys above (PUT too); ``seed``, even
                                        null, reseeds the one ``random.Random``
``PUT    /rate-limit``                  ``{"limit": 10, "windowSeconds": 1}``; windows restart
``GET    /balances``                    ``{"apiKey", "balances": [{currency, amount}]}``
``POST   /balances/{cur}/fund``         ``{"amount": "100.00"}``: a ``top_up`` transaction
``POST   /balances/{cur}/drain``        balance to 0 (no transaction)
``PUT    /balances/{cur}``              ``{"amount": "5.00"}`` (no transaction)
``GET    /campaigns``                   ``{"apiKey", "campaigns": [campaign]}``
``POST   /campaigns``                   ``{"title", "status"?, "brands"?, "id"?}`` -> 201;
                                        status defaults to active, brands to the catalog
``PATCH  /campaigns/{id}``              any of ``status``, ``title``, ``brands``
``PATCH  /products/{option_id}``        any of ``stock_count`` (null: unlimited),
                                        ``discount``, ``min_face_value``, ``max_face_value``
``GET    /orders``                      ``{"total", "orders": [order with redemption +
                                        apiKey, charged, chargedCurrency, optionId,
                                        requestId]}``, oldest first
``GET    /payout-orders``               ``{"total", "payoutOrders": [payout order + apiKey,
                                        idempotencyKey, charged, recipients]}``
``GET    /payouts``                     ``{"total", "payouts": [payout + apiKey]}``
``PATCH  /payouts/{id}``                ``{"status": "sent"|"redeemed"|"expired"}``
``GET    /callbacks``                   every ``callback_url`` delivery attempt
``GET    /stats``                       ``{"requests": {token: n}, "tooManyRequests",
                                        "tooManyRequestsTotal", "statusCounts", "faults",
                                        "orders", "payoutOrders", "payouts",
                                        "scheduledTasks", "workerErrors", "log": [{"seq",
                                        "t", "apiKey", "method", "path", "query",
                                        "status", "retryAfter", "fault"}]}``;
                                        ``?since=SEQ``, ``?log=false``
``POST   /reset``                       back to the startup configuration, all data gone
======================================  ===================================================

Choices where the contract is silent (each is pinned by a test in tests/sandbox):

- Every API answer carries ``X-Request-Id``; every 422 body repeats it as
  ``request_id``. Malformed JSON is 400; every other validation failure is 422.
- ``limit`` above 20 is refused with 400 ``Pagination error: expected :limit in
  1..20; got 50`` (``clamp_page_limit=True`` lowers it quietly instead, as pagy's
  ``max_items`` does). ``page-items`` is the page size in effect (pagy's meaning),
  not the number of items on the page. An empty list has one (empty) page. A
  ``Link`` header names the first, prev, next and last pages.
- The 10 req/s limit is a fixed one-second window per token, opened by the
  first request after the previous window closed (unauthenticated calls share a
  window per IP). Refused requests count too. ``Retry-After`` is whole seconds,
  at least 1. No other rate-limit header is ever sent.
- Catalog amounts (face values, discount) are JSON numbers; order, balance,
  transaction and payout amounts are decimal strings with the currency's minor
  units. Requests may use either.
- Order matching: ``brand`` is the exact slug, ``currency``/``country``/
  ``payment_currency`` are case-insensitive codes; the option must list the
  country, have the currency and admit the face value (min..max, minor units).
- The reference check comes first: a known reference answers 200 with the order
  as it is now (redemption included once completed, even if it ended ``failed``),
  or 422 when brand, currency, face value (numerically), country or payment
  currency differ. A refused creation creates nothing, so its reference stays free.
- ``payment_currency`` equal to ``currency`` (or null) means no conversion and no
  ``fx_fee``. With conversion: converted = price x rate, fee = converted x 1%,
  each half-up to the payment currency's minor units; transactions are an
  ``order`` debit of the converted price and an ``fx_fee`` debit of the fee.
- Stock is taken when the order is created and given back if it fails.
- The ``reject_item`` fault refuses a valid order with 422 ``Out of stock``;
  ``async_fail`` makes an order end ``failed``, refunded in one ``refund``
  transaction; ``payout_fail`` fails a whole payout order, refunded likewise,
  with one ``failed`` payout per recipient. ``drop`` hits fresh 201/202
  creations only, never a replay.
- Payout orders: recipients may use any currency with a rate to
  ``wallet_currency``; each amount is converted half-up, the 1% fee applies to
  the converted foreign part, ``total_amount`` is the converted sum before the
  fee and ``fx_fee`` (``rates``, ``fee_percentage``, ``fee_amount``,
  ``total_charged``, ``currency``) appears when a fee applies. The charge is one
  ``payout`` debit (plus ``fx_fee``). The answers carry no recipients; they are
  the payouts. ``GET /payouts?payout_order_id=`` lists them in recipient order
  (an unknown id gives an empty list); without the filter, newest first.
- ``Idempotency-Key`` on payout orders: same key and payload replays the stored
  answer (``Idempotent-Replayed: true``); a different payload is 422; a request
  still running is 409. 2xx and 422 answers are stored; 401/409/429/5xx are not.
- A payout order spends ``async_delay_seconds`` queued, then as long processing.
  Sent payouts become ``redeemed`` one more delay later with probability
  ``payout_redeem_rate`` (seeded), or ``expired`` after ``expires_in_days`` x
  ``day_seconds``; expiry refunds nothing. A control sets any payout's status.
- ``callback_url`` gets one best-effort POST of the payout order JSON when it
  completes or fails (no retries, no signature).
- Top-ups (including the starting balances) are ``top_up`` transactions, so
  transactions always sum to the balances. Control set/drain write none.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import logging
import math
import random
import re
import secrets
import string
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import urlencode

import httpx
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from batcher.core.money import cost_after_discount, fits_currency, is_currency_code, round_money
from batcher.sandbox.asgi import (
    client_ip,
    forward,
    latency_fault,
    sleep_deferred_latency,
    worker_lifespan,
)
from batcher.sandbox.common import (
    FAULT_KINDS,
    DelayedTaskScheduler,
    DroppedResponse,
    FaultInjector,
    FaultSettings,
    FixedWindowRateLimiter,
    IdempotencyStore,
    JsonDecodeError,
    RequestLog,
    ReversedView,
    StoredResponse,
    decode_json,
    encode_json,
    fault_settings_for,
    fingerprint,
    iso_now,
    iso_timestamp,
    json_response,
    merge_funding,
    money_input,
    parse_bool,
    run_idempotently,
    stored_as_response,
    unique_api_keys,
)
from batcher.sandbox.controls import (
    control_get_faults,
    control_reset,
    faults_json,
    rate_limit_json,
    setting_number,
    stats_json,
    update_faults,
    update_rate_limit,
)

log = logging.getLogger(__name__)

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
MAX_IDEMPOTENCY_KEY = 255
MAX_KEPT_CALLBACKS = 10_000
UNAUTHORIZED = {"message": "Unauthorized", "status": "error"}
TOO_MANY = {"message": "Too many requests. Try again later.", "status": "error"}
CREATION_PATHS = {f"{API_ROOT}/orders", f"{API_ROOT}/payout-orders"}
CAMPAIGN_STATUSES = ("draft", "active", "paused", "archived")
PAYOUT_CONTROL_STATUSES = ("sent", "redeemed", "expired")
UPSTREAM_FAILURE = "Upstream supplier error: the order could not be fulfilled"
PAYOUT_FAILURE = "Payout dispatch failed upstream; the charge was refunded"
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_CODE_ALPHABET = "".join(c for c in string.ascii_uppercase + string.digits if c not in "O0I1")


# ---------------------------------------------------------------------------
# Configuration.


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


# ---------------------------------------------------------------------------
# Catalog.


@dataclass
class ProductOption:
    id: int
    brand: str
    currency: str
    countries: tuple[str, ...]
    min_face_value: Decimal
    max_face_value: Decimal
    discount: Decimal
    stock_count: int | None
    expiry: str | None
    balance_check_url: str | None

    @classmethod
    def from_json(cls, brand: str, raw: Mapping[str, Any]) -> ProductOption:
        return cls(
            id=int(raw["id"]),
            brand=brand,
            currency=raw["currency"],
            countries=tuple(raw["countries"]),
            min_face_value=Decimal(raw["min_face_value"]),
            max_face_value=Decimal(raw["max_face_value"]),
            discount=Decimal(raw["discount"]),
            stock_count=raw.get("stock_count"),
            expiry=raw.get("expiry"),
            balance_check_url=raw.get("balance_check_url"),
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "min_face_value": self.min_face_value,
            "max_face_value": self.max_face_value,
            "countries": list(self.countries),
            "currency": self.currency,
            "discount": self.discount,
            "stock_count": self.stock_count,
            "expiry": self.expiry,
            "balance_check_url": self.balance_check_url,
        }

    def admits(self, face_value: Decimal) -> bool:
        return self.min_face_value <= face_value <= self.max_face_value and fits_currency(
            face_value, self.currency
        )

    def describe_values(self) -> str:
        if self.min_face_value == self.max_face_value:
            return f"{self.min_face_value} {self.currency}"
        return f"{self.min_face_value}..{self.max_face_value} {self.currency}"


@dataclass
class Brand:
    slug: str
    title: str
    logo: str
    description: str
    terms: str
    redeem_instructions: str
    categories: tuple[str, ...]
    redemption_fields: tuple[str, ...]
    options: list[ProductOption]

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Brand:
        slug = raw["brand"]
        return cls(
            slug=slug,
            title=raw["title"],
            logo=raw["logo"],
            description=raw["description"],
            terms=raw["terms"],
            redeem_instructions=raw["redeem_instructions"],
            categories=tuple(raw["categories"]),
            redemption_fields=tuple(raw["redemption_fields"]),
            options=[ProductOption.from_json(slug, o) for o in raw["products"]],
        )

    @property
    def countries(self) -> list[str]:
        return sorted({c for option in self.options for c in option.countries})

    def as_json(self) -> dict[str, Any]:
        return {
            "brand": self.slug,
            "title": self.title,
            "logo": self.logo,
            "description": self.description,
            "terms": self.terms,
            "redeem_instructions": self.redeem_instructions,
            "categories": list(self.categories),
            "countries": self.countries,
            "products": [o.as_json() for o in self.options],
        }


def load_catalog() -> dict[str, Brand]:
    """The shipped catalog, sorted by brand, with money read as Decimal from the text."""
    text = (
        importlib.resources.files("batcher.sandbox")
        .joinpath("data/gifq_catalog.json")
        .read_text(encoding="utf-8")
    )
    brands = sorted((Brand.from_json(raw) for raw in decode_json(text)), key=lambda b: b.slug)
    return {brand.slug: brand for brand in brands}


def _redemption(fields: Sequence[str]) -> dict[str, str]:
    """Fresh bearer credentials for the brand's redemption fields."""
    makers: dict[str, Callable[[], str]] = {
        "code": lambda: "-".join(
            "".join(secrets.choice(_CODE_ALPHABET) for _ in range(4)) for _ in range(4)
        ),
        "pin": lambda: f"{secrets.randbelow(10**6):06d}",
        "link": lambda: f"https://redeem.gifq.com/c/{secrets.token_urlsafe(18)}",
        "link_challenge_code": lambda: f"{secrets.randbelow(10**6):06d}",
        "serial": lambda: f"{secrets.randbelow(10**16):016d}",
        "security_code": lambda: f"{secrets.randbelow(1000):03d}",
    }
    return {name: makers[name]() for name in fields}


# ---------------------------------------------------------------------------
# Account state.


class ApiError(Exception):
    """An error answer with the contract's shape: {"message", "status": "error"}."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message

    def body(self, request_id: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message, "status": "error"}
        if self.status_code == 422 and request_id is not None:
            body["request_id"] = request_id
        return body


@dataclass(frozen=True)
class FxCharge:
    """A conversion into the paying currency: price x rate, plus the fee."""

    rate: Decimal
    fee_percentage: Decimal
    converted: Decimal
    fee_amount: Decimal
    currency: str

    @property
    def total_charged(self) -> Decimal:
        return self.converted + self.fee_amount

    def as_json(self) -> dict[str, Any]:
        return {
            "rate": str(self.rate),
            "fee_percentage": str(self.fee_percentage),
            "fee_amount": money_out(self.fee_amount, self.currency),
            "total_charged": money_out(self.total_charged, self.currency),
            "currency": self.currency,
        }


OrderStatus = Literal["pending", "completed", "failed"]


@dataclass(frozen=True)
class OrderParams:
    """What a reference is bound to; two requests match when these are equal
    (face values compare as numbers: 25 == 25.00)."""

    brand: str
    currency: str
    face_value: Decimal
    country: str
    payment_currency: str  # equals currency when there is no conversion


@dataclass
class Order:
    seq: int
    id: str
    reference: str
    params: OrderParams
    option_id: int
    price: Decimal
    discount: Decimal
    fx: FxCharge | None
    api_key: str
    request_id: str
    created_at: str
    updated_at: str
    status: OrderStatus = "pending"
    failure_reason: str | None = None
    redemption: dict[str, str] | None = None

    @property
    def charged(self) -> Decimal:
        return self.fx.total_charged if self.fx else self.price

    def as_json(self, *, with_redemption: bool) -> dict[str, Any]:
        p = self.params
        body: dict[str, Any] = {
            "id": self.id,
            "reference": self.reference,
            "status": self.status,
            "brand": p.brand,
            "currency": p.currency,
            "face_value": money_out(p.face_value, p.currency),
            "country": p.country,
            "price": money_out(self.price, p.currency),
            "discount": str(self.discount),
            "payment_currency": p.payment_currency,
        }
        if self.fx is not None:
            body["fx_fee"] = self.fx.as_json()
        body["created_at"] = self.created_at
        body["updated_at"] = self.updated_at
        if self.failure_reason is not None:
            body["failure_reason"] = self.failure_reason
        if with_redemption and self.redemption is not None:
            body["redemption"] = dict(self.redemption)
        return body


@dataclass
class Campaign:
    id: int
    title: str
    status: str
    brands: list[str]
    created_at: str
    updated_at: str

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "status": self.status,
            "brands": list(self.brands),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True)
class Recipient:
    email: str
    name: str | None
    amount: Decimal
    currency: str
    converted: Decimal  # in the wallet currency

    def as_json(self) -> dict[str, Any]:
        return {
            "email": self.email,
            "name": self.name,
            "amount": money_out(self.amount, self.currency),
            "currency": self.currency,
        }


PayoutOrderStatus = Literal["queued", "processing", "completed", "failed"]
PayoutStatus = Literal["sent", "redeemed", "expired", "failed"]


@dataclass
class Payout:
    seq: int
    id: str
    payout_order_id: str
    recipient: Recipient
    status: PayoutStatus
    api_key: str
    created_at: str
    updated_at: str
    expires_at: str

    def as_json(self) -> dict[str, Any]:
        r = self.recipient
        return {
            "id": self.id,
            "payout_order_id": self.payout_order_id,
            "email": r.email,
            "name": r.name,
            "amount": money_out(r.amount, r.currency),
            "currency": r.currency,
            "status": self.status,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "expires_at": self.expires_at,
        }


@dataclass
class PayoutOrder:
    seq: int
    id: str
    campaign_id: int
    wallet_currency: str
    recipients: list[Recipient]
    total_amount: Decimal  # converted sum, before the fee
    fee_amount: Decimal
    fx_rates: dict[str, Decimal]  # foreign currency -> rate into the wallet currency
    fee_percentage: Decimal
    expires_in_days: int
    callback_url: str | None
    api_key: str
    idempotency_key: str | None
    created_at: str
    updated_at: str
    status: PayoutOrderStatus = "queued"
    failure_reason: str | None = None
    payout_ids: list[str] = field(default_factory=list)

    @property
    def charged(self) -> Decimal:
        return self.total_amount + self.fee_amount

    def as_json(self) -> dict[str, Any]:
        cur = self.wallet_currency
        body: dict[str, Any] = {
            "id": self.id,
            "campaign_id": self.campaign_id,
            "status": self.status,
            "recipient_count": len(self.recipients),
            "total_amount": money_out(self.total_amount, cur),
            "wallet_currency": cur,
            "expires_in_days": self.expires_in_days,
            "callback_url": self.callback_url,
        }
        if self.fx_rates:
            body["fx_fee"] = {
                "rates": {c: str(r) for c, r in sorted(self.fx_rates.items())},
                "fee_percentage": str(self.fee_percentage),
                "fee_amount": money_out(self.fee_amount, cur),
                "total_charged": money_out(self.charged, cur),
                "currency": cur,
            }
        if self.failure_reason is not None:
            body["failure_reason"] = self.failure_reason
        body["created_at"] = self.created_at
        body["updated_at"] = self.updated_at
        return body


@dataclass
class Account:
    api_key: str
    balances: dict[str, Decimal] = field(default_factory=dict)
    transactions: list[dict[str, Any]] = field(default_factory=list)  # oldest first
    orders: list[Order] = field(default_factory=list)  # oldest first
    orders_by_id: dict[str, Order] = field(default_factory=dict)
    orders_by_reference: dict[str, Order] = field(default_factory=dict)
    payout_orders: list[PayoutOrder] = field(default_factory=list)
    payout_orders_by_id: dict[str, PayoutOrder] = field(default_factory=dict)
    payouts: list[Payout] = field(default_factory=list)
    payouts_by_id: dict[str, Payout] = field(default_factory=dict)
    campaigns: dict[int, Campaign] = field(default_factory=dict)

    def balance(self, currency: str) -> Decimal:
        return self.balances.get(currency, round_money(Decimal(0), currency))


def _seed_campaigns(now: str) -> dict[int, Campaign]:
    seeds = [
        (101, "Employee thank-you", "active",
         ["amazon", "john-lewis", "netflix", "spotify", "starbucks", "uber", "zalando"]),
        (102, "Customer referral rewards", "active",
         ["amazon", "apple", "google-play", "ikea", "nike", "steam"]),
        (103, "Holiday gifts 2025", "paused", ["amazon", "argos", "boots", "tesco"]),
        (104, "Spring incentive", "draft", ["adidas", "decathlon", "nike"]),
        (105, "Summer promo 2024", "archived", ["airbnb", "uber"]),
    ]  # fmt: skip
    return {
        cid: Campaign(cid, title, status, brands, now, now) for cid, title, status, brands in seeds
    }


# ---------------------------------------------------------------------------
# Request parsing.


def _required_str(body: Mapping[str, Any], name: str, max_len: int = 255) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ApiError(422, f"{name} is required and must be a non-empty string")
    if len(value) > max_len:
        raise ApiError(422, f"{name} must be at most {max_len} characters")
    return value.strip()


def _code(body: Mapping[str, Any], name: str, length: int, *, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not re.fullmatch(rf"[A-Za-z]{{{length}}}", value.strip()):
        kind = "an ISO 4217 currency code" if length == 3 else "an ISO 3166 country code"
        raise ApiError(422, f"{name} must be {kind}")
    return value.strip().upper()


def _amount(raw: Any, name: str, currency: str) -> Decimal:
    """A positive amount given as a JSON number or a decimal string."""
    if isinstance(raw, bool) or not isinstance(raw, int | Decimal | str):
        raise ApiError(422, f"{name} must be a number or a decimal string")
    try:
        value = money_input(raw)
    except ValueError:
        raise ApiError(422, f"{name} must be a number or a decimal string") from None
    if value <= 0:
        raise ApiError(422, f"{name} must be positive")
    if not fits_currency(value, currency):
        raise ApiError(422, f"{name} {raw} has too many decimals for {currency}")
    return value


def parse_order(payload: Any) -> tuple[str, OrderParams]:
    """(reference, params) from a POST /orders body, or 422."""
    if not isinstance(payload, Mapping):
        raise ApiError(422, "The request body must be a JSON object")
    reference = _required_str(payload, "reference", MAX_REFERENCE)
    brand = _required_str(payload, "brand")
    currency = _code(payload, "currency", 3)
    country = _code(payload, "country", 2)
    paying = _code(payload, "payment_currency", 3, required=False)
    assert currency is not None and country is not None
    face_value = _amount(payload.get("face_value"), "face_value", currency)
    return reference, OrderParams(brand, currency, face_value, country, paying or currency)


@dataclass(frozen=True)
class PayoutRequest:
    campaign_id: int
    wallet_currency: str
    recipients: list[tuple[str, str | None, Decimal, str]]  # email, name, amount, currency
    expires_in_days: int
    callback_url: str | None


def _campaign_id(raw: Any) -> int:
    if isinstance(raw, bool):
        raise ApiError(422, "campaign_id is required")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and raw.strip().isdigit():
        return int(raw.strip())
    raise ApiError(422, "campaign_id is required and must be a campaign id")


def parse_payout_order(payload: Any, max_recipients: int) -> PayoutRequest:
    if not isinstance(payload, Mapping):
        raise ApiError(422, "The request body must be a JSON object")
    campaign_id = _campaign_id(payload.get("campaign_id"))
    wallet = _code(payload, "wallet_currency", 3)
    assert wallet is not None
    days = payload.get("expires_in_days")
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 3650:
        raise ApiError(422, "expires_in_days must be a whole number of days from 1 to 3650")
    callback = payload.get("callback_url")
    if callback is not None and (
        not isinstance(callback, str) or not re.match(r"^https?://[^\s/]+", callback)
    ):
        raise ApiError(422, "callback_url must be an http(s) URL")
    raw_recipients = payload.get("recipients")
    if not isinstance(raw_recipients, list) or not raw_recipients:
        raise ApiError(422, "recipients must be a non-empty array")
    if len(raw_recipients) > max_recipients:
        raise ApiError(
            422,
            f"A payout order may hold at most {max_recipients} recipients; "
            f"got {len(raw_recipients)}",
        )
    recipients = [_recipient(raw, index) for index, raw in enumerate(raw_recipients)]
    return PayoutRequest(campaign_id, wallet, recipients, days, callback)


def _recipient(raw: Any, index: int) -> tuple[str, str | None, Decimal, str]:
    where = f"recipients[{index}]"
    if not isinstance(raw, Mapping):
        raise ApiError(422, f"{where} must be a JSON object")
    email = raw.get("email")
    if not isinstance(email, str) or not _EMAIL.match(email.strip()):
        raise ApiError(422, f"{where}.email must be a valid email address")
    name = raw.get("name")
    if name is not None and not isinstance(name, str):
        raise ApiError(422, f"{where}.name must be a string")
    currency = raw.get("currency")
    if not isinstance(currency, str) or not re.fullmatch(r"[A-Za-z]{3}", currency.strip()):
        raise ApiError(422, f"{where}.currency must be an ISO 4217 currency code")
    currency = currency.strip().upper()
    amount = _amount(raw.get("amount"), f"{where}.amount", currency)
    return email.strip(), name, amount, currency


# ---------------------------------------------------------------------------
# The sandbox state and its business rules. Every method here is synchronous,
# so each state change is atomic on the event loop.


class GifqSandbox:
    """All state of one sandbox server: accounts, catalog, limiter, faults, log."""

    def __init__(self, config: GifqSandboxConfig) -> None:
        self.config = config
        self.scheduler = DelayedTaskScheduler()
        self.limiter = FixedWindowRateLimiter(config.rate_limit, config.rate_window_seconds)
        self.faults = FaultInjector(config.fault_settings())
        self.idempotency = IdempotencyStore(config.idempotency_ttl_seconds)
        self.request_log = RequestLog()
        self.callbacks = CallbackSender(config.callback_timeout_seconds)
        self.catalog: dict[str, Brand] = {}
        self.accounts: dict[str, Account] = {}
        self.async_delay_seconds = config.async_delay_seconds
        self.fx_rates: dict[str, Decimal] = {}
        self.fx_fee_percent = Decimal(0)
        self.max_recipients = config.max_recipients
        self.clamp_page_limit = config.clamp_page_limit
        self.payout_redeem_rate = config.payout_redeem_rate
        self.day_seconds = config.day_seconds
        self._payout_rng = random.Random(config.seed)
        self._seq = 0
        self._generation = 0  # bumped by reset, so stale scheduled work does nothing
        self.reset()

    def reset(self) -> None:
        config = self.config
        self._generation += 1
        self.scheduler.clear()
        self.callbacks.clear()
        self.limiter.configure(config.rate_limit, config.rate_window_seconds)
        self.faults.reset(config.fault_settings())
        self.idempotency.clear()
        self.idempotency.ttl_seconds = config.idempotency_ttl_seconds
        self.request_log.clear()
        self.catalog = load_catalog()
        self.async_delay_seconds = config.async_delay_seconds
        self.fx_rates = {pair: money_input(rate) for pair, rate in config.fx_rates.items()}
        self.fx_fee_percent = money_input(config.fx_fee_percent)
        self.max_recipients = config.max_recipients
        self.clamp_page_limit = config.clamp_page_limit
        self.payout_redeem_rate = config.payout_redeem_rate
        self.day_seconds = config.day_seconds
        self._payout_rng = random.Random(config.seed)
        self.accounts = {key: self._new_account(key) for key in config.api_keys}

    def _new_account(self, api_key: str) -> Account:
        account = Account(api_key, campaigns=_seed_campaigns(iso_now()))
        for currency, raw in self.config.funding.items():
            amount = money_input(raw)  # already Decimal after __post_init__
            account.balances[currency] = round_money(Decimal(0), currency)
            if amount > 0:
                self.top_up(account, currency, round_money(amount, currency))
        return account

    @property
    def api_keys(self) -> list[str]:
        return list(self.accounts)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # -- money -------------------------------------------------------------------

    def _post(
        self,
        account: Account,
        kind: str,
        amount: Decimal,
        currency: str,
        **links: str | None,
    ) -> dict[str, Any]:
        """Move a balance by a signed amount and record the transaction."""
        balance = account.balance(currency) + amount
        account.balances[currency] = balance
        transaction: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "type": kind,
            "amount": money_out(amount, currency),
            "currency": currency,
        }
        transaction.update({name: value for name, value in links.items() if value is not None})
        transaction["balance_after"] = money_out(balance, currency)
        transaction["created_at"] = iso_now()
        account.transactions.append(transaction)
        return transaction

    def top_up(self, account: Account, currency: str, amount: Decimal) -> None:
        self._post(account, "top_up", amount, currency)

    def set_balance(self, account: Account, currency: str, amount: Decimal) -> None:
        account.balances[currency] = amount

    def rate(self, source: str, target: str) -> Decimal:
        rate = self.fx_rates.get(f"{source}/{target}")
        if rate is None:
            raise ApiError(422, f"No exchange rate from {source} to {target}")
        return rate

    @staticmethod
    def _ensure_funds(account: Account, currency: str, required: Decimal) -> None:
        available = account.balance(currency)
        if available < required:
            raise ApiError(
                422,
                f"Insufficient balance: {money_out(required, currency)} {currency} required, "
                f"{money_out(available, currency)} {currency} available",
            )

    # -- orders ------------------------------------------------------------------

    def match_option(self, params: OrderParams) -> ProductOption:
        """The catalog option for brand, country, currency and face value, or 422."""
        brand = self.catalog.get(params.brand)
        if brand is None:
            raise ApiError(422, f"No product matches brand {params.brand!r}")
        located = [
            o
            for o in brand.options
            if o.currency == params.currency and params.country in o.countries
        ]
        if not located:
            raise ApiError(
                422,
                f"No {params.brand} product for country {params.country} "
                f"and currency {params.currency}",
            )
        for option in located:
            if option.admits(params.face_value):
                return option
        sold = ", ".join(o.describe_values() for o in located)
        raise ApiError(
            422,
            f"No {params.brand} product for face value {params.face_value} {params.currency} "
            f"in {params.country}; available: {sold}",
        )

    def place_order(
        self, account: Account, reference: str, params: OrderParams, request_id: str
    ) -> tuple[int, Order]:
        """201 with a new pending order, 200 with the order a reference already made, or 422."""
        existing = account.orders_by_reference.get(reference)
        if existing is not None:
            if existing.params != params:
                raise ApiError(422, "Reference already used with different parameters")
            return 200, existing
        option = self.match_option(params)
        if option.stock_count is not None and option.stock_count <= 0:
            raise ApiError(422, f"Out of stock: {params.brand} {option.describe_values()}")
        if self.faults.roll("reject_item"):
            raise ApiError(422, f"Out of stock: {params.brand} {option.describe_values()}")
        price = cost_after_discount(params.face_value, option.discount, params.currency)
        fx = self._fx_charge(price, params.currency, params.payment_currency)
        charged = fx.total_charged if fx else price
        self._ensure_funds(account, params.payment_currency, charged)
        order = self._create_order(account, reference, params, option, price, fx, request_id)
        self._schedule(lambda: self._finish_order(account, order))
        return 201, order

    def _fx_charge(self, price: Decimal, currency: str, paying: str) -> FxCharge | None:
        if paying == currency:
            return None
        rate = self.rate(currency, paying)
        converted = round_money(price * rate, paying)
        fee = round_money(converted * self.fx_fee_percent / 100, paying)
        return FxCharge(rate, self.fx_fee_percent, converted, fee, paying)

    def _create_order(
        self,
        account: Account,
        reference: str,
        params: OrderParams,
        option: ProductOption,
        price: Decimal,
        fx: FxCharge | None,
        request_id: str,
    ) -> Order:
        now = iso_now()
        order = Order(
            seq=self._next_seq(),
            id=str(uuid.uuid4()),
            reference=reference,
            params=params,
            option_id=option.id,
            price=price,
            discount=option.discount,
            fx=fx,
            api_key=account.api_key,
            request_id=request_id,
            created_at=now,
            updated_at=now,
        )
        if option.stock_count is not None:
            option.stock_count -= 1
        account.orders.append(order)
        account.orders_by_id[order.id] = order
        account.orders_by_reference[reference] = order
        paying = params.payment_currency
        links = {"order_id": order.id, "reference": reference}
        self._post(account, "order", -(fx.converted if fx else price), paying, **links)
        if fx is not None and fx.fee_amount:
            self._post(account, "fx_fee", -fx.fee_amount, paying, **links)
        return order

    def _finish_order(self, account: Account, order: Order) -> None:
        order.updated_at = iso_now()
        if self.faults.roll("async_fail"):
            order.status = "failed"
            order.failure_reason = UPSTREAM_FAILURE
            self._post(
                account,
                "refund",
                order.charged,
                order.params.payment_currency,
                order_id=order.id,
                reference=order.reference,
            )
            option = self._option(order.params.brand, order.option_id)
            if option is not None and option.stock_count is not None:
                option.stock_count += 1
            return
        order.status = "completed"
        order.redemption = _redemption(self.catalog[order.params.brand].redemption_fields)

    def _option(self, brand: str, option_id: int) -> ProductOption | None:
        entry = self.catalog.get(brand)
        return next((o for o in entry.options if o.id == option_id), None) if entry else None

    def find_option(self, option_id: int) -> ProductOption | None:
        return next(
            (o for brand in self.catalog.values() for o in brand.options if o.id == option_id),
            None,
        )

    def _schedule(self, step: Callable[[], None], delay: float | None = None) -> None:
        generation = self._generation

        def run() -> None:
            if generation == self._generation:
                step()

        self.scheduler.call_later(self.async_delay_seconds if delay is None else delay, run)

    # -- payouts -----------------------------------------------------------------

    def place_payout_order(
        self, account: Account, request: PayoutRequest, idempotency_key: str | None
    ) -> PayoutOrder:
        """Check, charge and queue a payout order atomically, or 422 with nothing done."""
        campaign = account.campaigns.get(request.campaign_id)
        if campaign is None:
            raise ApiError(422, f"Campaign {request.campaign_id} not found")
        if campaign.status != "active":
            raise ApiError(
                422,
                f"Campaign {campaign.id} is {campaign.status}; payout orders need an active campaign",
            )
        wallet = request.wallet_currency
        recipients, rates = self._convert_recipients(request.recipients, wallet)
        total = sum((r.converted for r in recipients), round_money(Decimal(0), wallet))
        foreign = sum((r.converted for r in recipients if r.currency != wallet), Decimal(0))
        fee = round_money(foreign * self.fx_fee_percent / 100, wallet)
        self._ensure_funds(account, wallet, total + fee)
        now = iso_now()
        order = PayoutOrder(
            seq=self._next_seq(),
            id=str(uuid.uuid4()),
            campaign_id=campaign.id,
            wallet_currency=wallet,
            recipients=recipients,
            total_amount=total,
            fee_amount=fee,
            fx_rates=rates,
            fee_percentage=self.fx_fee_percent,
            expires_in_days=request.expires_in_days,
            callback_url=request.callback_url,
            api_key=account.api_key,
            idempotency_key=idempotency_key,
            created_at=now,
            updated_at=now,
        )
        account.payout_orders.append(order)
        account.payout_orders_by_id[order.id] = order
        self._post(account, "payout", -total, wallet, payout_order_id=order.id)
        if fee:
            self._post(account, "fx_fee", -fee, wallet, payout_order_id=order.id)
        self._schedule(lambda: self._start_payout_order(account, order))
        return order

    def _convert_recipients(
        self, given: list[tuple[str, str | None, Decimal, str]], wallet: str
    ) -> tuple[list[Recipient], dict[str, Decimal]]:
        rates: dict[str, Decimal] = {}
        recipients = []
        for email, name, amount, currency in given:
            if currency == wallet:
                converted = round_money(amount, wallet)
            else:
                rates[currency] = rate = self.rate(currency, wallet)
                converted = round_money(amount * rate, wallet)
            recipients.append(Recipient(email, name, amount, currency, converted))
        return recipients, rates

    def _start_payout_order(self, account: Account, order: PayoutOrder) -> None:
        order.status = "processing"
        order.updated_at = iso_now()
        self._schedule(lambda: self._finish_payout_order(account, order))

    def _finish_payout_order(self, account: Account, order: PayoutOrder) -> None:
        failed = self.faults.roll("payout_fail")
        order.status = "failed" if failed else "completed"
        order.updated_at = now = iso_now()
        if failed:
            order.failure_reason = PAYOUT_FAILURE
            self._post(
                account, "refund", order.charged, order.wallet_currency, payout_order_id=order.id
            )
        expires_at = _later(now, order.expires_in_days * self.day_seconds)
        for recipient in order.recipients:
            payout = Payout(
                seq=self._next_seq(),
                id=str(uuid.uuid4()),
                payout_order_id=order.id,
                recipient=recipient,
                status="failed" if failed else "sent",
                api_key=account.api_key,
                created_at=now,
                updated_at=now,
                expires_at=expires_at,
            )
            account.payouts.append(payout)
            account.payouts_by_id[payout.id] = payout
            order.payout_ids.append(payout.id)
        self.callbacks.send(order)
        if failed:
            return
        if self.payout_redeem_rate > 0:
            self._schedule(lambda: self._redeem_some(account, order))
        self._schedule(
            lambda: self._expire(account, order), order.expires_in_days * self.day_seconds
        )

    def _redeem_some(self, account: Account, order: PayoutOrder) -> None:
        for payout_id in order.payout_ids:
            payout = account.payouts_by_id[payout_id]
            if payout.status == "sent" and self._payout_rng.random() < self.payout_redeem_rate:
                self.set_payout_status(payout, "redeemed")

    def _expire(self, account: Account, order: PayoutOrder) -> None:
        for payout_id in order.payout_ids:
            payout = account.payouts_by_id[payout_id]
            if payout.status == "sent":
                self.set_payout_status(payout, "expired")

    @staticmethod
    def set_payout_status(payout: Payout, status: PayoutStatus) -> None:
        payout.status = status
        payout.updated_at = iso_now()


def _later(stamp: str, seconds: float) -> str:
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return iso_timestamp(moment + timedelta(seconds=seconds))


# ---------------------------------------------------------------------------
# Payout-order callbacks: one best-effort POST each.


class CallbackSender:
    def __init__(self, timeout_seconds: float) -> None:
        self.timeout_seconds = timeout_seconds
        self.deliveries: deque[dict[str, Any]] = deque(maxlen=MAX_KEPT_CALLBACKS)
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, loop: asyncio.AbstractEventLoop, client: httpx.AsyncClient) -> None:
        self._loop, self._client = loop, client

    def send(self, order: PayoutOrder) -> None:
        if order.callback_url is None or self._loop is None:
            return
        delivery: dict[str, Any] = {
            "payoutOrderId": order.id,
            "apiKey": order.api_key,
            "url": order.callback_url,
            "payload": order.as_json(),
            "statusCode": None,
            "error": None,
        }
        self.deliveries.append(delivery)
        task = self._loop.create_task(self._post(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, delivery: dict[str, Any]) -> None:
        assert self._client is not None
        try:
            response = await self._client.post(
                delivery["url"],
                content=encode_json(delivery["payload"]),
                headers={
                    "Content-Type": "application/json",
                    "User-Agent": "GIFQ-Callbacks/1.0 (sandbox)",
                },
                timeout=self.timeout_seconds,
            )
            delivery["statusCode"] = response.status_code
        except httpx.HTTPError as exc:
            delivery["error"] = f"{type(exc).__name__}: {exc}"

    async def stop(self) -> None:
        self.clear()
        self._loop, self._client = None, None

    def clear(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self._tasks.clear()
        self.deliveries.clear()


# ---------------------------------------------------------------------------
# HTTP helpers.


def _sandbox(request: Request) -> GifqSandbox:
    sandbox: GifqSandbox = request.app.state.sandbox
    return sandbox


def _account(request: Request) -> Account:
    account: Account = request.scope["gifq.account"]
    return account


def _request_id(request: Request) -> str | None:
    request_id: str | None = request.scope.get("gifq.request_id")
    return request_id


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return decode_json(raw)
    except JsonDecodeError as exc:
        raise ApiError(400, f"Invalid JSON: {exc}") from None


async def _deferred_latency(request: Request) -> None:
    await sleep_deferred_latency(request.scope, "gifq.deferred_latency")


def _pagination_error(name: str, last: int, got: str) -> ApiError:
    return ApiError(400, f"Pagination error: expected :{name} in 1..{last}; got {got}")


def _page_size(request: Request) -> int:
    sandbox = _sandbox(request)
    most = sandbox.config.max_page_limit
    raw = request.query_params.get("limit")
    if raw is None or raw == "":
        return min(DEFAULT_PAGE_LIMIT, most)
    try:
        limit = int(raw)
    except ValueError:
        raise _pagination_error("limit", most, raw) from None
    if limit > most and sandbox.clamp_page_limit:
        return most
    if not 1 <= limit <= most:
        raise _pagination_error("limit", most, raw)
    return limit


def paginated(request: Request, items: Sequence[Any], render: Callable[[Any], Any]) -> Response:
    """A bare JSON array of one page, described by the pagy headers, or 400."""
    limit = _page_size(request)
    last = max(1, math.ceil(len(items) / limit))
    raw = request.query_params.get("page")
    try:
        page = 1 if raw is None or raw == "" else int(raw)
    except ValueError:
        raise _pagination_error("page", last, raw or "") from None
    if not 1 <= page <= last:
        raise _pagination_error("page", last, str(raw))
    start = (page - 1) * limit
    headers = {
        "current-page": str(page),
        "page-items": str(limit),
        "total-count": str(len(items)),
        "total-pages": str(last),
        "link": _link_header(request, page, last, limit),
    }
    return json_response([render(item) for item in items[start : start + limit]], 200, headers)


def _link_header(request: Request, page: int, last: int, limit: int) -> str:
    params = dict(request.query_params)
    base = str(request.url.replace(query=""))
    wanted = {"first": 1, "prev": page - 1, "next": page + 1, "last": last}
    links = []
    for rel, number in wanted.items():
        if 1 <= number <= last:
            query = urlencode({**params, "page": number, "limit": limit})
            links.append(f'<{base}?{query}>; rel="{rel}"')
    return ", ".join(links)


# ---------------------------------------------------------------------------
# API endpoints.


async def list_products(request: Request) -> Response:
    brands = list(_sandbox(request).catalog.values())
    return paginated(request, brands, Brand.as_json)


async def create_order(request: Request) -> Response:
    """201 new, 200 known reference, 422 refused; the drop fault hits fresh commits only."""
    sandbox, account = _sandbox(request), _account(request)
    payload = await _json_body(request)
    await _deferred_latency(request)
    # From here to the answer nothing awaits, so checking and creating is atomic.
    reference, params = parse_order(payload)
    status, order = sandbox.place_order(account, reference, params, _request_id(request) or "")
    body = encode_json(order.as_json(with_redemption=True))
    headers = {"content-type": "application/json"}
    if status == 201 and sandbox.faults.roll("drop"):
        request.scope["gifq.fault"] = "drop"
        return DroppedResponse(body, status, headers)
    return Response(body, status_code=status, headers=headers)


def _newest_first(items: Sequence[Any]) -> Sequence[Any]:
    """Orders, payout orders and payouts, highest `seq` first, without sorting.

    Every such list only grows by `append` right after `_next_seq()` hands out
    the item's seq (nothing awaits in between), so it is in ascending seq order
    and reading it backwards is the same as sorting it by seq, descending.
    """
    return ReversedView(items)


async def list_orders(request: Request) -> Response:
    orders = _newest_first(_account(request).orders)
    return paginated(request, orders, lambda o: o.as_json(with_redemption=False))


async def get_order(request: Request) -> Response:
    order = _account(request).orders_by_id.get(request.path_params["order_id"])
    if order is None:
        raise ApiError(404, "Order not found")
    return json_response(order.as_json(with_redemption=True))


async def list_balances(request: Request) -> Response:
    balances = sorted(_account(request).balances.items())
    return json_response([{"currency": c, "amount": money_out(a, c)} for c, a in balances])


async def list_transactions(request: Request) -> Response:
    return paginated(request, ReversedView(_account(request).transactions), lambda t: t)


async def list_campaigns(request: Request) -> Response:
    campaigns = sorted(_account(request).campaigns.values(), key=lambda c: c.id)
    return paginated(request, campaigns, Campaign.as_json)


def _campaign(request: Request) -> Campaign:
    raw = request.path_params["campaign_id"]
    campaign = _account(request).campaigns.get(int(raw)) if raw.isdigit() else None
    if campaign is None:
        raise ApiError(404, "Campaign not found")
    return campaign


async def campaign_catalog(request: Request) -> Response:
    campaign, catalog = _campaign(request), _sandbox(request).catalog
    brands = [catalog[slug] for slug in sorted(campaign.brands) if slug in catalog]
    return paginated(request, brands, Brand.as_json)


async def create_payout_order(request: Request) -> Response:
    """202 queued; Idempotency-Key replays, 422 on a different payload, 409 in flight."""
    sandbox, account = _sandbox(request), _account(request)
    payload = await _json_body(request)
    key = _idempotency_key(request)

    async def handle() -> StoredResponse:
        await _deferred_latency(request)  # held inside the idempotency window on purpose
        return _payout_answer(request, sandbox, account, payload, key)

    stored, replayed = await run_idempotently(
        sandbox.idempotency,
        account.api_key,
        key,
        lambda: fingerprint("POST", request.url.path, payload),
        handle,
        keep=lambda status: status < 300 or status == 422,
        mismatch=ApiError(422, "Idempotency-Key already used with a different payload"),
        in_flight=ApiError(409, "A request with this Idempotency-Key is in progress"),
    )
    if not replayed and stored.status_code == 202 and sandbox.faults.roll("drop"):
        request.scope["gifq.fault"] = "drop"
        return DroppedResponse(stored.body, stored.status_code, stored.headers)
    return stored_as_response(stored, replayed=replayed)


def _payout_answer(
    request: Request, sandbox: GifqSandbox, account: Account, payload: Any, key: str | None
) -> StoredResponse:
    """The atomic part: no await between checking, charging and queueing."""
    headers = {"content-type": "application/json"}
    try:
        parsed = parse_payout_order(payload, sandbox.max_recipients)
        order = sandbox.place_payout_order(account, parsed, key)
    except ApiError as exc:
        return StoredResponse(exc.status_code, encode_json(exc.body(_request_id(request))), headers)
    return StoredResponse(202, encode_json({"id": order.id, "status": order.status}), headers)


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not key or len(key) > MAX_IDEMPOTENCY_KEY:
        raise ApiError(422, f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
    return key


async def list_payout_orders(request: Request) -> Response:
    orders = _newest_first(_account(request).payout_orders)
    return paginated(request, orders, PayoutOrder.as_json)


async def get_payout_order(request: Request) -> Response:
    order = _account(request).payout_orders_by_id.get(request.path_params["payout_order_id"])
    if order is None:
        raise ApiError(404, "Payout order not found")
    return json_response(order.as_json())


async def list_payouts(request: Request) -> Response:
    account = _account(request)
    wanted = request.query_params.get("payout_order_id")
    payouts: Sequence[Payout]
    if wanted:
        order = account.payout_orders_by_id.get(wanted)
        payouts = [account.payouts_by_id[i] for i in order.payout_ids] if order else []
    else:
        payouts = _newest_first(account.payouts)
    return paginated(request, payouts, Payout.as_json)


def api_routes() -> list[BaseRoute]:
    return [
        Route("/products", list_products, methods=["GET"]),
        Route("/orders", create_order, methods=["POST"]),
        Route("/orders", list_orders, methods=["GET"]),
        Route("/orders/{order_id}", get_order, methods=["GET"]),
        Route("/balances", list_balances, methods=["GET"]),
        Route("/transactions", list_transactions, methods=["GET"]),
        Route("/campaigns", list_campaigns, methods=["GET"]),
        Route("/campaigns/{campaign_id}/catalog", campaign_catalog, methods=["GET"]),
        Route("/payout-orders", create_payout_order, methods=["POST"]),
        Route("/payout-orders", list_payout_orders, methods=["GET"]),
        Route("/payout-orders/{payout_order_id}", get_payout_order, methods=["GET"]),
        Route("/payouts", list_payouts, methods=["GET"]),
    ]


# ---------------------------------------------------------------------------
# The gate in front of the API: request id, rate limit, auth, faults, log.


def _is_api_call(scope: Scope) -> bool:
    if scope["type"] != "http":
        return False
    path: str = scope["path"]
    in_api = path == API_ROOT or path.startswith(API_ROOT + "/")
    in_controls = path == CONTROL_ROOT or path.startswith(CONTROL_ROOT + "/")
    return in_api and not in_controls


class ApiGate:
    """Pure ASGI middleware, so the drop fault can leave a response unfinished."""

    def __init__(self, app: ASGIApp, sandbox: GifqSandbox) -> None:
        self.app = app
        self.sandbox = sandbox

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_api_call(scope):
            await self.app(scope, receive, send)
            return
        sandbox = self.sandbox
        request_id = str(uuid.uuid4())
        scope["gifq.request_id"] = request_id
        token = Headers(scope=scope).get("x-api-token")
        account = sandbox.accounts.get(token) if token else None
        bucket = account.api_key if account else f"ip:{client_ip(scope)}"
        decision = sandbox.limiter.hit(bucket)
        refusal: tuple[int, dict[str, Any], int | None, str | None] | None = None
        if not decision.allowed:
            refusal = 429, TOO_MANY, decision.reset_seconds, None
        elif account is None:
            refusal = 401, UNAUTHORIZED, None, None
        elif sandbox.faults.roll("500"):
            refusal = 500, {"message": "Internal Server Error", "status": "error"}, None, "500"
        elif (burst := sandbox.faults.burst_retry_after(bucket)) is not None:
            refusal = 429, TOO_MANY, burst, "429"
        if refusal is not None:
            await self._refuse(scope, receive, send, bucket, request_id, *refusal)
            return
        scope["gifq.account"] = account
        await latency_fault(sandbox.faults, scope, CREATION_PATHS, "gifq.deferred_latency")
        await self._forward(scope, receive, send, bucket, request_id)

    def _record(self, scope: Scope, bucket: str, status: int, retry_after: int | None) -> None:
        query = scope.get("query_string", b"").decode("latin-1")
        self.sandbox.request_log.record(
            bucket,
            scope["method"],
            scope["path"],
            status,
            retry_after,
            scope.get("gifq.fault"),
            query,
        )

    async def _refuse(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        bucket: str,
        request_id: str,
        status: int,
        body: dict[str, Any],
        retry_after: int | None,
        fault: str | None,
    ) -> None:
        headers = {REQUEST_ID_HEADER: request_id}
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        scope["gifq.fault"] = fault
        self._record(scope, bucket, status, retry_after)
        await json_response(body, status, headers)(scope, receive, send)

    async def _forward(
        self, scope: Scope, receive: Receive, send: Send, bucket: str, request_id: str
    ) -> None:
        await forward(
            self.app,
            scope,
            receive,
            send,
            extra_headers=[(REQUEST_ID_HEADER.lower().encode(), request_id.encode())],
            on_start=lambda status: self._record(scope, bucket, status, None),
            error_body={"message": "Internal Server Error", "status": "error"},
            log=log,
        )


# ---------------------------------------------------------------------------
# Sandbox controls.


def _control_token(request: Request) -> str | None:
    return request.headers.get("x-api-token") or request.headers.get("x-api-key") or None


def _control_account(request: Request) -> Account:
    sandbox, token = _sandbox(request), _control_token(request)
    if token:
        account = sandbox.accounts.get(token)
        if account is None:
            raise ApiError(404, "Unknown API token")
        return account
    if len(sandbox.accounts) == 1:
        return next(iter(sandbox.accounts.values()))
    raise ApiError(400, f"X-Api-Token required: {len(sandbox.accounts)} tokens are configured")


def _filtered_accounts(request: Request) -> list[Account]:
    if _control_token(request):
        return [_control_account(request)]
    return list(_sandbox(request).accounts.values())


async def _control_object(request: Request) -> Mapping[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    body = await _json_body(request)
    if not isinstance(body, Mapping):
        raise ApiError(400, "The body must be a JSON object")
    return body


@contextlib.contextmanager
def _refused_setting() -> Iterator[None]:
    """A control setting's ValueError as this contract's 400."""
    try:
        yield
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None


def _number(
    body: Mapping[str, Any], name: str, *, low: float = 0.0, high: float | None = None
) -> float:
    with _refused_setting():
        return setting_number(body, name, low=low, high=high)


def _control_money(raw: Any, currency: str, name: str) -> Decimal:
    try:
        amount = money_input(raw)
    except (TypeError, ValueError):
        raise ApiError(400, f"{name} must be a number or a decimal string") from None
    if not fits_currency(amount, currency):
        raise ApiError(400, f"{name} has too many decimals for {currency}")
    return round_money(amount, currency)


def _control_percent(raw: Any, name: str) -> Decimal:
    try:
        value = money_input(raw)
    except (TypeError, ValueError):
        raise ApiError(400, f"{name} must be a number or a decimal string") from None
    if not 0 <= value <= 100:
        raise ApiError(400, f"{name} must be within 0..100")
    return value


def _path_currency(request: Request) -> str:
    currency: str = request.path_params["currency"].upper()
    if not is_currency_code(currency):
        raise ApiError(400, "currency must be a 3-letter ISO code")
    return currency


def _dec(value: float) -> Decimal:
    return Decimal(str(value))


def _config_json(sandbox: GifqSandbox) -> dict[str, Any]:
    return {
        "provider": "gifq",
        "apiRoot": API_ROOT,
        "apiKeys": sandbox.api_keys,
        "asyncDelaySeconds": _dec(sandbox.async_delay_seconds),
        "idempotencyTtlSeconds": _dec(sandbox.idempotency.ttl_seconds),
        "maxRecipients": sandbox.max_recipients,
        "maxPageLimit": sandbox.config.max_page_limit,
        "clampPageLimit": sandbox.clamp_page_limit,
        "fxRates": {pair: str(rate) for pair, rate in sorted(sandbox.fx_rates.items())},
        "fxFeePercent": str(sandbox.fx_fee_percent),
        "payoutRedeemRate": _dec(sandbox.payout_redeem_rate),
        "daySeconds": _dec(sandbox.day_seconds),
        "rateLimit": rate_limit_json(sandbox.limiter),
        "faults": faults_json(sandbox.faults),
    }


async def control_health(request: Request) -> Response:
    return json_response({"ok": True, "provider": "gifq"})


async def control_get_config(request: Request) -> Response:
    return json_response(_config_json(_sandbox(request)))


async def control_patch_config(request: Request) -> Response:
    sandbox, body = _sandbox(request), await _control_object(request)
    if "asyncDelaySeconds" in body:
        sandbox.async_delay_seconds = _number(body, "asyncDelaySeconds")
    if "idempotencyTtlSeconds" in body:
        sandbox.idempotency.ttl_seconds = _number(body, "idempotencyTtlSeconds")
    if "maxRecipients" in body:
        sandbox.max_recipients = int(_number(body, "maxRecipients", low=1))
    if "payoutRedeemRate" in body:
        sandbox.payout_redeem_rate = _number(body, "payoutRedeemRate", high=1.0)
    if "daySeconds" in body:
        sandbox.day_seconds = _number(body, "daySeconds")
    if "clampPageLimit" in body:
        if not isinstance(body["clampPageLimit"], bool):
            raise ApiError(400, "clampPageLimit must be a boolean")
        sandbox.clamp_page_limit = body["clampPageLimit"]
    if "fxFeePercent" in body:
        sandbox.fx_fee_percent = _control_percent(body["fxFeePercent"], "fxFeePercent")
    if "fxRates" in body:
        rates = body["fxRates"]
        if not isinstance(rates, Mapping):
            raise ApiError(400, 'fxRates must be an object like {"GBP/USD": "1.27"}')
        try:
            sandbox.fx_rates = merge_rates(sandbox.fx_rates, rates)
        except (TypeError, ValueError) as exc:
            raise ApiError(400, str(exc)) from None
    return json_response(_config_json(sandbox))


async def control_patch_faults(request: Request) -> Response:
    sandbox, body = _sandbox(request), await _control_object(request)
    with _refused_setting():
        update_faults(sandbox.faults, body, GIFQ_FAULT_KINDS)
    return json_response(faults_json(sandbox.faults))


async def control_rate_limit(request: Request) -> Response:
    sandbox, body = _sandbox(request), await _control_object(request)
    with _refused_setting():
        update_rate_limit(sandbox.limiter, body)
    return json_response(rate_limit_json(sandbox.limiter))


def _balances_json(account: Account) -> dict[str, Any]:
    balances = sorted(account.balances.items())
    return {
        "apiKey": account.api_key,
        "balances": [{"currency": c, "amount": money_out(a, c)} for c, a in balances],
    }


async def control_balances(request: Request) -> Response:
    return json_response(_balances_json(_control_account(request)))


async def control_fund(request: Request) -> Response:
    account, currency = _control_account(request), _path_currency(request)
    body = await _control_object(request)
    amount = _control_money(body.get("amount"), currency, "amount")
    if amount <= 0:
        raise ApiError(400, "amount must be positive")
    _sandbox(request).top_up(account, currency, amount)
    return json_response(_balances_json(account))


async def control_drain(request: Request) -> Response:
    account, currency = _control_account(request), _path_currency(request)
    _sandbox(request).set_balance(account, currency, round_money(Decimal(0), currency))
    return json_response(_balances_json(account))


async def control_set_balance(request: Request) -> Response:
    account, currency = _control_account(request), _path_currency(request)
    body = await _control_object(request)
    amount = _control_money(body.get("amount"), currency, "amount")
    _sandbox(request).set_balance(account, currency, amount)
    return json_response(_balances_json(account))


def _checked_campaign_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if "title" in body:
        if not isinstance(body["title"], str) or not body["title"].strip():
            raise ApiError(400, "title must be a non-empty string")
        fields["title"] = body["title"].strip()
    if "status" in body:
        if body["status"] not in CAMPAIGN_STATUSES:
            raise ApiError(400, f"status must be one of {', '.join(CAMPAIGN_STATUSES)}")
        fields["status"] = body["status"]
    if "brands" in body:
        brands = body["brands"]
        if not isinstance(brands, list) or not all(isinstance(b, str) for b in brands):
            raise ApiError(400, "brands must be a list of brand slugs")
        fields["brands"] = list(dict.fromkeys(brands))
    return fields


async def control_campaigns(request: Request) -> Response:
    account = _control_account(request)
    campaigns = sorted(account.campaigns.values(), key=lambda c: c.id)
    return json_response({"apiKey": account.api_key, "campaigns": [c.as_json() for c in campaigns]})


async def control_create_campaign(request: Request) -> Response:
    account, body = _control_account(request), await _control_object(request)
    fields = _checked_campaign_fields(body)
    if "title" not in fields:
        raise ApiError(400, "title is required")
    campaign_id = body.get("id", max(account.campaigns, default=100) + 1)
    if isinstance(campaign_id, bool) or not isinstance(campaign_id, int) or campaign_id < 1:
        raise ApiError(400, "id must be a positive integer")
    if campaign_id in account.campaigns:
        raise ApiError(409, f"Campaign {campaign_id} already exists")
    now = iso_now()
    campaign = Campaign(
        campaign_id,
        fields["title"],
        fields.get("status", "active"),
        fields.get("brands", sorted(_sandbox(request).catalog)),
        now,
        now,
    )
    account.campaigns[campaign.id] = campaign
    return json_response(campaign.as_json(), 201)


async def control_patch_campaign(request: Request) -> Response:
    account, body = _control_account(request), await _control_object(request)
    raw = request.path_params["campaign_id"]
    campaign = account.campaigns.get(int(raw)) if raw.isdigit() else None
    if campaign is None:
        raise ApiError(404, "Campaign not found")
    fields = _checked_campaign_fields(body)
    if not fields:
        raise ApiError(400, "provide at least one of title, status, brands")
    for name, value in fields.items():
        setattr(campaign, name, value)
    campaign.updated_at = iso_now()
    return json_response(campaign.as_json())


async def control_patch_product(request: Request) -> Response:
    sandbox, body = _sandbox(request), await _control_object(request)
    raw = request.path_params["option_id"]
    option = sandbox.find_option(int(raw)) if raw.isdigit() else None
    if option is None:
        raise ApiError(404, "Product option not found")
    changes: dict[str, Any] = {}
    if "stock_count" in body:
        stock = body["stock_count"]
        if stock is not None and (
            isinstance(stock, bool) or not isinstance(stock, int) or stock < 0
        ):
            raise ApiError(400, "stock_count must be a whole number or null")
        changes["stock_count"] = stock
    for name in ("discount", "min_face_value", "max_face_value"):
        if name in body:
            try:
                changes[name] = money_input(body[name])
            except (TypeError, ValueError):
                raise ApiError(400, f"{name} must be a number") from None
    if not changes:
        raise ApiError(400, "provide one of stock_count, discount, min_face_value, max_face_value")
    for name, value in changes.items():
        setattr(option, name, value)
    return json_response(option.as_json())


async def control_orders(request: Request) -> Response:
    orders = sorted((o for a in _filtered_accounts(request) for o in a.orders), key=lambda o: o.seq)
    rows = [
        {
            **o.as_json(with_redemption=True),
            "apiKey": o.api_key,
            "charged": money_out(o.charged, o.params.payment_currency),
            "chargedCurrency": o.params.payment_currency,
            "optionId": o.option_id,
            "requestId": o.request_id,
        }
        for o in orders
    ]
    return json_response({"total": len(rows), "orders": rows})


async def control_payout_orders(request: Request) -> Response:
    accounts = _filtered_accounts(request)
    orders = sorted((o for a in accounts for o in a.payout_orders), key=lambda o: o.seq)
    rows = [
        {
            **o.as_json(),
            "apiKey": o.api_key,
            "idempotencyKey": o.idempotency_key,
            "charged": money_out(o.charged, o.wallet_currency),
            "recipients": [r.as_json() for r in o.recipients],
        }
        for o in orders
    ]
    return json_response({"total": len(rows), "payoutOrders": rows})


async def control_payouts(request: Request) -> Response:
    payouts = sorted(
        (p for a in _filtered_accounts(request) for p in a.payouts), key=lambda p: p.seq
    )
    rows = [{**p.as_json(), "apiKey": p.api_key} for p in payouts]
    return json_response({"total": len(rows), "payouts": rows})


async def control_patch_payout(request: Request) -> Response:
    payout_id = request.path_params["payout_id"]
    payout = next(
        (
            a.payouts_by_id[payout_id]
            for a in _filtered_accounts(request)
            if payout_id in a.payouts_by_id
        ),
        None,
    )
    if payout is None:
        raise ApiError(404, "Payout not found")
    body = await _control_object(request)
    status = body.get("status")
    if status not in PAYOUT_CONTROL_STATUSES:
        raise ApiError(400, f"status must be one of {', '.join(PAYOUT_CONTROL_STATUSES)}")
    if payout.status == "failed":
        raise ApiError(409, "A failed payout was refunded and cannot change")
    _sandbox(request).set_payout_status(payout, status)
    return json_response(payout.as_json())


async def control_callbacks(request: Request) -> Response:
    token = _control_token(request)
    rows = [
        d for d in _sandbox(request).callbacks.deliveries if token is None or d["apiKey"] == token
    ]
    return json_response({"total": len(rows), "callbacks": rows})


def _since(request: Request) -> int:
    raw = request.query_params.get("since") or "0"
    if not raw.isdigit():
        raise ApiError(400, "since must be a whole number")
    return int(raw)


async def control_stats(request: Request) -> Response:
    sandbox, token = _sandbox(request), _control_token(request)
    since = _since(request)
    include_log = parse_bool(request.query_params.get("log")) is not False
    accounts = _filtered_accounts(request)
    counts = {
        "orders": sum(len(a.orders) for a in accounts),
        "payoutOrders": sum(len(a.payout_orders) for a in accounts),
        "payouts": sum(len(a.payouts) for a in accounts),
    }
    return json_response(
        stats_json(sandbox, counts, since=since, bucket=token, include_log=include_log)
    )


def control_routes() -> list[BaseRoute]:
    return [
        Route("/health", control_health, methods=["GET"]),
        Route("/config", control_get_config, methods=["GET"]),
        Route("/config", control_patch_config, methods=["PATCH"]),
        Route("/faults", control_get_faults, methods=["GET"]),
        Route("/faults", control_patch_faults, methods=["PATCH", "PUT"]),
        Route("/rate-limit", control_rate_limit, methods=["PUT"]),
        Route("/balances", control_balances, methods=["GET"]),
        Route("/balances/{currency}/fund", control_fund, methods=["POST"]),
        Route("/balances/{currency}/drain", control_drain, methods=["POST"]),
        Route("/balances/{currency}", control_set_balance, methods=["PUT"]),
        Route("/campaigns", control_campaigns, methods=["GET"]),
        Route("/campaigns", control_create_campaign, methods=["POST"]),
        Route("/campaigns/{campaign_id}", control_patch_campaign, methods=["PATCH"]),
        Route("/products/{option_id}", control_patch_product, methods=["PATCH"]),
        Route("/orders", control_orders, methods=["GET"]),
        Route("/payout-orders", control_payout_orders, methods=["GET"]),
        Route("/payouts", control_payouts, methods=["GET"]),
        Route("/payouts/{payout_id}", control_patch_payout, methods=["PATCH"]),
        Route("/callbacks", control_callbacks, methods=["GET"]),
        Route("/stats", control_stats, methods=["GET"]),
        Route("/reset", control_reset, methods=["POST"]),
    ]


# ---------------------------------------------------------------------------
# The app.


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return json_response(exc.body(_request_id(request)), exc.status_code)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    messages = {404: "Not found", 405: "Method not allowed"}
    body = {"message": messages.get(exc.status_code, exc.detail), "status": "error"}
    return json_response(body, exc.status_code)


def create_app(config: GifqSandboxConfig | None = None) -> Starlette:
    """The sandbox as an ASGI app; its state is `app.state.sandbox`."""
    sandbox = GifqSandbox(config or GifqSandboxConfig())
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        ApiError: _api_error,
        HTTPException: _http_error,
    }
    app = Starlette(
        # The control mount comes first: /api/__sandbox/... must not reach the API routes.
        routes=[Mount(CONTROL_ROOT, routes=control_routes()), Mount(API_ROOT, routes=api_routes())],
        exception_handlers=handlers,
        lifespan=worker_lifespan(sandbox.scheduler, sandbox.callbacks, "gifq-sandbox-worker"),
    )
    app.state.sandbox = sandbox
    app.add_middleware(ApiGate, sandbox=sandbox)
    return app
