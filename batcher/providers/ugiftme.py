"""UGiftMe Business API client.

Orders go in bulk (`POST /orders/bulk`, up to 100 items) under an
`Idempotency-Key` header. A bulk answer carries no item indexes, so created
orders are matched back to rows by (productCode, valuePurchased,
recipientEmail, recipientName); the planner guarantees a chunk never holds two
items equal on those four fields, and `encode` refuses such a chunk.

Choices where the contract is silent:

- A rejection (`rejectedOrders`) names only a productCode. It marks the first
  item, in chunk order, with that productCode that no created order matched.
  Which items failed is then exact, but when several items of one product are
  rejected in one chunk, their reasons may be swapped among them.
- A result that does not account for every item exactly (an item neither
  created nor rejected, a created order that matches no item, a rejection with
  no candidate) raises `IncompleteResult`, an `OutcomeUnknown` carrying only
  the certain successes. A row is never dropped and never guessed.
- A 404 on an order request we were told exists raises `OutcomeUnknown`: the
  safe move is to resend the same key and bytes, which the provider replays
  (or, if the request truly vanished, processes once). Marking it failed would
  release rows whose orders may exist.
- The cost of a created order is computed from the catalog discount
  (`money.cost_after_discount`), because a UGiftMe order does not carry what
  the wallet was charged; `ItemResult.extra["cost_source"]` says so, and
  reconciliation checks it against the wallet transaction (`transactionId`).
- A failed order request whose error mentions an insufficient balance gets
  error_code `insufficient_funds`; any other failure gets `request_failed`.

Voucher codes and redemption URLs are bearer credentials: they go into
`ItemResult` and nowhere else (no log line, no exception message).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import suppress
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Generic, Literal, NamedTuple, TypeVar, Unpack
from urllib.parse import quote

import httpx
import msgspec

from batcher.config import ProviderSettings
from batcher.core.clock import utc_text
from batcher.core.collector import collector_paused
from batcher.core.errors import AuthError, OutcomeUnknown, ProviderUnavailable
from batcher.core.fields import BASE_REQUIRED
from batcher.core.keys import MatchKey, match_key
from batcher.core.models import AccountInfo, Balance, Product, WalletTransaction
from batcher.core.money import cost_after_discount, fits_currency, quantum, to_decimal
from batcher.providers.base import (
    ApiBackedProvider,
    IncompleteResult,
    ItemResult,
    LookupHints,
    OrderItem,
    PollResult,
    ProviderOrder,
    Redemption,
    SubmitResult,
)
from batcher.providers.paging import LIST_WORKERS, Identity, IsOlder, Page, read_newest_first
from batcher.providers.wire import (
    as_text,
    assemble,
    aware,
    is_record,
    iso_time,
    parse_time,
    read_record,
    unchecked,
)
from batcher.transport.http import (
    ApiClient,
    ApiResponse,
    Decode,
    Params,
    canonical_json,
    provider_error_text,
)
from batcher.transport.throttle import RateLimiter, SharedPace, limiter_for

log = logging.getLogger(__name__)

PAGE_LIMIT = 100
_MAX_PAGES = 10_000  # a guard against a provider that never says "last page"
_MAX_IDEMPOTENCY_KEY = 255
_ASYNC_HEADERS = ("X-Business-Orders-Async", "X-Account-Orders-Async")
_PENDING_STATUSES = {"queued", "processing"}
_DEBIT_TYPES = {"purchase"}
_CREDIT_TYPES = {"funding", "refund"}

T = TypeVar("T")
CostOf = Callable[[str, Decimal, str], Decimal | None]


class UGiftMeProvider(ApiBackedProvider):
    """The Provider protocol over the UGiftMe Business API."""

    name = "ugiftme"
    submit_limit = 100
    idempotency_carrier: Literal["header", "body"] = "header"
    required_fields = BASE_REQUIRED
    validates_catalog = True
    page_limit = PAGE_LIMIT  # records per page when listing
    list_workers = LIST_WORKERS  # pages of one listing in flight at once

    def __init__(
        self,
        settings: ProviderSettings,
        *,
        max_rate: float | None = None,
        transport: httpx.BaseTransport | None = None,
        limiter: RateLimiter | None = None,
        shared_pace: SharedPace | None = None,
    ) -> None:
        if limiter is None:
            limiter = limiter_for(
                settings.api_key,
                rate_per_second=settings.profile.default_rate_per_second,
                max_rate=max_rate,
                shared=shared_pace,
                base_url=settings.base_url,
            )
        self._api = ApiClient(
            settings.base_url,
            auth_headers={"X-API-Key": settings.api_key.get_secret_value()},
            limiter=limiter,
            auth_hint=f"check {settings.profile.api_key_env}",
            transport=transport,
        )
        self._discounts: dict[str, Decimal] | None = None  # productCode -> discount %

    # ------------------------------------------------------------------ reads

    def preflight(self) -> None:
        """Nothing to check beyond the key, which account() already proves."""

    def account(self) -> AccountInfo:
        return read_record("UGiftMe", "/auth", parse_account, self._get_object("/auth"))

    def catalog(self) -> list[Product]:
        records = self._pages("/products", {}, "products")
        products = [
            read_record("UGiftMe", "/products", parse_product, record) for record in records
        ]
        self._discounts = {product.product_code: product.discount for product in products}
        return products

    def balances(self) -> list[Balance]:
        response = self._get("/wallet")
        if not isinstance(response.data, list):
            raise self._bad_shape("/wallet")
        wallets = [wallet for wallet in response.data if isinstance(wallet, Mapping)]
        return [read_record("UGiftMe", "/wallet", parse_balance, wallet) for wallet in wallets]

    def transactions(self, since: datetime | None = None) -> list[WalletTransaction]:
        """Wallet movements, newest first, down to the first one older than `since`."""
        cutoff = aware(since) if since else None

        def older(transaction: WalletTransaction) -> bool:
            moment = transaction.timestamp
            return cutoff is not None and moment is not None and moment < cutoff

        return self._listing(
            "/wallet/transactions",
            {},
            "transactions",
            parse_transaction,
            listed_transactions,
            identity=_transaction_identity,
            older=older if cutoff else None,
        )

    def orders(self, since: datetime, until: datetime | None = None) -> list[ProviderOrder]:
        params: dict[str, str | int] = {
            "startDate": utc_text(aware(since)),
            "sortBy": "createdAt",
            "order": "desc",
        }
        if until is not None:
            params["endDate"] = utc_text(aware(until))
        return self._listing(
            "/orders/search",
            params,
            "orders",
            parse_provider_order,
            listed_orders,
            identity=_order_identity,
        )

    def redemption(self, order_id: str) -> Redemption | None:
        """`GET /orders/{id}`: the one read that carries the voucher code (a bearer credential)."""
        path = f"/orders/{quote(order_id, safe='')}"
        response = self._api.get(path)
        if response.status_code == 404:
            return None
        if not response.is_success:
            raise ProviderUnavailable(self._status_text("GET", "/orders/{id}", response))
        if not isinstance(response.data, Mapping):
            raise self._bad_shape("/orders/{id}")
        return parse_redemption(order_id, response.data)

    # ---------------------------------------------------------------- writes

    def encode(self, key: str, items: Sequence[OrderItem]) -> bytes:
        """`{"orders":[...]}` as canonical JSON. The key travels in a header, not here."""
        return encode_orders(items, self.submit_limit)

    def submit(self, key: str, payload: bytes, items: Sequence[OrderItem]) -> SubmitResult:
        check_idempotency_key(key)
        self._ensure_discounts()
        response = self._api.post(
            "/orders/bulk",
            content=payload,
            headers={"Idempotency-Key": key, "Content-Type": "application/json"},
        )
        _log_async_mode(response)
        return self._submit_result(response, items)

    def poll(self, request_id: str, items: Sequence[OrderItem]) -> PollResult:
        path = f"/orders/order-requests/{quote(request_id, safe='')}"
        self._ensure_discounts()
        try:
            response = self._api.get(path)
        except AuthError:
            raise
        except ProviderUnavailable as exc:  # for the runner, a failed poll is just "not yet"
            raise OutcomeUnknown(exc.message) from None
        if response.status_code == 404:
            raise OutcomeUnknown(f"order request {request_id} is unknown to UGiftMe (HTTP 404)")
        if not response.is_success or not isinstance(response.data, Mapping):
            raise OutcomeUnknown(self._status_text("GET", path, response))
        return self._poll_result(response.data, items)

    def order_request_result(
        self, data: Mapping[str, Any], items: Sequence[OrderItem]
    ) -> PollResult:
        """An order request as a poll answer or a webhook event carries it: one parser."""
        self._ensure_discounts()
        return self._poll_result(data, items)

    def lookup(
        self, key: str, items: Sequence[OrderItem], **hints: Unpack[LookupHints]
    ) -> SubmitResult | None:
        """UGiftMe cannot look an order up by idempotency key: resend the same bytes."""
        return None

    def requests_in_progress(self, since: datetime) -> int:
        """Wallets holding money for queued order requests, whose orders are not listed
        yet (availableBalance is balance minus such holds)."""
        return sum(1 for b in self.balances() if b.available < b.balance)

    # ------------------------------------------------------------- internals

    def _submit_result(self, response: ApiResponse, items: Sequence[OrderItem]) -> SubmitResult:
        status, data = response.status_code, response.data
        if status == 202:
            return SubmitResult(kind="accepted", request_id=_request_id(data))
        if status in (200, 201):
            return SubmitResult(kind="completed", items=self._map(data, items))
        if status == 402:
            return self._insufficient_funds(data, items)
        if 400 <= status < 500:
            return SubmitResult(
                kind="rejected",
                error_code=rejection_code(status, data),
                error_message=self._error_message(data) or f"HTTP {status}",
            )
        raise OutcomeUnknown(f"POST /orders/bulk: unexpected HTTP {status}")

    def _insufficient_funds(self, data: Any, items: Sequence[OrderItem]) -> SubmitResult:
        body = data if isinstance(data, Mapping) else {}
        return SubmitResult(
            kind="insufficient_funds",
            error_code="insufficient_funds",
            error_message=self._error_message(body) or "Insufficient funds",
            currency=as_text(body.get("currency")) or (items[0].currency if items else None),
            required=_optional_money(body.get("required")),
            available=_optional_money(body.get("available")),
        )

    def _poll_result(self, data: Mapping[str, Any], items: Sequence[OrderItem]) -> PollResult:
        status = as_text(data.get("status"))
        if status == "succeeded":
            result = data.get("result")
            return PollResult(
                kind="completed", items=self._map(result, items), provider_status=status
            )
        if status == "failed":
            error = self._api.scrub(as_text(data.get("error"))) or "order request failed"
            code = "insufficient_funds" if "insufficient" in error.lower() else "request_failed"
            return PollResult(
                kind="failed", error_code=code, error_message=error, provider_status=status
            )
        if status not in _PENDING_STATUSES:
            log.warning("order request in unexpected status %r; treating it as pending", status)
        return PollResult(kind="pending", provider_status=status)

    def _map(self, result: Any, items: Sequence[OrderItem]) -> tuple[ItemResult, ...]:
        """Map a bulk (or single) result to items; unreadable data is an unknown outcome."""
        if not isinstance(result, Mapping):
            raise OutcomeUnknown("the order result is missing or not an object")
        try:
            return map_order_result(result, items, cost_of=self._cost_of)
        except (ValueError, TypeError, ArithmeticError) as exc:
            raise OutcomeUnknown(f"the order result is unreadable ({type(exc).__name__})") from None

    def _ensure_discounts(self) -> None:
        """Load the catalog once, before sending, so costs can be computed from it."""
        if self._discounts is not None:
            return
        try:
            self.catalog()
        except ProviderUnavailable as exc:
            if isinstance(exc, AuthError):
                raise
            log.warning("catalog unavailable, order costs left blank: %s", exc.message)
            self._discounts = {}

    def _cost_of(self, product_code: str, face_value: Decimal, currency: str) -> Decimal | None:
        discount = (self._discounts or {}).get(product_code)
        if discount is None:
            return None
        return cost_after_discount(face_value, discount, currency)

    def _get(
        self, path: str, params: Params | None = None, decode: Decode | None = None
    ) -> ApiResponse:
        response = self._api.get(path, params=params, decode=decode)
        if not response.is_success:
            raise ProviderUnavailable(self._status_text("GET", path, response))
        return response

    def _get_object(self, path: str, params: Params | None = None) -> Mapping[str, Any]:
        data = self._get(path, params).data
        if not isinstance(data, Mapping):
            raise self._bad_shape(path)
        return data

    def _pages(self, path: str, params: Params, list_key: str) -> Iterator[Mapping[str, Any]]:
        """Every record of a paged list, fetching pages only as they are consumed."""
        for page in range(1, _MAX_PAGES + 1):
            data = self._get_object(path, {**params, "page": page, "limit": self.page_limit})
            records = data.get(list_key)
            if not isinstance(records, list):
                raise self._bad_shape(path)
            yield from (record for record in records if isinstance(record, Mapping))
            total_pages = _total_pages(data)
            if not records or total_pages is None or page >= total_pages:
                return

    def _listing(
        self,
        path: str,
        params: Params,
        list_key: str,
        parse: Callable[[Mapping[str, Any]], T],
        listed: Callable[[bytes], Listed[T]],
        *,
        identity: Identity[T],
        older: IsOlder[T] | None = None,
    ) -> list[T]:
        """A newest-first list, a few pages at a time (`providers.paging`), each record
        once, down to (not including) the first one `older` says is past the cutoff.

        A page is read by `listed` (typed, in C) when it can; any page `listed`
        refuses is parsed as JSON and read record by record with `parse`, which
        reads or refuses it as it always did."""

        def fetch(page: int) -> Page[T]:
            query = {**params, "page": page, "limit": self.page_limit}
            data = self._get(path, query, decode=listed).data
            if type(data) is Listed:
                return Page(page, data.items, data.total, data.total_pages)
            if not isinstance(data, Mapping):
                raise self._bad_shape(path)
            records = data.get(list_key)
            if not isinstance(records, list):
                raise self._bad_shape(path)
            try:
                items = [parse(record) if is_record(record) else None for record in records]
            except (ValueError, TypeError, ArithmeticError):
                # read_record's error, raised once for the page rather than tried per record
                raise ProviderUnavailable(
                    f"UGiftMe sent data batcher cannot read from {path}"
                ) from None
            return Page(page, items, _total_records(data), _total_pages(data))

        # 100,000 records make 200,000 objects that outlive the listing, in no cycle:
        # the collector would walk them (and all the process holds) again and again.
        with collector_paused():
            return read_newest_first(
                fetch,
                limit=self.page_limit,
                identity=identity,
                older=older,
                workers=self.list_workers,
            )

    def _status_text(self, method: str, path: str, response: ApiResponse) -> str:
        detail = self._error_message(response.data)
        message = f"{self._api.host}: {method} {path} answered HTTP {response.status_code}"
        return f"{message}: {detail}" if detail else message

    def _error_message(self, data: Any) -> str:
        text = provider_error_text(data)
        details = data.get("details") if isinstance(data, Mapping) else None
        if details:
            text = f"{text} ({_compact(details)})" if text else _compact(details)
        return self._api.scrub(text)

    def _bad_shape(self, path: str) -> ProviderUnavailable:
        return ProviderUnavailable(f"{self._api.host}: GET {path} answered in an unexpected shape")


# ---------------------------------------------------------------------------
# Encoding (pure).


def encode_orders(items: Sequence[OrderItem], limit: int) -> bytes:
    """The bulk body of a checked chunk: the bytes of
    `canonical_json({"orders": [order_item_body(item) for item in items]})`, written
    straight from each item's fields in canonical_json's sorted key order rather than
    through a dict per item (encoding a plan of 20,000 rows)."""
    amounts = check_chunk(items, limit)
    text = _json_string
    bodies = []
    for item, amount in zip(items, amounts, strict=True):
        fields = [f'"currency":{text(item.currency)}']
        if item.message:
            fields.append(f'"giftMessage":{text(item.message)}')
        fields.append(f'"merchant":{text(item.merchant)}')
        fields.append(f'"productCode":{text(item.product_code)}')
        if item.recipient_email:
            fields.append(f'"recipientEmail":{text(item.recipient_email)}')
        if item.recipient_name:
            fields.append(f'"recipientName":{text(item.recipient_name)}')
        fields.append(f'"valuePurchased":{format(amount, "f")}')
        bodies.append("{" + ",".join(fields) + "}")
    return ('{"orders":[' + ",".join(bodies) + "]}").encode("utf-8")


#: how canonical_json writes a string (ensure_ascii=False: UTF-8 as it is)
_json_string: Callable[[str], str] = json.encoder.encode_basestring


def check_chunk(items: Sequence[OrderItem], limit: int) -> list[Decimal]:
    """Refuse a chunk the bulk endpoint or the result mapping cannot handle; returns
    each item's amount with exactly its currency's decimals (`amount_literal`)."""
    if not items:
        raise ValueError("a chunk needs at least one item")
    if len(items) > limit:
        raise ValueError(f"a chunk holds at most {limit} items, not {len(items)}")
    currencies = {item.currency for item in items}
    if len(currencies) > 1:
        raise ValueError(f"a bulk order takes one currency, not {sorted(currencies)}")
    seen: set[MatchKey] = set()
    amounts = []
    for item in items:
        amounts.append(amount_literal(item.amount, item.currency))  # named before matching
        key = item_match_key(item)
        if key in seen:
            raise ValueError(
                f"row {item.row_key} repeats the product, amount, email and name of another "
                "item in its chunk; results could not be mapped back"
            )
        seen.add(key)
    return amounts


def order_item_body(item: OrderItem) -> dict[str, Any]:
    """One bulk item. Empty optional fields are always omitted, never sent as ""."""
    body: dict[str, Any] = {
        "productCode": item.product_code,
        "merchant": item.merchant,
        "currency": item.currency,
        "valuePurchased": amount_literal(item.amount, item.currency),
    }
    optional = {
        "recipientEmail": item.recipient_email,
        "recipientName": item.recipient_name,
        "giftMessage": item.message,
    }
    body.update({name: value for name, value in optional.items() if value})
    return body


def amount_literal(amount: Decimal, currency: str) -> Decimal:
    """The amount with exactly the currency's decimals (50 -> 50.00, JPY 1000 -> 1000)."""
    if not amount.is_finite() or amount <= 0:
        raise ValueError(f"{amount} is not a positive amount")
    step = _QUANTUM.get(currency)
    if step is None:
        step = _QUANTUM.setdefault(currency, quantum(currency))
    with suppress(InvalidOperation):  # too many digits to quantize: asked the long way
        literal = amount.quantize(step)
        # Equal in value after quantizing: no decimal beyond the currency's was dropped
        # (what `fits_currency` asks, without normalizing; a plan spells 20,000 of them).
        if literal == amount:
            return literal
    if not fits_currency(amount, currency):
        raise ValueError(f"{amount} has more decimals than {currency} allows")
    return amount.quantize(quantum(currency))


#: currency -> `quantum(currency)`
_QUANTUM: dict[str, Decimal] = {}


def check_idempotency_key(key: str) -> None:
    if not key or len(key) > _MAX_IDEMPOTENCY_KEY or not key.isascii() or not key.isprintable():
        raise ValueError("an idempotency key must be 1-255 printable ASCII characters")


# ---------------------------------------------------------------------------
# Result mapping (pure).


def _norm_code(code: str) -> str:
    return code.strip().upper()


def item_match_key(item: OrderItem) -> MatchKey:
    return match_key(item.product_code, item.amount, item.recipient_email, item.recipient_name)


def order_match_key(order: Mapping[str, Any]) -> MatchKey:
    return _order_key(order)[0]


def _order_key(order: Mapping[str, Any]) -> tuple[MatchKey, Decimal]:
    """`order_match_key` and the order's face value (`valuePurchased`), read once."""
    gift = order.get("giftOrder")
    recipient: Mapping[str, Any] = gift if is_record(gift) else order
    code = as_text(order.get("productCode"))  # read in `match_key`'s argument order
    value = to_decimal(order.get("valuePurchased"))
    key = match_key(
        code,
        value,
        as_text(recipient.get("recipientEmail")),
        as_text(recipient.get("recipientName")),
    )
    return key, value


def map_order_result(
    result: Mapping[str, Any],
    items: Sequence[OrderItem],
    *,
    cost_of: CostOf | None = None,
) -> tuple[ItemResult, ...]:
    """One ItemResult per item, in item order, from a bulk result (or a single order).

    Raises IncompleteResult, carrying the exact matches, when the result does not
    account for every item exactly.
    """
    orders, rejections = _orders_and_rejections(result)
    by_key = {item_match_key(item): item for item in items}
    succeeded: dict[str, ItemResult] = {}
    stray_orders = 0
    for order in orders:
        key, face_value = _order_key(order)
        item = by_key.get(key)
        if item is None or item.row_key in succeeded:
            stray_orders += 1
            continue
        succeeded[item.row_key] = _succeeded(item, order, cost_of, face_value)

    if not rejections and not stray_orders and len(succeeded) == len(items):
        # The common answer: every item created, nothing rejected. `succeeded` holds
        # one result per distinct row key, so each item has one unless two items share
        # a row key (then fewer keys than items: the general path below).
        return tuple([succeeded[item.row_key] for item in items])

    failed: dict[str, ItemResult] = {}
    stray_rejections = 0
    for product_code, reason in rejections:
        item = _first_unsettled(items, product_code, succeeded, failed)
        if item is None:
            stray_rejections += 1
            continue
        failed[item.row_key] = _rejected(item, reason)

    outcomes = {**succeeded, **failed}
    unaccounted = sum(1 for item in items if item.row_key not in outcomes)
    if unaccounted or stray_orders or stray_rejections:
        # Only exact matches are certain; rejections were assigned by elimination.
        certain = tuple(succeeded[item.row_key] for item in items if item.row_key in succeeded)
        raise IncompleteResult(
            f"the provider's result does not add up: {unaccounted} of {len(items)} items "
            f"unaccounted for, {stray_orders} created orders and {stray_rejections} "
            "rejections matching no item",
            items=certain,
        )
    return tuple(outcomes[item.row_key] for item in items)


def _orders_and_rejections(
    result: Mapping[str, Any],
) -> tuple[list[Mapping[str, Any]], list[tuple[str, str]]]:
    if "orders" not in result and "_id" in result:
        return [result], []  # a single-order request's result is the order itself
    raw_orders = result.get("orders") or []
    raw_rejections = result.get("rejectedOrders") or []
    if not isinstance(raw_orders, list) or not isinstance(raw_rejections, list):
        raise TypeError("orders and rejectedOrders must be lists")
    orders = [order for order in raw_orders if isinstance(order, Mapping)]
    if len(orders) != len(raw_orders):
        raise TypeError("an order is not an object")
    rejections = [
        (as_text(entry.get("productCode")), _rejection_reason(entry))
        for entry in raw_rejections
        if isinstance(entry, Mapping)
    ]
    if len(rejections) != len(raw_rejections):
        raise TypeError("a rejection is not an object")
    return orders, rejections


def _rejection_reason(entry: Mapping[str, Any]) -> str:
    for field in ("reason", "error", "message"):
        value = entry.get(field)
        if isinstance(value, str) and value.strip():
            return " ".join(value.split())
    return "rejected by the provider"


def _first_unsettled(
    items: Sequence[OrderItem],
    product_code: str,
    succeeded: Mapping[str, ItemResult],
    failed: Mapping[str, ItemResult],
) -> OrderItem | None:
    """The first item, in chunk order, of this product that has no outcome yet."""
    wanted = _norm_code(product_code)
    for item in items:
        settled = item.row_key in succeeded or item.row_key in failed
        if not settled and _norm_code(item.product_code) == wanted:
            return item
    return None


def _succeeded(
    item: OrderItem, order: Mapping[str, Any], cost_of: CostOf | None, face_value: Decimal
) -> ItemResult:
    """A created order's result; `face_value` is its `valuePurchased`, already read."""
    merchant = order.get("merchant")
    credentials = merchant if is_record(merchant) else _NO_RECORD
    currency = as_text(order.get("currency")) or item.currency
    cost = cost_of(item.product_code, face_value, currency) if cost_of else None
    # Built as `unchecked` builds a listing's models, every field named (a chunk's
    # results are made on the send loop's critical path).
    return unchecked(
        ItemResult,
        {
            "row_key": item.row_key,
            "status": "succeeded",
            "order_id": as_text(order.get("_id")) or None,
            "transaction_id": as_text(order.get("transactionId")) or None,
            "cost": cost,
            "cost_currency": currency if cost is not None else None,
            "voucher_code": as_text(credentials.get("voucherCode")) or None,
            "redemption_url": as_text(credentials.get("redemptionUrl")) or None,
            "provider_status": as_text(order.get("status")),
            "error_code": "",
            "error_message": "",
            "request_id": None,
            "extra": {"cost_source": "catalog_discount"} if cost is not None else {},
        },
    )


_NO_RECORD: Mapping[str, Any] = {}


def _rejected(item: OrderItem, reason: str) -> ItemResult:
    return ItemResult(
        row_key=item.row_key,
        status="failed",
        provider_status="rejected",
        error_code="item_rejected",
        error_message=reason,
    )


def rejection_code(status: int, data: Any) -> str:
    """A stable error code for a definite 4xx refusal of the whole request."""
    text = provider_error_text(data).lower()
    if "idempotency" in text and ("reused" in text or "different payload" in text):
        return "idempotency_key_reused"  # a bug on our side: same key, different bytes
    if status == 404:
        return "not_found"
    if status in (400, 422):
        return "validation_error"
    return f"http_{status}"


def _request_id(data: Any) -> str:
    request_id = as_text(data.get("orderRequestId")) if isinstance(data, Mapping) else ""
    if not request_id:
        raise OutcomeUnknown("the provider accepted the order request but gave no id")
    return request_id


def _log_async_mode(response: ApiResponse) -> None:
    """Diagnostic only: whether the account processes orders asynchronously."""
    for header in _ASYNC_HEADERS:
        value = response.headers.get(header)
        if value is not None:
            log.debug("%s: %s", header, value)
            return


# ---------------------------------------------------------------------------
# Parsing records (pure). Each raises ValueError/TypeError on malformed data.


def parse_account(record: Mapping[str, Any]) -> AccountInfo:
    return AccountInfo(
        account_id=_required_text(record, "businessId"),
        name=as_text(record.get("name")),
        email=as_text(record.get("email")),
        plan=as_text(record.get("plan")),
        status=as_text(record.get("verificationStatus")),
    )


def parse_product(record: Mapping[str, Any]) -> Product:
    merchant = record.get("merchant")
    if isinstance(merchant, Mapping):  # a string in the catalog, an object on orders
        merchant = merchant.get("name")
    denominations = record.get("denominations") or []
    countries = record.get("countries") or []
    return Product(
        product_code=_required_text(record, "productCode"),
        name=as_text(record.get("name")),
        merchant=as_text(merchant),
        currency=_required_text(record, "currency"),
        countries=tuple(as_text(country) for country in countries),
        category=as_text(record.get("category")),
        min_value=_optional_money(record.get("minValue")),
        max_value=_optional_money(record.get("maxValue")),
        denominations=tuple(to_decimal(value) for value in denominations),
        discount=_optional_money(record.get("discount")) or Decimal(0),
        is_active=record.get("isActive") is not False,
    )


def parse_balance(wallet: Mapping[str, Any]) -> Balance:
    balance = to_decimal(wallet.get("balance"))
    available = _optional_money(wallet.get("availableBalance"))
    return Balance(
        currency=_required_text(wallet, "currency"),
        balance=balance,
        available=balance if available is None else available,
    )


def parse_transaction(record: Mapping[str, Any]) -> WalletTransaction:
    # A listing parses 100,000 of these: the fields are read and checked here, once
    # (a str, a finite Decimal, a datetime or None), and the model is built without
    # checking them again. Whatever these checks refuse raises as before.
    get = record.get
    kind = get("transactionType")
    kind = kind.strip() if isinstance(kind, str) else ""
    value = to_decimal(get("transactionValue"))
    if kind in _DEBIT_TYPES:
        amount = -abs(value)
    elif kind in _CREDIT_TYPES:
        amount = abs(value)
    else:
        amount = value  # an unknown type: keep whatever sign the provider sent
    if not amount.is_finite():  # the model's own check raises its own error
        return WalletTransaction(transaction_type=kind, amount=amount, currency="")
    details = get("details")
    if not is_record(details):
        details = {}
    currency = get("currency")
    currency = currency.strip() if isinstance(currency, str) else ""
    order_id = get("orderID")
    transaction_id = get("transactionId") or get("_id")
    return assemble(
        WalletTransaction,
        transaction_type=kind,
        amount=amount,
        currency=currency or as_text(details.get("currency")),
        order_id=(order_id.strip() or None) if isinstance(order_id, str) else None,
        transaction_id=(transaction_id.strip() or None)
        if isinstance(transaction_id, str)
        else None,
        reference=None,
        timestamp=parse_time(get("timestamp")),
        description=as_text(details.get("description")),
    )


def parse_provider_order(record: Mapping[str, Any]) -> ProviderOrder:
    # Read and checked here, once, and built without the dataclass's __init__ (see
    # parse_transaction): a listing parses 100,000 of these.
    get = record.get
    order_id = get("_id")
    order_id = order_id.strip() if isinstance(order_id, str) else ""
    if not order_id:
        raise ValueError("missing _id")
    gift = get("giftOrder")
    recipient = gift if is_record(gift) else {}
    transaction_id = get("transactionId")
    return assemble(
        ProviderOrder,
        order_id=order_id,
        product_code=as_text(get("productCode")),
        currency=as_text(get("currency")),
        face_value=to_decimal(get("valuePurchased")),
        status=as_text(get("status")),
        created_at=parse_time(get("createdAt")),
        recipient_email=as_text(recipient.get("recipientEmail")),
        recipient_name=as_text(recipient.get("recipientName")),
        transaction_id=(transaction_id.strip() or None)
        if isinstance(transaction_id, str)
        else None,
        reference=None,
        cost=None,
    )


# ---------------------------------------------------------------------------
# Listing pages decoded straight into models (pure).
#
# A report lists 100,000 orders and as many wallet transactions, 2,000 pages.
# msgspec decodes a page into the structures below in C, checking each field's
# JSON type on the way, and a short loop builds the models exactly as
# parse_provider_order and parse_transaction do. The structures accept only what
# those parsers read without a second thought: a string or null where they read
# text, a number or a decimal string where they read money, an object or null
# where they read an object, every list entry an object. Anything else (and a
# blank order id or a non-finite amount) raises ValueError, and that page is
# parsed as JSON and read record by record by the parsers above (see
# `ApiClient.get(decode=...)`), which read or refuse it as they always did.
# tests/test_ugiftme_listing_parse.py checks that both ways build the same models.

_Text = str | None


class Listed(NamedTuple, Generic[T]):
    """One listing page read by the fast path: its models and its totals."""

    items: list[T]
    total: int | None
    total_pages: int | None


class _Totals(msgspec.Struct, kw_only=True, gc=False):
    """Where a page may say how long the listing is (`_total_records`, `_total_pages`)."""

    pagination: Any = None
    total: Any = None
    totalTransactions: Any = None
    totalOrders: Any = None
    totalPages: Any = None

    def listed(self, items: list[T]) -> Listed[T]:
        data = {
            "pagination": self.pagination,
            "total": self.total,
            "totalTransactions": self.totalTransactions,
            "totalOrders": self.totalOrders,
            "totalPages": self.totalPages,
        }
        return Listed(items, _total_records(data), _total_pages(data))


class _Recipient(msgspec.Struct, kw_only=True, gc=False):
    recipientEmail: _Text = None
    recipientName: _Text = None


class _Order(msgspec.Struct, kw_only=True, gc=False):
    id: str = msgspec.field(name="_id")
    valuePurchased: Decimal
    productCode: _Text = None
    currency: _Text = None
    status: _Text = None
    createdAt: _Text = None
    giftOrder: _Recipient | None = None
    transactionId: _Text = None


class _OrdersPage(_Totals, kw_only=True, gc=False):
    orders: list[_Order]


class _Details(msgspec.Struct, kw_only=True, gc=False):
    currency: _Text = None
    description: _Text = None


class _Transaction(msgspec.Struct, kw_only=True, gc=False):
    transactionValue: Decimal
    id: _Text = msgspec.field(name="_id", default=None)
    transactionId: _Text = None
    transactionType: _Text = None
    currency: _Text = None
    orderID: _Text = None
    timestamp: _Text = None
    details: _Details | None = None


class _TransactionsPage(_Totals, kw_only=True, gc=False):
    transactions: list[_Transaction]


# float_hook: a number in a free-form field (the totals) is a Decimal there too.
_decode_orders = msgspec.json.Decoder(_OrdersPage, float_hook=Decimal).decode
_decode_transactions = msgspec.json.Decoder(_TransactionsPage, float_hook=Decimal).decode
_NO_RECIPIENT = _Recipient()
_NO_DETAILS = _Details()


class _ReadOneByOne(ValueError):
    """A page the fast path leaves to the record parsers (they say what is wrong)."""


def listed_orders(content: bytes) -> Listed[ProviderOrder]:
    """An `/orders/search` page as `parse_provider_order` reads it, or `_ReadOneByOne`."""
    page = _decode_orders(content)
    orders: list[ProviderOrder] = []
    for record in page.orders:
        order_id = record.id.strip()
        face_value = record.valuePurchased
        if not order_id or not face_value.is_finite():
            raise _ReadOneByOne()
        recipient = record.giftOrder or _NO_RECIPIENT
        created = record.createdAt
        transaction_id = record.transactionId
        orders.append(
            unchecked(
                ProviderOrder,
                {
                    "order_id": order_id,
                    "product_code": (record.productCode or "").strip(),
                    "currency": (record.currency or "").strip(),
                    "face_value": face_value,
                    "status": (record.status or "").strip(),
                    "created_at": None if created is None else iso_time(created),
                    "recipient_email": (recipient.recipientEmail or "").strip(),
                    "recipient_name": (recipient.recipientName or "").strip(),
                    "transaction_id": None
                    if transaction_id is None
                    else (transaction_id.strip() or None),
                    "reference": None,
                    "cost": None,
                },
            )
        )
    return page.listed(orders)


def listed_transactions(content: bytes) -> Listed[WalletTransaction]:
    """A `/wallet/transactions` page as `parse_transaction` reads it, or `_ReadOneByOne`."""
    page = _decode_transactions(content)
    transactions: list[WalletTransaction] = []
    for record in page.transactions:
        value = record.transactionValue
        if not value.is_finite():
            raise _ReadOneByOne()
        kind = (record.transactionType or "").strip()
        if kind in _DEBIT_TYPES:
            amount = -abs(value)
        elif kind in _CREDIT_TYPES:
            amount = abs(value)
        else:
            amount = value
        details = record.details or _NO_DETAILS
        order_id = record.orderID
        transaction_id = record.transactionId or record.id
        stamp = record.timestamp
        transactions.append(
            unchecked(
                WalletTransaction,
                {
                    "transaction_type": kind,
                    "amount": amount,
                    "currency": (record.currency or "").strip() or (details.currency or "").strip(),
                    "order_id": None if order_id is None else (order_id.strip() or None),
                    "transaction_id": None
                    if transaction_id is None
                    else (transaction_id.strip() or None),
                    "reference": None,
                    "timestamp": None if stamp is None else iso_time(stamp),
                    "description": (details.description or "").strip(),
                },
            )
        )
    return page.listed(transactions)


def parse_redemption(order_id: str, record: Mapping[str, Any]) -> Redemption:
    merchant = record.get("merchant")
    credentials = merchant if isinstance(merchant, Mapping) else {}
    return Redemption(
        order_id=as_text(record.get("_id")) or order_id,
        voucher_code=as_text(credentials.get("voucherCode")) or None,
        redemption_url=as_text(credentials.get("redemptionUrl")) or None,
    )


def _required_text(record: Mapping[str, Any], field: str) -> str:
    value = as_text(record.get(field))
    if not value:
        raise ValueError(f"missing {field}")
    return value


def _optional_money(value: Any) -> Decimal | None:
    return None if value is None else to_decimal(value)


def _order_identity(order: ProviderOrder) -> str:
    return order.order_id


def _transaction_identity(transaction: WalletTransaction) -> str | None:
    return transaction.transaction_id


def _total_records(data: Mapping[str, Any]) -> int | None:
    """How many records the whole listing holds, as this answer counts them."""
    pagination = data.get("pagination")
    for source in (pagination, data):
        if isinstance(source, Mapping):
            for field in ("total", "totalTransactions", "totalOrders"):
                value = source.get(field)
                if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                    return value
    return None


def _total_pages(data: Mapping[str, Any]) -> int | None:
    pagination = data.get("pagination")
    source = pagination if isinstance(pagination, Mapping) else data
    value = source.get("totalPages")
    return value if isinstance(value, int) else None


def _compact(details: Any) -> str:
    """Validation details on one line (the caller scrubs and shortens them)."""
    if isinstance(details, str):
        return details
    try:
        return canonical_json(details).decode("utf-8")
    except (TypeError, ValueError):
        return "unreadable details"
