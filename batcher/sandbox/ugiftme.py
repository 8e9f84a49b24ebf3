"""A faithful local UGiftMe Business API, for rehearsals and end-to-end tests.

The API lives under ``/api/v1/business`` and follows docs/providers/ugiftme.md
line by line. Each configured API key is its own business account, with its own
wallets, orders, order requests, idempotency keys, rate-limit window and webhooks.

Sandbox controls live at the host root under ``/__sandbox`` (never under the API
root, never rate limited, never faulted). An account is chosen with the
``X-API-Key`` header, which may be left out when only one key is configured.
Listing endpoints (orders, order-requests, stats) cover every account unless the
header narrows them to one. All bodies are JSON; money may be sent as a JSON
number or a decimal string.

====================================  ===================================================
``GET    /__sandbox/health``           ``{"ok": true}``
``GET    /__sandbox/config``           runtime settings (mode, delays, limits, faults, keys)
``PATCH  /__sandbox/config``           any of ``asyncMode``, ``asyncDelaySeconds``,
                                       ``bulkLimit``, ``idempotencyTtlSeconds``,
                                       ``webhookTimeScale``
``PUT    /__sandbox/mode``             ``{"mode": "sync"|"async", "asyncDelaySeconds"?}``
``GET    /__sandbox/faults``           ``{"500","429","latency","drop","reject_item",
                                       "async_fail","latencyMs","burstSeconds","seed"}``
``PATCH  /__sandbox/faults``           any of the keys above (PUT too); ``seed``, even
                                       null, reseeds the one ``random.Random``
``PUT    /__sandbox/rate-limit``       ``{"limit": 120, "windowSeconds": 60}``; windows restart
``GET    /__sandbox/wallets``          ``{"wallets": [{currency, balance, held,
                                       availableBalance, holds}]}``
``POST   /__sandbox/wallets/{cur}/fund``   ``{"amount": "100.00"}``: a ``funding``
                                       transaction; creates the wallet if needed
``POST   /__sandbox/wallets/{cur}/drain``  balance to 0 (no transaction)
``PUT    /__sandbox/wallets/{cur}``    ``{"balance": "5.00"}`` (no transaction)
``PUT    /__sandbox/account/ip-allow-list``  ``{"ips": ["10.0.0.0/8", ...] | null}``
``PUT    /__sandbox/account/profile``  ``{"complete": false}``: every API call gets 403
``PATCH  /__sandbox/products/{code}``  any of ``isActive``, ``discount``, ``minValue``,
                                       ``maxValue``, ``denominations``; emits
                                       ``product.updated``
``GET    /__sandbox/orders``           ``{"total", "orders": [order + apiKey,
                                       idempotencyKey, orderRequestId, cost]}``
``GET    /__sandbox/order-requests``   ``{"total", "orderRequests": [...]}``
``GET    /__sandbox/webhooks/deliveries``  every delivery attempt
``GET    /__sandbox/stats``            ``{"requests": {key: n}, "tooManyRequests": {key: n},
                                       "tooManyRequestsTotal", "statusCounts", "faults",
                                       "orders", "orderRequests", "log": [{"seq", "t",
                                       "apiKey", "method", "path", "status",
                                       "retryAfter", "fault"}]}``; ``t`` is monotonic
                                       seconds; ``?since=SEQ``, ``?log=false``
``POST   /__sandbox/reset``            back to the startup configuration, all data gone
====================================  ===================================================

Choices where the contract is silent (each is pinned by a test in tests/sandbox):

- Sync bulk: items are validated one by one; the funding check covers the items
  that pass validation, all or nothing, before anything is created.
- Async: the request shape (JSON, ``orders`` array, size, one currency) is checked
  at acceptance (400); the hold covers the items that pass validation at that
  moment (402 if it cannot be placed). Item validation runs again in the worker,
  where rejections and the ``reject_item`` fault land in ``rejectedOrders``. A
  single async order that fails validation ends ``failed`` with the reason.
- A request whose items are all rejected still succeeds (201, or ``succeeded``)
  with ``orders: []`` and every item in ``rejectedOrders``.
- Idempotency: 2xx, 400 and 402 answers from the order handlers are stored and
  replayed (Stripe-like; ``idempotency_replay_errors=False`` stores only 2xx).
  401/403/409/429 and every 5xx are never stored, so a retry is handled afresh.
  Payloads are compared after canonical serialisation (sorted keys, numbers
  normalised, so 50 == 50.00), together with the route.
- The ``drop`` fault only hits a fresh commit, never a replay, so a retry with
  the same key always gets the committed answer.
- Order lists (``GET /orders`` and ``/orders/search``) strip ``voucherCode`` and
  ``redemptionUrl``; ``GET /orders/{id}`` and creation answers carry both.
- ``limit`` above 100 or a malformed ``page`` gets 400; a page past the end is empty.
- The webhook body is the event payload plus an ``event`` key; the signature is
  keyed with the secret's UTF-8 bytes. ``GET /webhooks`` answers ``{"webhooks": [...]}``.
- Merchant names match case-insensitively; currency codes must match exactly.
- ``GET /wallet`` lists each wallet's 20 newest transactions; ``/wallet/transactions``
  pages through all of them. Control set/drain write no transaction.
- Order requests spend ``async_delay_seconds`` queued, then as long processing.
- The incomplete-profile 403 applies to every API call, not only ``/auth``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import importlib.resources
import ipaddress
import logging
import math
import re
import secrets
import string
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

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
    RateDecision,
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
    object_id,
    parse_bool,
    run_idempotently,
    stored_as_response,
    ulid,
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

API_ROOT = "/api/v1/business"
CONTROL_ROOT = "/__sandbox"
ASYNC_HEADER = "X-Business-Orders-Async"
DEFAULT_FUNDING: Mapping[str, Decimal] = {
    "GBP": Decimal("10000.00"),
    "EUR": Decimal("10000.00"),
    "USD": Decimal("10000.00"),
}
VALID_EVENTS = (
    "order.queued",
    "order.processing",
    "order.succeeded",
    "order.failed",
    "product.updated",
    "wallet.updated",
)
WEBHOOK_RETRY_DELAYS = (60.0, 300.0, 900.0, 3600.0, 14400.0)  # seconds, before scaling
MAX_IDEMPOTENCY_KEY = 255
MAX_KEPT_DELIVERIES = 10_000  # the control listing keeps the most recent ones
MAX_PAGE_LIMIT = 100
DEFAULT_PAGE_LIMIT = 50
ORDER_SORT_FIELDS = ("createdAt", "updatedAt", "valuePurchased", "productCode")
KEPT_ORDER_SEARCHES = 16  # per account: the filtered listings kept for the next page
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_VOUCHER_ALPHABET = "".join(c for c in string.ascii_uppercase + string.digits if c not in "O0I1")


# ---------------------------------------------------------------------------
# Configuration.


@dataclass
class UGiftMeSandboxConfig:
    """Everything the sandbox starts from; `reset` returns to exactly this."""

    api_keys: tuple[str, ...] = ()  # empty: one random UUID key is generated
    rate_limit: int = 120
    rate_window_seconds: float = 60.0
    async_mode: bool = True
    async_delay_seconds: float = 1.0  # time spent in `queued`, then again in `processing`
    idempotency_ttl_seconds: float = 24 * 3600.0
    idempotency_replay_errors: bool = True  # replay stored 400/402 answers too
    bulk_limit: int = 100
    # Starting balances per currency, merged over DEFAULT_FUNDING (10,000 GBP/EUR/USD);
    # give a currency 0 for an empty wallet.
    funding: Mapping[str, Decimal | int | str] = field(default_factory=dict)
    seed: int | None = None
    fault_500: float = 0.0
    fault_429: float = 0.0
    fault_latency: float = 0.0
    latency_ms: int = 250
    fault_drop: float = 0.0
    fault_reject_item: float = 0.0
    fault_async_fail: float = 0.0
    burst_seconds: float = 1.0
    webhook_time_scale: float = 1.0
    webhook_timeout_seconds: float = 5.0
    business_name: str = "Sandbox Trading Ltd"

    def __post_init__(self) -> None:
        self.api_keys = unique_api_keys(self.api_keys)
        self.funding = merge_funding(DEFAULT_FUNDING, self.funding)
        if self.bulk_limit < 1:
            raise ValueError("bulk_limit must be at least 1")

    def fault_settings(self) -> FaultSettings:
        return fault_settings_for(self, FAULT_KINDS)


# ---------------------------------------------------------------------------
# Catalog.


@dataclass(frozen=True)
class CatalogProduct:
    code: str
    name: str
    merchant: str
    currency: str
    countries: tuple[str, ...]
    category: str
    min_value: Decimal
    max_value: Decimal
    denominations: tuple[Decimal, ...]
    discount: Decimal
    is_active: bool
    image_url: str
    updated_at: str

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> CatalogProduct:
        return cls(
            code=raw["productCode"],
            name=raw["name"],
            merchant=raw["merchant"],
            currency=raw["currency"],
            countries=tuple(raw.get("countries", ())),
            category=raw["category"],
            min_value=Decimal(raw["minValue"]),
            max_value=Decimal(raw["maxValue"]),
            denominations=tuple(Decimal(d) for d in raw.get("denominations", ())),
            discount=Decimal(raw.get("discount", 0)),
            is_active=bool(raw.get("isActive", True)),
            image_url=raw.get("imageUrl", ""),
            updated_at=raw.get("updatedAt", iso_now()),
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "productCode": self.code,
            "name": self.name,
            "merchant": self.merchant,
            "currency": self.currency,
            "countries": list(self.countries),
            "category": self.category,
            "minValue": self.min_value,
            "maxValue": self.max_value,
            "denominations": list(self.denominations),
            "discount": self.discount,
            "isActive": self.is_active,
            "imageUrl": self.image_url,
            "updatedAt": self.updated_at,
        }

    def value_problem(self, value: Decimal) -> str | None:
        """Why a face value is not allowed for this product, or None when it is."""
        if value <= 0:
            return "valuePurchased must be positive"
        if not fits_currency(value, self.currency):
            return f"valuePurchased {value} has too many decimals for {self.currency}"
        if self.denominations:
            if value not in self.denominations:
                allowed = ", ".join(str(d) for d in self.denominations)
                return f"valuePurchased {value} is not an allowed denomination ({allowed})"
            return None
        if not self.min_value <= value <= self.max_value:
            return f"valuePurchased {value} is outside {self.min_value}..{self.max_value}"
        return None


def load_catalog() -> dict[str, CatalogProduct]:
    """The shipped catalog, with money read as Decimal from the raw JSON text."""
    text = (
        importlib.resources.files("batcher.sandbox")
        .joinpath("data/ugiftme_catalog.json")
        .read_text(encoding="utf-8")
    )
    products = [CatalogProduct.from_json(raw) for raw in decode_json(text)]
    return {product.code: product for product in products}


# ---------------------------------------------------------------------------
# Account state.


class ApiError(Exception):
    """An error answer with the contract's JSON shape."""

    def __init__(self, status_code: int, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.status_code = status_code
        self.body: dict[str, Any] = {"error": error, **extra}


@dataclass
class Wallet:
    id: str
    user_id: str
    currency: str
    balance: Decimal
    created_at: str
    updated_at: str
    holds: dict[str, Decimal] = field(default_factory=dict)  # order request id -> amount
    held: Decimal = Decimal(0)
    transactions: list[dict[str, Any]] = field(default_factory=list)  # oldest first

    @property
    def available(self) -> Decimal:
        return self.balance - self.held

    def place_hold(self, request_id: str, amount: Decimal) -> None:
        self.holds[request_id] = amount
        self.held += amount
        self.updated_at = iso_now()

    def release_hold(self, request_id: str) -> Decimal:
        amount = self.holds.pop(request_id, Decimal(0))
        self.held -= amount
        self.updated_at = iso_now()
        return amount

    def as_json(self, recent: int = 20) -> dict[str, Any]:
        return {
            "_id": self.id,
            "userID": self.user_id,
            "currency": self.currency,
            "balance": self.balance,
            "availableBalance": self.available,
            "transactions": list(reversed(self.transactions[-recent:])),
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
        }


@dataclass
class StoredOrder:
    seq: int
    body: dict[str, Any]  # the full order, voucher code included
    cost: Decimal
    api_key: str
    idempotency_key: str | None
    order_request_id: str | None
    _created: tuple[str, datetime] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def listing(self) -> dict[str, Any]:
        """The order as list endpoints show it: bearer credentials removed."""
        merchant = {
            k: v
            for k, v in self.body["merchant"].items()
            if k not in {"voucherCode", "redemptionUrl"}
        }
        return {**self.body, "merchant": merchant}

    @property
    def created(self) -> datetime:
        """`createdAt` as an aware datetime, parsed again only if the string changed."""
        raw = self.body["createdAt"]
        if self._created is None or raw != self._created[0]:
            self._created = (raw, datetime.fromisoformat(raw.replace("Z", "+00:00")))
        return self._created[1]


OrderSearchKey = tuple[
    str, str, str, bool | None, bool | None, datetime | None, datetime | None
]  # sortBy, merchant, status, isActive, isPaid, startDate, endDate


class OrderListings:
    """One account's orders sorted for the listing endpoints, kept between page requests.

    Every list is in ascending ``(body[sortBy], seq)`` order; ``seq`` is unique, so
    the descending listing is exactly this list read backwards. Everything is
    dropped as soon as ``(account.orders_version, len(account.orders))`` moves: an
    order added, or `Account.orders_changed` called after an order's body changed.
    Only read and rebuilt from synchronous code on the event loop, like all state.
    """

    def __init__(self) -> None:
        self._stamp: tuple[int, int] | None = None
        self._ascending: dict[str, list[StoredOrder]] = {}
        self._searches: OrderedDict[OrderSearchKey, list[StoredOrder]] = OrderedDict()

    def _sync(self, account: Account) -> None:
        stamp = (account.orders_version, len(account.orders))
        if stamp != self._stamp:
            self._stamp = stamp
            self._ascending.clear()
            self._searches.clear()

    def ascending(self, account: Account, sort_by: str) -> list[StoredOrder]:
        """Every order by ``(body[sort_by], seq)``; shared, so never change the list."""
        self._sync(account)
        ordered = self._ascending.get(sort_by)
        if ordered is None:
            ordered = sorted(account.orders, key=lambda o: (o.body[sort_by], o.seq))
            self._ascending[sort_by] = ordered
        return ordered

    def search(
        self,
        account: Account,
        key: OrderSearchKey,
        compute: Callable[[], list[StoredOrder]],
    ) -> list[StoredOrder]:
        """The ascending result of one search, kept for its next pages (least recently
        used dropped first); shared, so never change the list."""
        self._sync(account)
        found = self._searches.get(key)
        if found is None:
            found = compute()
            self._searches[key] = found
            if len(self._searches) > KEPT_ORDER_SEARCHES:
                self._searches.popitem(last=False)
        else:
            self._searches.move_to_end(key)
        return found


RequestType = Literal["single", "bulk"]
RequestStatus = Literal["queued", "processing", "succeeded", "failed"]


@dataclass
class OrderRequest:
    id: str
    type: RequestType
    payload: Any
    currency: str | None
    hold: Decimal
    api_key: str
    idempotency_key: str | None
    order_count: int
    created_at: str
    updated_at: str
    status: RequestStatus = "queued"
    result: Any = None
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "orderRequestId": self.id,
            "status": self.status,
            "type": self.type,
        }
        if self.result is not None:
            body["result"] = self.result
        if self.error is not None:
            body["error"] = self.error
        body["createdAt"] = self.created_at
        body["updatedAt"] = self.updated_at
        return body


@dataclass
class Webhook:
    id: str
    url: str
    events: list[str]
    description: str | None
    secret: str
    created_at: str
    updated_at: str
    is_active: bool = True

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "events": list(self.events),
            "description": self.description,
            "isActive": self.is_active,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
        }


@dataclass
class Account:
    api_key: str
    business_id: str
    user_id: str
    name: str
    email: str
    wallets: dict[str, Wallet] = field(default_factory=dict)
    orders: list[StoredOrder] = field(default_factory=list)
    orders_by_id: dict[str, StoredOrder] = field(default_factory=dict)
    transactions: list[dict[str, Any]] = field(default_factory=list)  # every currency
    requests: dict[str, OrderRequest] = field(default_factory=dict)
    webhooks: dict[str, Webhook] = field(default_factory=dict)
    ip_allow_list: list[str] | None = None
    profile_complete: bool = True
    # Bumped by `orders_changed`; the listings are rebuilt when it or len(orders) moves.
    orders_version: int = 0
    listings: OrderListings = field(default_factory=OrderListings, repr=False, compare=False)

    def orders_changed(self) -> None:
        """Call after adding an order or changing one's body: listings re-sort lazily."""
        self.orders_version += 1

    def wallet(self, currency: str) -> Wallet:
        """The wallet for a currency, created empty on first use."""
        wallet = self.wallets.get(currency)
        if wallet is None:
            now = iso_now()
            wallet = Wallet(object_id(), self.user_id, currency, Decimal(0), now, now)
            wallet.balance = round_money(Decimal(0), currency)
            self.wallets[currency] = wallet
        return wallet

    def ip_allowed(self, address: str) -> bool:
        if self.ip_allow_list is None:
            return True
        try:
            client = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(
            client in ipaddress.ip_network(entry, strict=False) for entry in self.ip_allow_list
        )


def _new_account(api_key: str, index: int, config: UGiftMeSandboxConfig) -> Account:
    suffix = "" if index == 0 else f" #{index + 1}"
    account = Account(
        api_key=api_key,
        business_id=object_id(),
        user_id=object_id(),
        name=f"{config.business_name}{suffix}",
        email=f"finance+{index + 1}@sandbox-business.example",
    )
    for currency, amount in config.funding.items():
        account.wallet(currency).balance = round_money(Decimal(str(amount)), currency)
    return account


# ---------------------------------------------------------------------------
# Item validation.


@dataclass(frozen=True)
class AcceptedItem:
    item: Mapping[str, Any]
    product: CatalogProduct
    value: Decimal
    cost: Decimal


@dataclass(frozen=True)
class RejectedItem:
    product_code: str | None
    error: str  # short category, the 400 `error`
    reason: str  # the detail, the 400 `message` and the bulk `reason`

    def as_json(self) -> dict[str, Any]:
        return {"productCode": self.product_code, "reason": self.reason}


ItemCheck = AcceptedItem | RejectedItem


def check_item(item: Any, catalog: Mapping[str, CatalogProduct]) -> ItemCheck:
    """Validate one order item against the contract and the catalog."""
    if not isinstance(item, Mapping):
        return RejectedItem(None, "Validation failed", "each order must be a JSON object")
    code = item.get("productCode")
    code_or_none = code if isinstance(code, str) else None
    shape = _shape_problem(item)
    if shape:
        return RejectedItem(code_or_none, "Validation failed", shape)
    assert isinstance(code, str)
    product = catalog.get(code)
    if product is None:
        return RejectedItem(code, "Product not found", f"Product {code} not found")
    if not product.is_active:
        return RejectedItem(code, "Product inactive", f"Product {code} is not active")
    if item["merchant"].strip().casefold() != product.merchant.casefold():
        reason = f"Merchant {item['merchant']!r} does not match product {code} ({product.merchant})"
        return RejectedItem(code, "Merchant mismatch", reason)
    if item["currency"] != product.currency:
        reason = f"Currency {item['currency']} does not match product {code} ({product.currency})"
        return RejectedItem(code, "Currency mismatch", reason)
    value = Decimal(item["valuePurchased"])
    problem = product.value_problem(value)
    if problem:
        return RejectedItem(code, "Invalid value", problem)
    value = round_money(value, product.currency)
    cost = cost_after_discount(value, product.discount, product.currency)
    return AcceptedItem(item, product, value, cost)


def _shape_problem(item: Mapping[str, Any]) -> str | None:
    for name in ("productCode", "merchant", "currency"):
        value = item.get(name)
        if not isinstance(value, str) or not value.strip():
            return f"{name} is required and must be a non-empty string"
    value = item.get("valuePurchased")
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        return "valuePurchased is required and must be a number"
    for name in ("recipientEmail", "recipientName", "giftMessage"):
        if item.get(name) is not None and not isinstance(item[name], str):
            return f"{name} must be a string"
    email = item.get("recipientEmail")
    if email and not _EMAIL.match(email):
        return f"recipientEmail {email!r} is not a valid email address"
    return None


def _voucher_code() -> str:
    groups = ("".join(secrets.choice(_VOUCHER_ALPHABET) for _ in range(4)) for _ in range(4))
    return "-".join(groups)


# ---------------------------------------------------------------------------
# Webhooks.


@dataclass
class Delivery:
    id: str
    webhook_id: str
    api_key: str
    url: str
    secret: str
    event: str
    body: bytes
    attempts: list[dict[str, Any]] = field(default_factory=list)
    delivered: bool = False


def sign(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


class WebhookDispatcher:
    """At-least-once delivery with the contract's retry schedule, scaled for tests."""

    def __init__(
        self, scheduler: DelayedTaskScheduler, time_scale: float, timeout_seconds: float
    ) -> None:
        self.scheduler = scheduler
        self.time_scale = time_scale
        self.timeout_seconds = timeout_seconds
        self.deliveries: deque[Delivery] = deque(maxlen=MAX_KEPT_DELIVERIES)
        self.client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, loop: asyncio.AbstractEventLoop, client: httpx.AsyncClient) -> None:
        self._loop = loop
        self.client = client

    def emit(self, account: Account, event: str, data: Mapping[str, Any]) -> None:
        hooks = [h for h in account.webhooks.values() if h.is_active and event in h.events]
        if not hooks:
            return
        body = encode_json({"event": event, **data})
        for hook in hooks:
            delivery = Delivery(
                object_id(), hook.id, account.api_key, hook.url, hook.secret, event, body
            )
            self.deliveries.append(delivery)
            self._spawn(delivery)

    def _spawn(self, delivery: Delivery) -> None:
        if self._loop is None:
            return  # the app is not running (no lifespan): nothing can be sent
        task = self._loop.create_task(self._attempt(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _attempt(self, delivery: Delivery) -> None:
        status, error = await self.post(
            delivery.url, delivery.secret, delivery.event, delivery.body
        )
        delivery.attempts.append(
            {
                "at": iso_now(),
                "statusCode": status,
                "error": error,
                "attempt": len(delivery.attempts) + 1,
            }
        )
        if status is not None and 200 <= status < 300:
            delivery.delivered = True
            return
        retry_index = len(delivery.attempts) - 1
        if retry_index < len(WEBHOOK_RETRY_DELAYS):
            delay = WEBHOOK_RETRY_DELAYS[retry_index] * self.time_scale
            self.scheduler.call_later(delay, lambda: self._spawn(delivery))

    async def post(
        self, url: str, secret: str, event: str, body: bytes
    ) -> tuple[int | None, str | None]:
        """One signed POST; returns (status code, error message)."""
        if self.client is None:
            return None, "sandbox is not running"
        headers = {
            "Content-Type": "application/json",
            "X-Webhook-Event": event,
            "X-Webhook-Signature": sign(secret, body),
            "User-Agent": "UGiftMe-Webhooks/1.0 (sandbox)",
        }
        try:
            response = await self.client.post(
                url, content=body, headers=headers, timeout=self.timeout_seconds
            )
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"
        return response.status_code, None

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self._loop = None
        self.client = None

    def clear(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self.deliveries.clear()

    def deliveries_json(self, api_key: str | None) -> list[dict[str, Any]]:
        return [
            {
                "id": d.id,
                "webhookId": d.webhook_id,
                "apiKey": d.api_key,
                "url": d.url,
                "event": d.event,
                "delivered": d.delivered,
                "attempts": d.attempts,
                "payload": decode_json(d.body),
            }
            for d in self.deliveries
            if api_key is None or d.api_key == api_key
        ]


# ---------------------------------------------------------------------------
# The sandbox state and its business rules. Every method here is synchronous,
# so each state change is atomic on the event loop.


class UGiftMeSandbox:
    """All state of one sandbox server: accounts, catalog, limiter, faults, log."""

    def __init__(self, config: UGiftMeSandboxConfig) -> None:
        self.config = config
        self.scheduler = DelayedTaskScheduler()
        self.limiter = FixedWindowRateLimiter(config.rate_limit, config.rate_window_seconds)
        self.faults = FaultInjector(config.fault_settings())
        self.idempotency = IdempotencyStore(config.idempotency_ttl_seconds)
        self.request_log = RequestLog()
        self.webhooks = WebhookDispatcher(
            self.scheduler, config.webhook_time_scale, config.webhook_timeout_seconds
        )
        self.catalog: dict[str, CatalogProduct] = {}
        self.accounts: dict[str, Account] = {}
        self.async_mode = config.async_mode
        self.async_delay_seconds = config.async_delay_seconds
        self.bulk_limit = config.bulk_limit
        self.replay_errors = config.idempotency_replay_errors
        self._order_seq = 0
        self._generation = 0  # bumped by reset, so stale scheduled work does nothing
        self.reset()

    def reset(self) -> None:
        config = self.config
        self._generation += 1
        self.scheduler.clear()
        self.webhooks.clear()
        self.webhooks.time_scale = config.webhook_time_scale
        self.limiter.configure(config.rate_limit, config.rate_window_seconds)
        self.faults.reset(config.fault_settings())
        self.idempotency.clear()
        self.idempotency.ttl_seconds = config.idempotency_ttl_seconds
        self.request_log.clear()
        self.catalog = load_catalog()
        self.accounts = {
            key: _new_account(key, index, config) for index, key in enumerate(config.api_keys)
        }
        self.async_mode = config.async_mode
        self.async_delay_seconds = config.async_delay_seconds
        self.bulk_limit = config.bulk_limit
        self.replay_errors = config.idempotency_replay_errors

    @property
    def api_keys(self) -> list[str]:
        return list(self.accounts)

    # -- orders --------------------------------------------------------------

    def _issue_order(
        self,
        account: Account,
        accepted: AcceptedItem,
        idempotency_key: str | None,
        request_id: str | None,
    ) -> StoredOrder:
        """Create one order and charge its cost: one `purchase` transaction."""
        product, item = accepted.product, accepted.item
        now = datetime.now(UTC)
        stamp = iso_timestamp(now)
        order_id = object_id()
        email = item.get("recipientEmail") or None
        body = {
            "_id": order_id,
            "productCode": product.code,
            "merchant": {
                "name": product.merchant,
                "distributionMethod": "email" if email else "link",
                "voucherCode": _voucher_code(),
                "redemptionUrl": f"https://redeem.ugift.me/v/{secrets.token_urlsafe(18)}",
            },
            "currency": product.currency,
            "valuePurchased": accepted.value,
            "status": "active",
            "isPaid": True,
            "isActive": True,
            "usageLimit": 1,
            "expiryDate": iso_timestamp(now + timedelta(days=365)),
            "giftOrder": {
                "message": item.get("giftMessage"),
                "recipientEmail": email,
                "recipientName": item.get("recipientName"),
            },
            "transactionId": f"txn_{ulid()}",
            "createdAt": stamp,
            "updatedAt": stamp,
            "imageUrl": product.image_url,
        }
        self._order_seq += 1
        order = StoredOrder(
            self._order_seq, body, accepted.cost, account.api_key, idempotency_key, request_id
        )
        account.orders.append(order)
        account.orders_by_id[order_id] = order
        account.orders_changed()
        self._record_purchase(account, order, product, stamp)
        return order

    def _record_purchase(
        self, account: Account, order: StoredOrder, product: CatalogProduct, stamp: str
    ) -> None:
        wallet = account.wallet(product.currency)
        wallet.balance -= order.cost
        wallet.updated_at = stamp
        description = f"{product.name} {order.body['valuePurchased']} {product.currency}"
        self._append_transaction(
            account, wallet, "purchase", order.cost, order.body["_id"], description, stamp
        )

    def _append_transaction(
        self,
        account: Account,
        wallet: Wallet,
        kind: str,
        value: Decimal,
        order_id: str | None,
        description: str,
        stamp: str,
    ) -> dict[str, Any]:
        transaction = {
            "_id": object_id(),
            "transactionType": kind,
            "transactionValue": value,
            "currency": wallet.currency,
            "orderID": order_id,
            "timestamp": stamp,
            "details": {"type": kind, "currency": wallet.currency, "description": description},
        }
        wallet.transactions.append(transaction)
        account.transactions.append(transaction)
        return transaction

    @staticmethod
    def _ensure_funds(account: Account, currency: str, required: Decimal) -> None:
        """402 unless the available balance (balance minus holds) covers `required`."""
        wallet = account.wallets.get(currency)
        available = wallet.available if wallet else round_money(Decimal(0), currency)
        if available < required:
            raise ApiError(
                402,
                "Insufficient funds",
                message=f"Available balance {available} {currency} is less than {required}",
                required=required,
                available=available,
                currency=currency,
            )

    def place_single_sync(self, account: Account, payload: Any, key: str | None) -> tuple[int, Any]:
        checked = check_item(payload, self.catalog)
        if isinstance(checked, RejectedItem):
            raise ApiError(400, checked.error, message=checked.reason)
        self._ensure_funds(account, checked.product.currency, checked.cost)
        order = self._issue_order(account, checked, key, None)
        wallet = account.wallet(checked.product.currency)
        self._emit_wallet(account, wallet, "purchase", account.transactions[-1])
        return 201, order.body

    def place_bulk_sync(self, account: Account, payload: Any, key: str | None) -> tuple[int, Any]:
        items, currency = self._bulk_shape(payload)
        accepted, rejected = self._screen(items, with_faults=True)
        self._ensure_funds(account, currency, sum((a.cost for a in accepted), Decimal(0)))
        orders = [self._issue_order(account, a, key, None) for a in accepted]
        if orders:
            self._emit_wallet(account, account.wallet(currency), "purchase", None)
        return 201, self._bulk_result(account, orders, rejected, currency)

    def _bulk_shape(self, payload: Any) -> tuple[list[Any], str]:
        """Request-level checks: an `orders` array within the limit, one currency."""
        orders = payload.get("orders") if isinstance(payload, Mapping) else None
        if not isinstance(orders, list) or not orders:
            raise ApiError(400, "Validation failed", message="orders must be a non-empty array")
        if len(orders) > self.bulk_limit:
            raise ApiError(
                400,
                "Too many orders",
                message=f"A bulk request may hold at most {self.bulk_limit} orders; got {len(orders)}",
            )
        currencies = {
            o["currency"]
            for o in orders
            if isinstance(o, Mapping) and isinstance(o.get("currency"), str)
        }
        if len(currencies) > 1:
            raise ApiError(
                400,
                "Mixed currencies",
                message=f"All orders in a bulk request must share one currency; got {', '.join(sorted(currencies))}",
            )
        if not currencies:
            raise ApiError(400, "Validation failed", message="currency is required")
        return orders, currencies.pop()

    def _screen(
        self, items: Iterable[Any], *, with_faults: bool
    ) -> tuple[list[AcceptedItem], list[RejectedItem]]:
        accepted: list[AcceptedItem] = []
        rejected: list[RejectedItem] = []
        for item in items:
            checked = check_item(item, self.catalog)
            if isinstance(checked, RejectedItem):
                rejected.append(checked)
            elif with_faults and self.faults.roll("reject_item"):
                rejected.append(RejectedItem(checked.product.code, "Out of stock", "Out of stock"))
            else:
                accepted.append(checked)
        return accepted, rejected

    @staticmethod
    def _bulk_result(
        account: Account,
        orders: list[StoredOrder],
        rejected: list[RejectedItem],
        currency: str,
    ) -> dict[str, Any]:
        total = sum((o.body["valuePurchased"] for o in orders), Decimal(0))
        wallet = account.wallets.get(currency)
        return {
            "success": True,
            "orders": [o.body for o in orders],
            "summary": {
                "totalOrders": len(orders),
                "totalValue": round_money(total, currency),
                "currency": currency,
                "remainingBalance": wallet.balance if wallet else round_money(Decimal(0), currency),
            },
            "rejectedOrders": [r.as_json() for r in rejected],
        }

    # -- async order requests --------------------------------------------------

    def accept_async(
        self, account: Account, kind: RequestType, payload: Any, key: str | None
    ) -> tuple[int, Any]:
        """Queue an order request: shape checks and the hold happen now, the rest later."""
        currency: str | None
        if kind == "bulk":
            items, currency = self._bulk_shape(payload)
        else:
            if not isinstance(payload, Mapping):
                raise ApiError(400, "Validation failed", message="the order must be a JSON object")
            items = [payload]
            given = payload.get("currency")
            currency = given if isinstance(given, str) else None
        accepted, _ = self._screen(items, with_faults=False)
        hold = sum((a.cost for a in accepted), Decimal(0))
        if accepted:  # every accepted item has the product's (a real) currency
            currency = accepted[0].product.currency
            self._ensure_funds(account, currency, hold)
        now = iso_now()
        request = OrderRequest(
            object_id(), kind, payload, currency, hold, account.api_key, key, len(items), now, now
        )
        account.requests[request.id] = request
        wallet = account.wallet(currency) if accepted and currency else None
        if wallet is not None:
            wallet.place_hold(request.id, hold)
        self._emit_request(account, request, "order.queued")
        if wallet is not None:
            self._emit_wallet(account, wallet, "hold", None)
        self._schedule(account, request.id, self._start_processing)
        return 202, {"orderRequestId": request.id, "status": "queued"}

    def _schedule(
        self, account: Account, request_id: str, step: Callable[[Account, str], None]
    ) -> None:
        generation = self._generation

        def run() -> None:
            if generation == self._generation:
                step(account, request_id)

        self.scheduler.call_later(self.async_delay_seconds, run)

    def _start_processing(self, account: Account, request_id: str) -> None:
        request = account.requests[request_id]
        request.status = "processing"
        request.updated_at = iso_now()
        self._emit_request(account, request, "order.processing")
        self._schedule(account, request_id, self._finish)

    def _finish(self, account: Account, request_id: str) -> None:
        request = account.requests[request_id]
        wallet = account.wallets.get(request.currency or "")
        if wallet is not None:
            wallet.release_hold(request.id)
        if self.faults.roll("async_fail"):
            self._fail(
                account,
                request,
                wallet,
                "Upstream supplier error: the order could not be fulfilled",
            )
            return
        try:
            request.result = self._fulfil(account, request)
        except ApiError as exc:
            self._fail(account, request, wallet, exc.body.get("message") or exc.body["error"])
            return
        request.status = "succeeded"
        request.updated_at = iso_now()
        self._emit_request(account, request, "order.succeeded")
        if wallet is not None:
            self._emit_wallet(account, wallet, "purchase", None)

    def _fulfil(self, account: Account, request: OrderRequest) -> Any:
        if request.type == "single":
            checked = check_item(request.payload, self.catalog)
            if isinstance(checked, RejectedItem):
                raise ApiError(400, checked.error, message=checked.reason)
            self._require_available(account, checked.product.currency, checked.cost)
            return self._issue_order(account, checked, request.idempotency_key, request.id).body
        assert request.currency is not None
        accepted, rejected = self._screen(request.payload["orders"], with_faults=True)
        self._require_available(
            account, request.currency, sum((a.cost for a in accepted), Decimal(0))
        )
        orders = [
            self._issue_order(account, a, request.idempotency_key, request.id) for a in accepted
        ]
        return self._bulk_result(account, orders, rejected, request.currency)

    def _require_available(self, account: Account, currency: str, required: Decimal) -> None:
        """The worker's funding check, worded as the contract's `error` example."""
        try:
            self._ensure_funds(account, currency, required)
        except ApiError as exc:
            message = (
                f"Insufficient available balance: required {required} {currency}, "
                f"available {exc.body['available']} {currency}"
            )
            raise ApiError(402, "Insufficient funds", message=message) from None

    def _fail(
        self, account: Account, request: OrderRequest, wallet: Wallet | None, error: str
    ) -> None:
        request.status = "failed"
        request.error = error
        request.updated_at = iso_now()
        self._emit_request(account, request, "order.failed")
        if wallet is not None and request.hold > 0:
            self._emit_wallet(account, wallet, "hold_release", None)

    # -- events ----------------------------------------------------------------

    def _emit_request(self, account: Account, request: OrderRequest, event: str) -> None:
        data: dict[str, Any] = {"orderRequestId": request.id, "status": request.status}
        if event != "order.failed":
            data["type"] = request.type
        if event == "order.queued":
            data["orderCount"] = request.order_count
        if event == "order.succeeded":
            data["result"] = request.result
        if event == "order.failed":
            data["error"] = request.error
        data["timestamp"] = iso_now()
        self.webhooks.emit(account, event, data)

    def _emit_wallet(
        self, account: Account, wallet: Wallet, source: str, transaction: Mapping[str, Any] | None
    ) -> None:
        data: dict[str, Any] = {
            "userId": account.user_id,
            "currency": wallet.currency,
            "balance": wallet.balance,
            "availableBalance": wallet.available,
            "source": source,
        }
        if transaction is not None:
            data["transaction"] = dict(transaction)
        data["timestamp"] = iso_now()
        self.webhooks.emit(account, "wallet.updated", data)

    def emit_product_updated(self, product: CatalogProduct, changes: list[str]) -> None:
        data = {
            "productCode": product.code,
            "changes": changes,
            "product": product.as_json(),
            "timestamp": iso_now(),
        }
        for account in self.accounts.values():
            self.webhooks.emit(account, "product.updated", data)

    # -- wallets (controls) ------------------------------------------------------

    def fund(self, account: Account, currency: str, amount: Decimal) -> Wallet:
        wallet = account.wallet(currency)
        wallet.balance += amount
        stamp = iso_now()
        wallet.updated_at = stamp
        transaction = self._append_transaction(
            account, wallet, "funding", amount, None, "Sandbox funding", stamp
        )
        self._emit_wallet(account, wallet, "funding", transaction)
        return wallet

    def set_balance(self, account: Account, currency: str, balance: Decimal) -> Wallet:
        wallet = account.wallet(currency)
        wallet.balance = balance
        wallet.updated_at = iso_now()
        self._emit_wallet(account, wallet, "adjustment", None)
        return wallet


# ---------------------------------------------------------------------------
# HTTP helpers.


def _sandbox(request: Request) -> UGiftMeSandbox:
    sandbox: UGiftMeSandbox = request.app.state.sandbox
    return sandbox


def _account(request: Request) -> Account:
    account: Account = request.scope["ugiftme.account"]
    return account


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return decode_json(raw)
    except JsonDecodeError as exc:
        raise ApiError(400, "Invalid JSON", message=str(exc)) from None


def _int_param(request: Request, name: str, default: int, low: int, high: int | None = None) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ApiError(400, "Invalid query", message=f"{name} must be an integer {bound}")
    return value


def _page_params(request: Request) -> tuple[int, int]:
    page = _int_param(request, "page", 1, 1)
    limit = _int_param(request, "limit", DEFAULT_PAGE_LIMIT, 1, MAX_PAGE_LIMIT)
    return page, limit


def _paginate(items: Sequence[Any], page: int, limit: int) -> tuple[Sequence[Any], int]:
    total_pages = math.ceil(len(items) / limit)
    start = (page - 1) * limit
    return items[start : start + limit], total_pages


def _bool_param(request: Request, name: str) -> bool | None:
    try:
        return parse_bool(request.query_params.get(name))
    except ValueError:
        raise ApiError(400, "Invalid query", message=f"{name} must be true or false") from None


def _date_param(request: Request, name: str, *, end_of_day: bool) -> datetime | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, "Invalid query", message=f"{name} must be an ISO-8601 date") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if end_of_day and len(raw) == 10:  # a bare date includes the whole day
        moment += timedelta(days=1) - timedelta(milliseconds=1)
    return moment


# ---------------------------------------------------------------------------
# API endpoints.


async def auth(request: Request) -> Response:
    account = _account(request)
    return json_response(
        {
            "businessId": account.business_id,
            "name": account.name,
            "verificationStatus": "verified" if account.profile_complete else "pending",
            "email": account.email,
            "plan": "business",
        }
    )


def _products_page(products: list[CatalogProduct], request: Request) -> Response:
    page, limit = _page_params(request)
    items, total_pages = _paginate(products, page, limit)
    return json_response(
        {
            "products": [p.as_json() for p in items],
            "pagination": {
                "total": len(products),
                "totalPages": total_pages,
                "currentPage": page,
                "limit": limit,
            },
        }
    )


async def list_products(request: Request) -> Response:
    return _products_page(list(_sandbox(request).catalog.values()), request)


async def search_products(request: Request) -> Response:
    query = request.query_params
    text = (query.get("q") or "").strip().casefold()
    exact = {
        "merchant": (query.get("merchant") or "").strip().casefold(),
        "category": (query.get("category") or "").strip().casefold(),
        "currency": (query.get("currency") or "").strip().casefold(),
    }
    country = (query.get("country") or "").strip().upper()

    def matches(p: CatalogProduct) -> bool:
        haystack = f"{p.code} {p.name} {p.merchant} {p.category}".casefold()
        fields = {"merchant": p.merchant, "category": p.category, "currency": p.currency}
        return (
            (not text or text in haystack)
            and all(not want or fields[name].casefold() == want for name, want in exact.items())
            and (not country or country in p.countries)
        )

    return _products_page([p for p in _sandbox(request).catalog.values() if matches(p)], request)


async def product_filters(request: Request) -> Response:
    products = _sandbox(request).catalog.values()
    return json_response(
        {
            "categories": sorted({p.category for p in products}),
            "merchants": sorted({p.merchant for p in products}),
            "currencies": sorted({p.currency for p in products}),
        }
    )


async def create_single_order(request: Request) -> Response:
    return await _create_orders(request, "single")


async def create_bulk_order(request: Request) -> Response:
    return await _create_orders(request, "bulk")


async def _create_orders(request: Request, kind: RequestType) -> Response:
    """Order creation with idempotency, deferred latency and the drop fault."""
    sandbox, account = _sandbox(request), _account(request)
    payload = await _json_body(request)
    key = _idempotency_key(request)

    async def handle() -> StoredResponse:
        # held inside the idempotency window on purpose
        await sleep_deferred_latency(request.scope, "ugiftme.deferred_latency")
        return _handle_order_payload(sandbox, account, kind, payload, key)

    stored, replayed = await run_idempotently(
        sandbox.idempotency,
        account.api_key,
        key,
        lambda: fingerprint("POST", request.url.path, payload),
        handle,
        keep=lambda status: _should_store(sandbox, status),
        mismatch=ApiError(400, "Idempotency key reused with a different payload"),
        in_flight=ApiError(409, "Request with this Idempotency-Key is in progress"),
    )
    if not replayed and stored.status_code < 300 and sandbox.faults.roll("drop"):
        request.scope["ugiftme.fault"] = "drop"
        return DroppedResponse(stored.body, stored.status_code, stored.headers)
    return stored_as_response(stored, replayed=replayed)


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not key or len(key) > MAX_IDEMPOTENCY_KEY:
        raise ApiError(
            400,
            "Invalid Idempotency-Key",
            message=f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters",
        )
    return key


def _handle_order_payload(
    sandbox: UGiftMeSandbox, account: Account, kind: RequestType, payload: Any, key: str | None
) -> StoredResponse:
    """The atomic part: no await between reading and changing state."""
    is_async = sandbox.async_mode
    headers = {"content-type": "application/json", ASYNC_HEADER: "true" if is_async else "false"}
    try:
        if is_async:
            status, body = sandbox.accept_async(account, kind, payload, key)
        elif kind == "single":
            status, body = sandbox.place_single_sync(account, payload, key)
        else:
            status, body = sandbox.place_bulk_sync(account, payload, key)
    except ApiError as exc:
        status, body = exc.status_code, exc.body
    return StoredResponse(status, encode_json(body), headers)


def _should_store(sandbox: UGiftMeSandbox, status_code: int) -> bool:
    if 200 <= status_code < 300:
        return True
    return sandbox.replay_errors and status_code in {400, 402}


async def get_order_request(request: Request) -> Response:
    order_request = _account(request).requests.get(request.path_params["request_id"])
    if order_request is None:
        raise ApiError(404, "Order request not found")
    return json_response(order_request.as_json())


def _sort_params(request: Request) -> tuple[str, bool]:
    """(sortBy, descending), or 400."""
    sort_by = request.query_params.get("sortBy") or "createdAt"
    direction = (request.query_params.get("order") or "desc").lower()
    if sort_by not in ORDER_SORT_FIELDS:
        raise ApiError(
            400, "Invalid query", message=f"sortBy must be one of {', '.join(ORDER_SORT_FIELDS)}"
        )
    if direction not in {"asc", "desc"}:
        raise ApiError(400, "Invalid query", message="order must be asc or desc")
    return sort_by, direction == "desc"


def _directed(ascending: list[StoredOrder], descending: bool) -> Sequence[StoredOrder]:
    return ReversedView(ascending) if descending else ascending


async def list_orders(request: Request) -> Response:
    page, limit = _page_params(request)
    sort_by, descending = _sort_params(request)
    account = _account(request)
    orders = _directed(account.listings.ascending(account, sort_by), descending)
    items, total_pages = _paginate(orders, page, limit)
    return json_response(
        {
            "total": len(orders),
            "page": page,
            "totalPages": total_pages,
            "orders": [o.listing() for o in items],
        }
    )


async def search_orders(request: Request) -> Response:
    page, limit = _page_params(request)
    merchant = (request.query_params.get("merchant") or "").strip().casefold()
    status = (request.query_params.get("status") or "").strip()
    is_active = _bool_param(request, "isActive")
    is_paid = _bool_param(request, "isPaid")
    start = _date_param(request, "startDate", end_of_day=False)
    end = _date_param(request, "endDate", end_of_day=True)
    sort_by, descending = _sort_params(request)
    account = _account(request)
    key: OrderSearchKey = (sort_by, merchant, status, is_active, is_paid, start, end)
    found = _directed(
        account.listings.search(account, key, lambda: _search_ascending(account, key)),
        descending,
    )
    items, total_pages = _paginate(found, page, limit)
    return json_response(
        {
            "success": True,
            "orders": [o.listing() for o in items],
            "pagination": {
                "total": len(found),
                "totalPages": total_pages,
                "currentPage": page,
                "limit": limit,
            },
        }
    )


def _search_ascending(account: Account, key: OrderSearchKey) -> list[StoredOrder]:
    """The orders a search matches, by ``(body[sortBy], seq)`` ascending: one pass
    over the account's sorted list (the result is kept for the search's next pages)."""
    sort_by, merchant, status, is_active, is_paid, start, end = key
    ordered = account.listings.ascending(account, sort_by)
    filters = (merchant, status, is_active, is_paid, start, end)
    if all(f is None or f == "" for f in filters):
        return ordered

    def matches(order: StoredOrder) -> bool:
        body = order.body
        return (
            (not merchant or merchant in body["merchant"]["name"].casefold())
            and (not status or body["status"] == status)
            and (is_active is None or body["isActive"] is is_active)
            and (is_paid is None or body["isPaid"] is is_paid)
            and (start is None or order.created >= start)
            and (end is None or order.created <= end)
        )

    return [o for o in ordered if matches(o)]


async def get_order(request: Request) -> Response:
    order = _account(request).orders_by_id.get(request.path_params["order_id"])
    if order is None:
        raise ApiError(404, "Order not found")
    return json_response(order.body)


async def get_wallets(request: Request) -> Response:
    wallets = _account(request).wallets.values()
    return json_response([w.as_json() for w in sorted(wallets, key=lambda w: w.currency)])


async def wallet_transactions(request: Request) -> Response:
    page, limit = _page_params(request)
    newest_first = ReversedView(_account(request).transactions)
    items, total_pages = _paginate(newest_first, page, limit)
    return json_response(
        {
            "transactions": items,
            "pagination": {
                "currentPage": page,
                "totalPages": total_pages,
                "totalTransactions": len(newest_first),
                "limit": limit,
            },
        }
    )


# -- webhooks ----------------------------------------------------------------


def _checked_url(raw: Any) -> str:
    if not isinstance(raw, str) or not re.match(r"^https?://[^\s/]+", raw):
        raise ApiError(400, "Validation failed", message="url must be an http(s) URL")
    return raw


def _checked_events(raw: Any) -> list[str]:
    if not isinstance(raw, list) or not raw or not all(isinstance(e, str) for e in raw):
        raise ApiError(
            400,
            "Validation failed",
            message="events must be a non-empty array",
            validEvents=list(VALID_EVENTS),
        )
    unknown = [e for e in raw if e not in VALID_EVENTS]
    if unknown:
        raise ApiError(
            400,
            "Invalid events",
            message=f"Unknown events: {', '.join(unknown)}",
            validEvents=list(VALID_EVENTS),
        )
    return list(dict.fromkeys(raw))


def _checked_description(raw: Any) -> str | None:
    if raw is not None and not isinstance(raw, str):
        raise ApiError(400, "Validation failed", message="description must be a string")
    return raw


async def create_webhook(request: Request) -> Response:
    body = await _json_body(request)
    if not isinstance(body, Mapping):
        raise ApiError(400, "Validation failed", message="body must be a JSON object")
    now = iso_now()
    hook = Webhook(
        id=object_id(),
        url=_checked_url(body.get("url")),
        events=_checked_events(body.get("events")),
        description=_checked_description(body.get("description")),
        secret=f"whsec_{secrets.token_hex(24)}",
        created_at=now,
        updated_at=now,
    )
    _account(request).webhooks[hook.id] = hook
    return json_response({**hook.as_json(), "secret": hook.secret}, status_code=201)


async def list_webhooks(request: Request) -> Response:
    return json_response({"webhooks": [h.as_json() for h in _account(request).webhooks.values()]})


def _webhook(request: Request, webhook_id: Any) -> Webhook:
    hook = _account(request).webhooks.get(webhook_id) if isinstance(webhook_id, str) else None
    if hook is None:
        raise ApiError(404, "Webhook not found")
    return hook


async def update_webhook(request: Request) -> Response:
    hook = _webhook(request, request.path_params["webhook_id"])
    body = await _json_body(request)
    fields = ("url", "events", "description", "isActive")
    if not isinstance(body, Mapping) or not any(name in body for name in fields):
        raise ApiError(
            400, "Validation failed", message=f"provide at least one of {', '.join(fields)}"
        )
    if "isActive" in body and not isinstance(body["isActive"], bool):
        raise ApiError(400, "Validation failed", message="isActive must be a boolean")
    changes: dict[str, Any] = {}
    if "url" in body:
        changes["url"] = _checked_url(body["url"])
    if "events" in body:
        changes["events"] = _checked_events(body["events"])
    if "description" in body:
        changes["description"] = _checked_description(body["description"])
    if "isActive" in body:
        changes["is_active"] = body["isActive"]
    for name, value in changes.items():  # validated above, applied together
        setattr(hook, name, value)
    hook.updated_at = iso_now()
    return json_response(hook.as_json())


async def delete_webhook(request: Request) -> Response:
    hook = _webhook(request, request.path_params["webhook_id"])
    del _account(request).webhooks[hook.id]
    return json_response({"success": True, "id": hook.id})


def _sample_payload() -> dict[str, Any]:
    return {
        "event": "order.succeeded",
        "orderRequestId": "65f1c0ffee0000000000beef",
        "status": "succeeded",
        "type": "single",
        "result": {
            "_id": "65f1c0ffee0000000000cafe",
            "productCode": "AMAZON_UK_STD",
            "currency": "GBP",
            "valuePurchased": Decimal("25.00"),
            "status": "active",
            "transactionId": "txn_01HZX5V3J0Q8D7K2M4N6P8R0TA",
        },
        "timestamp": iso_now(),
        "test": True,
    }


async def test_webhook(request: Request) -> Response:
    body = await _json_body(request)
    webhook_id = body.get("webhookId") if isinstance(body, Mapping) else None
    if not isinstance(webhook_id, str):
        raise ApiError(400, "Validation failed", message="webhookId is required")
    hook = _webhook(request, webhook_id)
    payload = _sample_payload()
    status, error = await _sandbox(request).webhooks.post(
        hook.url, hook.secret, str(payload["event"]), encode_json(payload)
    )
    result: dict[str, Any] = {"ok": status is not None and 200 <= status < 300, "payload": payload}
    if status is not None:
        result["statusCode"] = status
    if error is not None:
        result["errorMessage"] = error
    elif status is not None and not result["ok"]:
        result["errorMessage"] = f"endpoint answered {status}"
    return json_response(result)


async def webhook_test_sample(request: Request) -> Response:
    payload = _sample_payload()
    secret = "whsec_sample"
    return json_response(
        {
            "event": payload["event"],
            "payload": payload,
            "headers": {
                "X-Webhook-Event": payload["event"],
                "X-Webhook-Signature": sign(secret, encode_json(payload)),
            },
            "signedWith": secret,
            "validEvents": list(VALID_EVENTS),
        }
    )


def api_routes() -> list[BaseRoute]:
    return [
        Route("/auth", auth, methods=["GET"]),
        Route("/products", list_products, methods=["GET"]),
        Route("/products/search", search_products, methods=["GET"]),
        Route("/products/filters", product_filters, methods=["GET"]),
        Route("/orders", create_single_order, methods=["POST"]),
        Route("/orders", list_orders, methods=["GET"]),
        Route("/orders/bulk", create_bulk_order, methods=["POST"]),
        Route("/orders/search", search_orders, methods=["GET"]),
        Route("/orders/order-requests/{request_id}", get_order_request, methods=["GET"]),
        Route("/orders/{order_id}", get_order, methods=["GET"]),
        Route("/wallet", get_wallets, methods=["GET"]),
        Route("/wallet/transactions", wallet_transactions, methods=["GET"]),
        Route("/webhooks", create_webhook, methods=["POST"]),
        Route("/webhooks", list_webhooks, methods=["GET"]),
        Route("/webhooks/test", test_webhook, methods=["POST"]),
        Route("/webhooks/test-sample", webhook_test_sample, methods=["GET"]),
        Route("/webhooks/{webhook_id}", update_webhook, methods=["PATCH"]),
        Route("/webhooks/{webhook_id}", delete_webhook, methods=["DELETE"]),
    ]


ORDER_CREATION_PATHS = {f"{API_ROOT}/orders", f"{API_ROOT}/orders/bulk"}


# ---------------------------------------------------------------------------
# The gate in front of the API: auth, allow list, rate limit, faults, headers, log.


class ApiGate:
    """Pure ASGI middleware, so the drop fault can leave a response unfinished."""

    def __init__(self, app: ASGIApp, sandbox: UGiftMeSandbox) -> None:
        self.app = app
        self.sandbox = sandbox

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(API_ROOT):
            await self.app(scope, receive, send)
            return
        sandbox = self.sandbox
        headers = Headers(scope=scope)
        ip = client_ip(scope)
        key = headers.get("x-api-key")
        account = sandbox.accounts.get(key) if key else None
        bucket = account.api_key if account else f"ip:{ip}"
        decision = sandbox.limiter.hit(bucket)
        early = self._refusal(decision, key, account, ip, bucket)
        if early is not None:
            await self._send_early(scope, receive, send, bucket, decision, *early)
            return
        assert account is not None
        scope["ugiftme.account"] = account
        await latency_fault(sandbox.faults, scope, ORDER_CREATION_PATHS, "ugiftme.deferred_latency")
        await self._forward(scope, receive, send, bucket, decision)

    def _refusal(
        self,
        decision: RateDecision,
        key: str | None,
        account: Account | None,
        ip: str,
        bucket: str,
    ) -> tuple[int, dict[str, Any], int | None, str | None] | None:
        """(status, body, retry-after, fault) when the request stops here."""
        if not decision.allowed:
            return 429, {"error": "Too many requests"}, decision.reset_seconds, None
        if not key:
            return 401, {"error": "Missing API key"}, None, None
        if account is None:
            return (
                401,
                {"error": "Invalid API key", "reason": "The API key is not recognised"},
                None,
                None,
            )
        if not account.ip_allowed(ip):
            reason = f"{ip} is not in the IP allow list for this API key"
            return 403, {"error": "Forbidden", "reason": reason}, None, None
        if not account.profile_complete:
            reason = "Complete the business profile before using the API"
            return 403, {"error": "Business profile incomplete", "reason": reason}, None, None
        if self.sandbox.faults.roll("500"):
            return 500, {"error": "Internal Server Error"}, None, "500"
        burst_wait = self.sandbox.faults.burst_retry_after(bucket)
        if burst_wait is not None:
            return 429, {"error": "Too many requests"}, burst_wait, "429"
        return None

    async def _send_early(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        bucket: str,
        decision: RateDecision,
        status: int,
        body: dict[str, Any],
        retry_after: int | None,
        fault: str | None,
    ) -> None:
        headers = decision.headers()
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        self.sandbox.request_log.record(
            bucket, scope["method"], scope["path"], status, retry_after, fault
        )
        await json_response(body, status, headers)(scope, receive, send)

    async def _forward(
        self, scope: Scope, receive: Receive, send: Send, bucket: str, decision: RateDecision
    ) -> None:
        def record(status: int) -> None:
            self.sandbox.request_log.record(
                bucket, scope["method"], scope["path"], status, None, scope.get("ugiftme.fault")
            )

        await forward(
            self.app,
            scope,
            receive,
            send,
            extra_headers=[(k.lower().encode(), v.encode()) for k, v in decision.headers().items()],
            on_start=record,
            error_body={"error": "Internal Server Error"},
            log=log,
        )


# ---------------------------------------------------------------------------
# Sandbox controls.


def _control_account(request: Request) -> Account:
    sandbox = _sandbox(request)
    key = request.headers.get("x-api-key")
    if key:
        account = sandbox.accounts.get(key)
        if account is None:
            raise ApiError(404, "Unknown API key")
        return account
    if len(sandbox.accounts) == 1:
        return next(iter(sandbox.accounts.values()))
    raise ApiError(
        400, "X-API-Key required", message=f"{len(sandbox.accounts)} keys are configured"
    )


def _filtered_accounts(request: Request) -> list[Account]:
    if request.headers.get("x-api-key"):
        return [_control_account(request)]
    return list(_sandbox(request).accounts.values())


def _amount(raw: Any, currency: str, name: str) -> Decimal:
    try:
        amount = money_input(raw)
    except (TypeError, ValueError):
        raise ApiError(
            400, "Validation failed", message=f"{name} must be a number or decimal string"
        ) from None
    if not fits_currency(amount, currency):
        raise ApiError(
            400, "Validation failed", message=f"{name} has too many decimals for {currency}"
        )
    return round_money(amount, currency)


def _currency(request: Request) -> str:
    currency = request.path_params["currency"].upper()
    if not is_currency_code(currency):
        raise ApiError(400, "Validation failed", message="currency must be a 3-letter ISO code")
    return currency


def _wallet_control_json(wallet: Wallet) -> dict[str, Any]:
    return {
        "currency": wallet.currency,
        "balance": wallet.balance,
        "held": wallet.held,
        "availableBalance": wallet.available,
        "holds": dict(wallet.holds),
    }


def _config_json(sandbox: UGiftMeSandbox) -> dict[str, Any]:
    return {
        "provider": "ugiftme",
        "apiRoot": API_ROOT,
        "apiKeys": sandbox.api_keys,
        "asyncMode": sandbox.async_mode,
        "asyncDelaySeconds": Decimal(str(sandbox.async_delay_seconds)),
        "bulkLimit": sandbox.bulk_limit,
        "idempotencyTtlSeconds": Decimal(str(sandbox.idempotency.ttl_seconds)),
        "idempotencyReplayErrors": sandbox.replay_errors,
        "webhookTimeScale": Decimal(str(sandbox.webhooks.time_scale)),
        "rateLimit": rate_limit_json(sandbox.limiter),
        "faults": faults_json(sandbox.faults),
    }


@contextlib.contextmanager
def _refused_setting() -> Iterator[None]:
    """A control setting's ValueError as this contract's 400."""
    try:
        yield
    except ValueError as exc:
        raise ApiError(400, "Validation failed", message=str(exc)) from None


def _number(
    body: Mapping[str, Any], name: str, *, low: float = 0.0, high: float | None = None
) -> float:
    with _refused_setting():
        return setting_number(body, name, low=low, high=high)


async def _control_object(request: Request) -> Mapping[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    body = await _json_body(request)
    if not isinstance(body, Mapping):
        raise ApiError(400, "Validation failed", message="body must be a JSON object")
    return body


async def control_health(request: Request) -> Response:
    return json_response({"ok": True, "provider": "ugiftme"})


async def control_get_config(request: Request) -> Response:
    return json_response(_config_json(_sandbox(request)))


async def control_patch_config(request: Request) -> Response:
    sandbox, body = _sandbox(request), await _control_object(request)
    if "asyncMode" in body:
        if not isinstance(body["asyncMode"], bool):
            raise ApiError(400, "Validation failed", message="asyncMode must be a boolean")
        sandbox.async_mode = body["asyncMode"]
    if "asyncDelaySeconds" in body:
        sandbox.async_delay_seconds = _number(body, "asyncDelaySeconds")
    if "bulkLimit" in body:
        sandbox.bulk_limit = int(_number(body, "bulkLimit", low=1))
    if "idempotencyTtlSeconds" in body:
        sandbox.idempotency.ttl_seconds = _number(body, "idempotencyTtlSeconds")
    if "webhookTimeScale" in body:
        sandbox.webhooks.time_scale = _number(body, "webhookTimeScale")
    if "idempotencyReplayErrors" in body:
        sandbox.replay_errors = bool(body["idempotencyReplayErrors"])
    return json_response(_config_json(sandbox))


async def control_mode(request: Request) -> Response:
    sandbox, body = _sandbox(request), await _control_object(request)
    mode = body.get("mode")
    if mode not in {"sync", "async"}:
        raise ApiError(400, "Validation failed", message='mode must be "sync" or "async"')
    sandbox.async_mode = mode == "async"
    if "asyncDelaySeconds" in body:
        sandbox.async_delay_seconds = _number(body, "asyncDelaySeconds")
    return json_response(_config_json(sandbox))


async def control_patch_faults(request: Request) -> Response:
    sandbox, body = _sandbox(request), await _control_object(request)
    with _refused_setting():
        update_faults(sandbox.faults, body, FAULT_KINDS)
    return json_response(faults_json(sandbox.faults))


async def control_rate_limit(request: Request) -> Response:
    sandbox, body = _sandbox(request), await _control_object(request)
    with _refused_setting():
        update_rate_limit(sandbox.limiter, body)
    return json_response(rate_limit_json(sandbox.limiter))


async def control_wallets(request: Request) -> Response:
    account = _control_account(request)
    wallets = sorted(account.wallets.values(), key=lambda w: w.currency)
    return json_response(
        {"apiKey": account.api_key, "wallets": [_wallet_control_json(w) for w in wallets]}
    )


async def control_fund(request: Request) -> Response:
    account, currency = _control_account(request), _currency(request)
    body = await _control_object(request)
    amount = _amount(body.get("amount"), currency, "amount")
    if amount <= 0:
        raise ApiError(400, "Validation failed", message="amount must be positive")
    wallet = _sandbox(request).fund(account, currency, amount)
    return json_response(_wallet_control_json(wallet))


async def control_drain(request: Request) -> Response:
    account, currency = _control_account(request), _currency(request)
    wallet = _sandbox(request).set_balance(account, currency, round_money(Decimal(0), currency))
    return json_response(_wallet_control_json(wallet))


async def control_set_wallet(request: Request) -> Response:
    account, currency = _control_account(request), _currency(request)
    body = await _control_object(request)
    balance = _amount(body.get("balance"), currency, "balance")
    wallet = _sandbox(request).set_balance(account, currency, balance)
    return json_response(_wallet_control_json(wallet))


async def control_ip_allow_list(request: Request) -> Response:
    account, body = _control_account(request), await _control_object(request)
    ips = body.get("ips")
    if ips is not None:
        if not isinstance(ips, list) or not all(isinstance(ip, str) for ip in ips):
            raise ApiError(
                400, "Validation failed", message="ips must be a list of addresses or null"
            )
        try:
            for entry in ips:
                ipaddress.ip_network(entry, strict=False)
        except ValueError as exc:
            raise ApiError(400, "Validation failed", message=str(exc)) from None
    account.ip_allow_list = ips
    return json_response({"apiKey": account.api_key, "ips": ips})


async def control_profile(request: Request) -> Response:
    account, body = _control_account(request), await _control_object(request)
    if not isinstance(body.get("complete"), bool):
        raise ApiError(400, "Validation failed", message="complete must be a boolean")
    account.profile_complete = body["complete"]
    return json_response({"apiKey": account.api_key, "complete": account.profile_complete})


_PRODUCT_FIELDS = {
    "isActive": "is_active",
    "discount": "discount",
    "minValue": "min_value",
    "maxValue": "max_value",
    "denominations": "denominations",
}


async def control_patch_product(request: Request) -> Response:
    sandbox, body = _sandbox(request), await _control_object(request)
    product = sandbox.catalog.get(request.path_params["code"])
    if product is None:
        raise ApiError(404, "Product not found")
    changes: dict[str, Any] = {}
    for name, attr in _PRODUCT_FIELDS.items():
        if name not in body:
            continue
        value = body[name]
        if name == "isActive":
            if not isinstance(value, bool):
                raise ApiError(400, "Validation failed", message="isActive must be a boolean")
            changes[attr] = value
        elif name == "denominations":
            if not isinstance(value, list):
                raise ApiError(400, "Validation failed", message="denominations must be a list")
            changes[attr] = tuple(_amount(v, product.currency, name) for v in value)
        else:
            changes[attr] = _money_input_or_400(value, name)
    if not changes:
        raise ApiError(
            400, "Validation failed", message=f"provide one of {', '.join(_PRODUCT_FIELDS)}"
        )
    updated = replace(product, **changes, updated_at=iso_now())
    sandbox.catalog[product.code] = updated
    sandbox.emit_product_updated(updated, [n for n in _PRODUCT_FIELDS if n in body])
    return json_response(updated.as_json())


def _money_input_or_400(raw: Any, name: str) -> Decimal:
    try:
        return money_input(raw)
    except (TypeError, ValueError):
        raise ApiError(400, "Validation failed", message=f"{name} must be a number") from None


async def control_orders(request: Request) -> Response:
    orders = sorted(
        (o for account in _filtered_accounts(request) for o in account.orders), key=lambda o: o.seq
    )
    rows = [
        {
            **o.body,
            "apiKey": o.api_key,
            "idempotencyKey": o.idempotency_key,
            "orderRequestId": o.order_request_id,
            "cost": o.cost,
        }
        for o in orders
    ]
    return json_response({"total": len(rows), "orders": rows})


async def control_order_requests(request: Request) -> Response:
    rows = [
        {
            **r.as_json(),
            "apiKey": r.api_key,
            "idempotencyKey": r.idempotency_key,
            "currency": r.currency,
            "hold": r.hold,
            "orderCount": r.order_count,
        }
        for account in _filtered_accounts(request)
        for r in account.requests.values()
    ]
    return json_response({"total": len(rows), "orderRequests": rows})


async def control_deliveries(request: Request) -> Response:
    key = request.headers.get("x-api-key") or None
    deliveries = _sandbox(request).webhooks.deliveries_json(key)
    return json_response({"total": len(deliveries), "deliveries": deliveries})


async def control_stats(request: Request) -> Response:
    sandbox = _sandbox(request)
    key = request.headers.get("x-api-key") or None
    since = _int_param(request, "since", 0, 0)
    include_log = parse_bool(request.query_params.get("log")) is not False
    accounts = _filtered_accounts(request)
    counts = {
        "orders": sum(len(a.orders) for a in accounts),
        "orderRequests": sum(len(a.requests) for a in accounts),
    }
    return json_response(
        stats_json(sandbox, counts, since=since, bucket=key, include_log=include_log)
    )


def control_routes() -> list[BaseRoute]:
    return [
        Route("/health", control_health, methods=["GET"]),
        Route("/config", control_get_config, methods=["GET"]),
        Route("/config", control_patch_config, methods=["PATCH"]),
        Route("/mode", control_mode, methods=["PUT"]),
        Route("/faults", control_get_faults, methods=["GET"]),
        Route("/faults", control_patch_faults, methods=["PATCH", "PUT"]),
        Route("/rate-limit", control_rate_limit, methods=["PUT"]),
        Route("/wallets", control_wallets, methods=["GET"]),
        Route("/wallets/{currency}/fund", control_fund, methods=["POST"]),
        Route("/wallets/{currency}/drain", control_drain, methods=["POST"]),
        Route("/wallets/{currency}", control_set_wallet, methods=["PUT"]),
        Route("/account/ip-allow-list", control_ip_allow_list, methods=["PUT"]),
        Route("/account/profile", control_profile, methods=["PUT"]),
        Route("/products/{code}", control_patch_product, methods=["PATCH"]),
        Route("/orders", control_orders, methods=["GET"]),
        Route("/order-requests", control_order_requests, methods=["GET"]),
        Route("/webhooks/deliveries", control_deliveries, methods=["GET"]),
        Route("/stats", control_stats, methods=["GET"]),
        Route("/reset", control_reset, methods=["POST"]),
    ]


# ---------------------------------------------------------------------------
# The app.


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return json_response(exc.body, exc.status_code)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    messages = {404: "Not found", 405: "Method not allowed"}
    return json_response({"error": messages.get(exc.status_code, exc.detail)}, exc.status_code)


def create_app(config: UGiftMeSandboxConfig | None = None) -> Starlette:
    """The sandbox as an ASGI app; its state is `app.state.sandbox`."""
    sandbox = UGiftMeSandbox(config or UGiftMeSandboxConfig())
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        ApiError: _api_error,
        HTTPException: _http_error,
    }
    app = Starlette(
        routes=[Mount(API_ROOT, routes=api_routes()), Mount(CONTROL_ROOT, routes=control_routes())],
        exception_handlers=handlers,
        lifespan=worker_lifespan(sandbox.scheduler, sandbox.webhooks, "ugiftme-sandbox-worker"),
    )
    app.state.sandbox = sandbox
    app.add_middleware(ApiGate, sandbox=sandbox)
    return app
