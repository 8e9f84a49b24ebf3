"""GIFQ API client (contract: docs/providers/gifq.md), in two modes.

**Orders mode** (`GifqOrders`): one gift card per `POST /api/orders`, so the
submit unit is a single item and the idempotency key travels in the body as the
order's `reference` (GIFQ deduplicates on it: the same reference and body
return the existing order with 200).

**Payouts mode** (`GifqPayouts`): up to 1,000 recipients per
`POST /api/payout-orders`, who later choose their own card. The key travels in
an `Idempotency-Key` header, which GIFQ does not document, so an unanswered
payout order is looked up before anything is resent.

Choices where the contract is silent (each one is tested):

- Requests are paced at `PACE_MARGIN` of the profile's 10/s: GIFQ counts fixed
  one-second windows and sends no remaining-count headers.
- Completion is read from the newest-first order list, 20 orders a page. Polls
  are answered from an `OrderBoard` that is read again only when a poll needs
  it and it is stale (see `OrderBoard.stale`), and then only as many pages as
  the orders being waited for need. An order not on the first `SCAN_PAGES`
  pages is fetched with `GET /api/orders/:id` from then on.
- The order list carries no redemption details, so a result read from it has
  no voucher code; `redemption(order_id)` fetches them. They are bearer
  credentials: they go into the returned object and nowhere else.
- An order's cost is its `price` in its own currency; a cross-currency order
  costs `fx_fee.total_charged` in the payment currency (converted price plus
  the 1% fee), which is what its wallet `order` and `fx_fee` debits add up to.
- A failed order (refunded automatically) gets error_code `request_failed`, a
  fulfilment failure the next run retries. A 422 gets `insufficient_funds`
  (with the shortfall read from its message), `out_of_stock`,
  `idempotency_key_reused` or `validation_error`, and keeps its `request_id`.
- `lookup` in orders mode scans at most `LOOKUP_PAGES` pages for the reference.
  None means "not on those pages": never created, or older than the pages
  scanned. Either way the caller resends the same bytes, which GIFQ
  deduplicates by reference, so a resend never creates a second card.
- `lookup` in payouts mode matches campaign, wallet currency, recipient count,
  total and (once listed) the recipients themselves; see `GifqPayouts.lookup`
  for when it answers None and when it stops the run instead of guessing.
- Payouts carry no item index, so they are matched to rows by (email, amount,
  currency), preferring the same name; rows equal on all of these are
  interchangeable and are paired in listing order.
- Wallet transactions are read newest first only once the list shows itself
  so (GIFQ does not document its order); otherwise every page is read.

The token never appears in a message: `ApiClient` scrubs provider text, and the
account id is a fingerprint, never the token.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import httpx

from batcher.config import ProviderSettings
from batcher.core.errors import AuthError, ProviderUnavailable, UsageError
from batcher.core.fields import BASE_REQUIRED
from batcher.core.models import AccountInfo, Balance, Product, WalletTransaction
from batcher.core.money import fits_currency, quantum, round_money, to_decimal
from batcher.providers.base import (
    ApiBackedProvider,
    IncompleteResult,
    ItemResult,
    OrderItem,
    OutcomeUnknown,
    PollResult,
    Provider,
    ProviderOptions,
    ProviderOrder,
    Redemption,
    SubmitResult,
)
from batcher.transport.http import (
    ApiClient,
    ApiResponse,
    Params,
    canonical_json,
    provider_error_text,
)
from batcher.transport.throttle import RateLimiter, limiter_for

log = logging.getLogger(__name__)

#: GIFQ serves at most 20 records per page; a larger `limit` is never sent.
PAGE_LIMIT = 20
#: Pages a poll may scan for the orders it waits for before it falls back to GET by id.
SCAN_PAGES = 3
#: Pages `lookup` scans for a reference (100 orders) before it says "not found".
LOOKUP_PAGES = 5
#: Pages of payout orders `lookup` scans (4,000 payout orders, up to 4M recipients).
PAYOUT_LOOKUP_PAGES = 200
#: GIFQ counts requests in fixed one-second windows and sends no remaining-count
#: headers, so nothing tells batcher where a window starts. Pacing at exactly 10/s
#: lets jitter put an 11th request into one window (a 429); 5% under the limit
#: leaves ~50 ms of slack per window and still sends 9.5 requests a second.
PACE_MARGIN = 0.95
#: How far GIFQ's clock may be behind ours when comparing creation times.
CLOCK_SKEW = timedelta(minutes=10)
_MAX_PAGES = 10_000  # a guard against a list that never ends
_MAX_BOARD_ENTRIES = 20_000
#: Older orders a refresh's first page still shows, for those pending at the last one.
_PAGE_SLACK = 4
#: How soon the order list is read again when no order was created since the last read.
_IDLE_REFRESH = 0.5
_MAX_REFERENCE = 255

_FINAL_ORDER_STATUSES = {"completed", "failed"}
_PENDING_PAYOUT_ORDER_STATUSES = {"queued", "processing"}
_DELIVERED_PAYOUT_STATUSES = {"sent", "redeemed", "expired"}
_REDEMPTION_FIELDS = ("code", "pin", "link", "link_challenge_code", "serial", "security_code")

T = TypeVar("T")
Record = Mapping[str, Any]
Clock = Callable[[], float]


# ---------------------------------------------------------------------------
# Construction


def connect_gifq(
    settings: ProviderSettings,
    *,
    max_rate: float | None = None,
    options: ProviderOptions | None = None,
) -> Provider:
    """The GIFQ client for the run's mode: orders (default) or payouts."""
    options = options or ProviderOptions()
    if options.mode == "payouts":
        return GifqPayouts(settings, options=options, max_rate=max_rate)
    return GifqOrders(settings, max_rate=max_rate)


def account_fingerprint(base_url: str, token: str) -> str:
    """A stable account id that reveals nothing about the token.

    GIFQ has no account endpoint, so the id is derived from where and with what
    batcher connects. A rotated token therefore counts as another account (the
    ledger refuses to mix them in one batch).
    """
    digest = hashlib.sha256(f"gifq\x1f{base_url.rstrip('/')}\x1f{token}".encode()).hexdigest()
    return f"gifq-{digest[:16]}"


# ---------------------------------------------------------------------------
# What both modes share


class _GifqBase(ApiBackedProvider):
    name = "gifq"
    page_limit = PAGE_LIMIT

    def __init__(
        self,
        settings: ProviderSettings,
        *,
        options: ProviderOptions | None = None,
        max_rate: float | None = None,
        transport: httpx.BaseTransport | None = None,
        limiter: RateLimiter | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        if limiter is None:
            limiter = limiter_for(
                settings.api_key,
                rate_per_second=settings.profile.default_rate_per_second * PACE_MARGIN,
                max_rate=max_rate,
            )
        token = settings.api_key.get_secret_value()
        self._api = ApiClient(
            settings.base_url,
            auth_headers={"X-Api-Token": token},
            limiter=limiter,
            auth_hint=f"check {settings.profile.api_key_env}",
            transport=transport,
        )
        self._account_id = account_fingerprint(settings.base_url, token)
        self._options = options or ProviderOptions()
        self._clock = clock

    # ------------------------------------------------------------------ reads

    def preflight(self) -> None:
        """Nothing beyond the token, which account() already proved."""

    def account(self) -> AccountInfo:
        """GIFQ has no account endpoint: prove the token with one balances call."""
        balances = self.balances()
        currencies = ",".join(sorted(balance.currency for balance in balances))
        return AccountInfo(
            account_id=self._account_id,
            name="GIFQ",
            plan=self._options.mode,
            status="token accepted",
            extra={"host": self._api.host, "wallets": currencies},
        )

    def balances(self) -> list[Balance]:
        data = self._get("/balances").data
        if not isinstance(data, list):
            raise self._bad_shape("/balances")
        return [_read("/balances", parse_balance, record) for record in _records(data)]

    def transactions(self, since: datetime | None = None) -> list[WalletTransaction]:
        """Every wallet movement since `since` (all of them without it)."""
        return self._since("/transactions", parse_transaction, since, lambda t: t.timestamp)

    # ------------------------------------------------------------- internals

    def _since(
        self,
        path: str,
        parse: Callable[[Record], T],
        since: datetime | None,
        time_of: Callable[[T], datetime | None],
        until: datetime | None = None,
    ) -> list[T]:
        """The records of a list created in [since, until].

        GIFQ does not document the order of this list. Reading stops early only
        once the list has shown itself newest first (a strictly older record
        after a newer one, never the reverse) and a whole page lies before
        `since`; otherwise every page is read and filtered.
        """
        start = _aware(since) if since else None
        end = _aware(until) if until else None
        order = ListOrder()
        found: list[T] = []
        for records, _last in self._page_lists(path, None, _MAX_PAGES):
            page = [_read(path, parse, record) for record in records]
            times = [time_of(record) for record in page]
            order.see(times)
            found += [
                record
                for record, moment in zip(page, times, strict=True)
                if moment is None or ((not start or moment >= start) and (not end or moment <= end))
            ]
            before = [
                moment is not None and start is not None and moment < start for moment in times
            ]
            if order.newest_first and page and all(before):
                break
        return found

    def _get(self, path: str, params: Params | None = None) -> ApiResponse:
        response = self._api.get(path, params=params)
        if not response.is_success:
            raise ProviderUnavailable(self._status_text("GET", path, response))
        return response

    def _page_lists(
        self, path: str, params: Params | None, max_pages: int
    ) -> Iterator[tuple[list[Record], bool]]:
        """Each page's records and whether it is the last page, fetched as consumed."""
        for page in range(1, max_pages + 1):
            response = self._api.get(path, params=page_params(page, self.page_limit, params))
            if response.status_code == 400 and is_pagination_error(response.data):
                yield [], True  # past the last page (an empty list has no page 1)
                return
            if not response.is_success:
                raise ProviderUnavailable(self._status_text("GET", path, response))
            if not isinstance(response.data, list):
                raise self._bad_shape(path)
            last = is_last_page(page, len(response.data), self.page_limit, response.headers)
            yield list(_records(response.data)), last
            if last:
                return

    def _pages(
        self, path: str, params: Params | None = None, *, max_pages: int = _MAX_PAGES
    ) -> Iterator[Record]:
        """Every record of a paged list (at most `max_pages` pages of it)."""
        for records, _last in self._page_lists(path, params, max_pages):
            yield from records

    def _scan(self, path: str, max_pages: int) -> tuple[list[Record], bool]:
        """Up to `max_pages` pages of a list, and whether that was the whole list."""
        found: list[Record] = []
        complete = False
        for records, last in self._page_lists(path, None, max_pages):
            found.extend(records)
            complete = last
        return found, complete

    def _post(
        self, path: str, payload: bytes, headers: Mapping[str, str] | None = None
    ) -> ApiResponse:
        return self._api.post(
            path, content=payload, headers={"Content-Type": "application/json", **(headers or {})}
        )

    def _status_text(self, method: str, path: str, response: ApiResponse) -> str:
        detail = self._api.scrub(provider_error_text(response.data))
        message = f"{self._api.host}: {method} {path} answered HTTP {response.status_code}"
        return f"{message}: {detail}" if detail else message

    def _bad_shape(self, path: str) -> ProviderUnavailable:
        return ProviderUnavailable(f"{self._api.host}: GET {path} answered in an unexpected shape")

    def _rejection(self, response: ApiResponse, currency: str) -> SubmitResult:
        """A definite 4xx on a POST: nothing was created."""
        data = response.data if isinstance(response.data, Mapping) else {}
        message = self._api.scrub(provider_error_text(data)) or f"HTTP {response.status_code}"
        request_id = _text(data.get("request_id")) or response.headers.get("x-request-id") or None
        code = rejection_code(response.status_code, message)
        if code == "insufficient_funds":
            short = shortfall(message) or (currency, None, None)
            return SubmitResult(
                kind="insufficient_funds",
                error_code=code,
                error_message=message,
                currency=short[0],
                required=short[1],
                available=short[2],
                provider_request_id=request_id,
            )
        return SubmitResult(
            kind="rejected", error_code=code, error_message=message, provider_request_id=request_id
        )


# ---------------------------------------------------------------------------
# Orders mode


class GifqOrders(_GifqBase):
    """The Provider protocol over GIFQ single orders, keyed by `reference`."""

    submit_limit = 1
    idempotency_carrier: Literal["header", "body"] = "body"
    required_fields = BASE_REQUIRED | {"country"}
    validates_catalog = True

    def __init__(
        self,
        settings: ProviderSettings,
        *,
        max_rate: float | None = None,
        transport: httpx.BaseTransport | None = None,
        limiter: RateLimiter | None = None,
        clock: Clock = time.monotonic,
        refresh_seconds: float = 2.0,
        scan_pages: int = SCAN_PAGES,
        lookup_pages: int = LOOKUP_PAGES,
    ) -> None:
        super().__init__(
            settings, max_rate=max_rate, transport=transport, limiter=limiter, clock=clock
        )
        self.board = OrderBoard(clock=clock)
        self.refresh_seconds = refresh_seconds
        self.scan_pages = scan_pages
        self.lookup_pages = lookup_pages
        self._off_list: set[str] = set()  # orders too old for the first pages: GET by id

    # ------------------------------------------------------------------ reads

    def catalog(self) -> list[Product]:
        products: list[Product] = []
        for brand in self._pages("/products"):
            products.extend(_read("/products", parse_brand, brand))
        return products

    def orders(self, since: datetime, until: datetime | None = None) -> list[ProviderOrder]:
        """Orders created in [since, until], from the newest-first list."""
        start = _aware(since)
        end = _aware(until) if until else None
        found: list[ProviderOrder] = []
        for record in self._pages("/orders"):
            order = _read("/orders", parse_provider_order, record)
            if order.created_at and order.created_at < start:
                break  # newest first (doc): everything after this is older still
            if end and order.created_at and order.created_at > end:
                continue
            found.append(order)
        return found

    def redemption(self, order_id: str) -> Redemption | None:
        """How one order is redeemed (`GET /api/orders/:id`); None when GIFQ has no such order."""
        response = self._api.get(f"/orders/{quote(order_id, safe='')}")
        if response.status_code == 404:
            return None
        if not response.is_success or not isinstance(response.data, Mapping):
            raise ProviderUnavailable(self._status_text("GET", "/orders/:id", response))
        return _read("/orders/:id", parse_redemption, response.data)

    # ---------------------------------------------------------------- writes

    def encode(self, key: str, items: Sequence[OrderItem]) -> bytes:
        if len(items) != 1:
            raise ValueError(f"a GIFQ order holds exactly one item, not {len(items)}")
        return canonical_json(order_body(key, items[0]))

    def submit(self, key: str, payload: bytes, items: Sequence[OrderItem]) -> SubmitResult:
        (item,) = items
        response = self._post("/orders", payload)
        status = response.status_code
        if status in (200, 201) and isinstance(response.data, Mapping):
            order = response.data
            if _text(order.get("reference")) not in ("", key):
                raise OutcomeUnknown("POST /orders answered with another order's reference")
            if status == 201:
                self.board.created(order)
            else:
                self.board.remember(order)
            return self._submit_result(order, item)
        if status in (200, 201):
            raise OutcomeUnknown(f"POST /orders: HTTP {status} without an order")
        if 400 <= status < 500:
            return self._rejection(response, item.payment_currency or item.currency)
        raise OutcomeUnknown(f"POST /orders: unexpected HTTP {status}")

    def poll(self, request_id: str, items: Sequence[OrderItem]) -> PollResult:
        """Answer from the order board; refresh it (one list page, usually) when stale."""
        (item,) = items
        try:
            order = self._order_status(request_id)
        except AuthError:
            raise
        except ProviderUnavailable as exc:  # for the runner, a failed poll is just "not yet"
            raise OutcomeUnknown(exc.message) from None
        if order is None:
            return PollResult(kind="pending")
        result = self._order_result(item, order)
        if result.status == "pending":
            return PollResult(kind="pending", provider_status=result.provider_status)
        self.board.settled(request_id)
        self._off_list.discard(request_id)
        return PollResult(kind="completed", items=(result,), provider_status=result.provider_status)

    def lookup(
        self, key: str, items: Sequence[OrderItem], *, sent_after: datetime | None = None
    ) -> SubmitResult | None:
        """Find the order an unanswered POST may have created, by its reference.

        Scans at most `lookup_pages` newest-first pages. None means it is not
        there: either it was never created, or it is older than the pages
        scanned; in both cases resending the same bytes is safe, because GIFQ
        answers a repeated reference with the existing order.
        """
        (item,) = items
        for record in self._pages("/orders", max_pages=self.lookup_pages):
            self.board.remember(record)
            if _text(record.get("reference")) == key:
                return self._submit_result(record, item)
        return None

    # ------------------------------------------------------------- internals

    def _submit_result(self, order: Record, item: OrderItem) -> SubmitResult:
        order_id = _text_of(order.get("id"))
        if not order_id:
            raise OutcomeUnknown("GIFQ answered with an order that has no id")
        result = self._order_result(item, order)
        if result.status == "pending":
            return SubmitResult(kind="accepted", request_id=order_id)
        self.board.settled(order_id)
        return SubmitResult(kind="completed", request_id=order_id, items=(result,))

    def _order_result(self, item: OrderItem, order: Record) -> ItemResult:
        """`order_result`, with provider text scrubbed of the token."""
        result = order_result(item, order)
        if not result.error_message:
            return result
        return dataclasses.replace(result, error_message=self._api.scrub(result.error_message))

    def _order_status(self, order_id: str) -> Record | None:
        """The freshest status batcher can have for one order without waste."""
        self.board.watch(order_id)
        known = self.board.get(order_id)
        if known is not None and _text(known.get("status")) in _FINAL_ORDER_STATUSES:
            return known
        if order_id in self._off_list:
            return self._fetch_order(order_id)
        if not self.board.stale(self.refresh_seconds, page_size=self.page_limit):
            return known
        self._refresh_board()
        if order_id in self._off_list:
            return self._fetch_order(order_id)
        return self.board.get(order_id)

    def _refresh_board(self) -> None:
        """Read the newest orders until every order being waited for has been seen."""
        self.board.refreshing()
        waiting = self.board.waiting() - self._off_list
        for record in self._pages("/orders", max_pages=self.scan_pages):
            self.board.remember(record)
            waiting.discard(_text_of(record.get("id")))
            if not waiting:
                return
        self._off_list.update(waiting)  # older than the pages scanned: GET by id from now on

    def _fetch_order(self, order_id: str) -> Record:
        path = f"/orders/{quote(order_id, safe='')}"
        response = self._api.get(path)
        if response.status_code == 404:
            raise OutcomeUnknown(f"order {order_id} is unknown to GIFQ (HTTP 404)")
        if not response.is_success or not isinstance(response.data, Mapping):
            raise OutcomeUnknown(self._status_text("GET", "/orders/:id", response))
        self.board.remember(response.data)
        return response.data


class ListOrder:
    """Whether a list has shown itself newest first, from the timestamps seen so far."""

    def __init__(self) -> None:
        self._last: datetime | None = None
        self._fell = False
        self._rose = False

    def see(self, times: Iterable[datetime | None]) -> None:
        for moment in times:
            if moment is None:
                continue
            if self._last is not None:
                self._fell |= moment < self._last
                self._rose |= moment > self._last
            self._last = moment

    @property
    def newest_first(self) -> bool:
        return self._fell and not self._rose


class OrderBoard:
    """The last status the order list showed for each order, and which ones a poll awaits.

    Redemption details are dropped on the way in: the board holds statuses and
    amounts only, never bearer credentials.
    """

    def __init__(self, *, clock: Clock = time.monotonic, max_entries: int = _MAX_BOARD_ENTRIES):
        self._clock = clock
        self._max_entries = max_entries
        self._orders: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._waiting: set[str] = set()
        self._refreshed_at: float | None = None
        self._created_since_refresh = 0
        self._last_created_at: float | None = None

    def remember(self, record: Record) -> None:
        order_id = _text_of(record.get("id"))
        if not order_id:
            return
        self._orders[order_id] = {k: v for k, v in record.items() if k != "redemption"}
        self._orders.move_to_end(order_id)
        while len(self._orders) > self._max_entries:
            self._orders.popitem(last=False)

    def get(self, order_id: str) -> Record | None:
        return self._orders.get(order_id)

    def watch(self, order_id: str) -> None:
        self._waiting.add(order_id)

    def settled(self, order_id: str) -> None:
        """The runner has the final answer: stop waiting for it."""
        self._waiting.discard(order_id)
        self._orders.pop(order_id, None)

    def waiting(self) -> set[str]:
        """Orders a poll awaits whose final status the board does not know yet."""
        return {
            order_id
            for order_id in self._waiting
            if _text((self._orders.get(order_id) or {}).get("status")) not in _FINAL_ORDER_STATUSES
        }

    def created(self, record: Record) -> None:
        """An order this client just created: it tops the newest-first list."""
        self.remember(record)
        self._created_since_refresh += 1
        self._last_created_at = self._clock()

    def stale(
        self, max_age: float, *, page_size: int = PAGE_LIMIT, idle_age: float = _IDLE_REFRESH
    ) -> bool:
        """Time to read the list again?

        - enough orders were created since the last read that the next first
          page holds them all and little else (sooner wastes a page; later, and
          page 1 no longer reaches the oldest of them);
        - no order was created for `idle_age` (the tail of a run, or a run that
          only polls): after `idle_age`, since a page then costs no more than one
          GET by id and may answer many polls;
        - otherwise after `max_age`.
        """
        if self._refreshed_at is None:
            return True
        if self._created_since_refresh >= max(1, page_size - _PAGE_SLACK):
            return True
        now = self._clock()
        idle = self._last_created_at is None or now - self._last_created_at >= idle_age
        return now - self._refreshed_at >= (idle_age if idle else max_age)

    def refreshing(self) -> None:
        self._refreshed_at = self._clock()
        self._created_since_refresh = 0

    def __len__(self) -> int:
        return len(self._orders)


# ---------------------------------------------------------------------------
# Payouts mode


class GifqPayouts(_GifqBase):
    """The Provider protocol over GIFQ payout orders (recipients choose their card)."""

    submit_limit = 1000
    idempotency_carrier: Literal["header", "body"] = "header"
    required_fields = frozenset({"recipient_email", "amount", "currency"})
    validates_catalog = False

    def __init__(
        self,
        settings: ProviderSettings,
        *,
        options: ProviderOptions,
        max_rate: float | None = None,
        transport: httpx.BaseTransport | None = None,
        limiter: RateLimiter | None = None,
        clock: Clock = time.monotonic,
        lookup_pages: int = PAYOUT_LOOKUP_PAGES,
    ) -> None:
        if options.mode != "payouts" or not options.campaign_id:
            raise UsageError("GIFQ payouts need a campaign", hint="pass --payouts --campaign ID")
        super().__init__(
            settings,
            options=options,
            max_rate=max_rate,
            transport=transport,
            limiter=limiter,
            clock=clock,
        )
        self.campaign_id = options.campaign_id
        self.expires_in_days = options.expires_in_days or 30
        self.lookup_pages = lookup_pages
        self._claimed: set[str] = set()  # payout orders this process already tied to a chunk
        self._unanswered: dict[str, datetime] = {}  # key -> when its unanswered POST left

    # ------------------------------------------------------------------ reads

    def preflight(self) -> None:
        """The campaign must exist and be active before a single row is read."""
        campaign = self._campaign()
        if campaign is None:
            raise UsageError(
                f"GIFQ campaign {self.campaign_id!r} does not exist for this token",
                hint="check --campaign against the campaigns in your GIFQ account",
            )
        status = _text(campaign.get("status")) or "unknown"
        if status != "active":
            title = _text(campaign.get("title"))
            named = f"{self.campaign_id!r} ({title})" if title else repr(self.campaign_id)
            raise UsageError(
                f"GIFQ campaign {named} is {status}; payouts need an active campaign",
                hint="activate the campaign in GIFQ, or pick another with --campaign",
            )

    def catalog(self) -> list[Product]:
        """Payout rows name no product: recipients choose from the campaign later."""
        return []

    def redemption(self, order_id: str) -> Redemption | None:
        """A payout carries no code: the recipient chooses a card through GIFQ's email."""
        return Redemption(order_id=order_id)

    def orders(self, since: datetime, until: datetime | None = None) -> list[ProviderOrder]:
        """Each recipient's payout (what a payout row's order_id names) in [since, until]."""
        return self._since(
            "/payouts", parse_payout_order_line, since, lambda p: p.created_at, until
        )

    # ---------------------------------------------------------------- writes

    def encode(self, key: str, items: Sequence[OrderItem]) -> bytes:
        return canonical_json(
            payout_order_body(self.campaign_id, items, self.expires_in_days, self.submit_limit)
        )

    def submit(self, key: str, payload: bytes, items: Sequence[OrderItem]) -> SubmitResult:
        """Send a payout order; a resend of one this process got no answer for looks first.

        GIFQ does not document `Idempotency-Key` on payout orders, so the same key
        is not trusted to deduplicate: when an earlier POST of this key went
        unanswered, the payout orders created since it was sent are searched
        (`lookup`) and only a definite "not there" lets the POST go out again.
        """
        check_reference(key)
        if key in self._unanswered:
            found = self.lookup(key, items, sent_after=self._unanswered[key])
            if found is not None:
                del self._unanswered[key]
                return found
        sent_at = datetime.now(UTC)
        try:
            response = self._post("/payout-orders", payload, headers={"Idempotency-Key": key})
        except OutcomeUnknown:
            self._unanswered.setdefault(key, sent_at)
            raise
        self._unanswered.pop(key, None)
        status = response.status_code
        if status in (200, 201, 202):
            order_id = (
                _text_of(response.data.get("id")) if isinstance(response.data, Mapping) else ""
            )
            if not order_id:
                raise OutcomeUnknown("GIFQ accepted the payout order but gave no id")
            self._claimed.add(order_id)
            return SubmitResult(kind="accepted", request_id=order_id)
        if 400 <= status < 500:
            return self._rejection(response, items[0].currency)
        raise OutcomeUnknown(f"POST /payout-orders: unexpected HTTP {status}")

    def poll(self, request_id: str, items: Sequence[OrderItem]) -> PollResult:
        try:
            return self._poll(request_id, items)
        except AuthError:
            raise
        except ProviderUnavailable as exc:
            raise OutcomeUnknown(exc.message) from None

    def lookup(
        self, key: str, items: Sequence[OrderItem], *, sent_after: datetime | None = None
    ) -> SubmitResult | None:
        """Find the payout order an unanswered POST may have created, without resending.

        A candidate matches campaign, wallet currency, recipient count and total,
        was not already tied to another chunk by this process, was created after
        `sent_after` (less `CLOCK_SKEW`) when the caller knows when the chunk was
        first sent, and, once its payouts are listed, pays exactly these recipients.

        - one live (not failed) candidate: that is the chunk's payout order;
        - none live: it was never created, or it failed and was refunded; either
          way a resend pays each recipient once, so None (resend);
        - several live candidates, or a list too long to scan to its end without
          finding one: batcher cannot tell, and stops rather than guess or resend.
        """
        listed, complete = self._scan("/payout-orders", self.lookup_pages)
        oldest = _aware(sent_after) - CLOCK_SKEW if sent_after else None
        live = [
            record
            for record in listed
            if _text(record.get("status")) != "failed"
            and _text_of(record.get("id")) not in self._claimed
            and not _created_before(record, oldest)
            and self._same_shape(record, items)
            and self._same_recipients(record, items)
        ]
        if len(live) > 1:
            ids = ", ".join(sorted(_text_of(record.get("id")) for record in live))
            raise ProviderUnavailable(
                f"an unanswered payout order matches {len(live)} GIFQ payout orders "
                f"({ids}); batcher will not guess or resend",
                hint="check them in GIFQ; the chunk stays unresolved until then",
            )
        if live:
            order_id = _text_of(live[0].get("id"))
            self._claimed.add(order_id)
            return SubmitResult(kind="accepted", request_id=order_id)
        if not complete:
            raise ProviderUnavailable(
                f"cannot tell whether an unanswered payout order was created: GIFQ lists "
                f"more than {self.lookup_pages * self.page_limit} payout orders",
                hint="check GIFQ for it; the chunk stays unresolved until then",
            )
        return None

    # ------------------------------------------------------------- internals

    def _campaign(self) -> Record | None:
        for record in self._pages("/campaigns"):
            if _text_of(record.get("id")) == self.campaign_id:
                return record
        return None

    def _poll(self, request_id: str, items: Sequence[OrderItem]) -> PollResult:
        path = f"/payout-orders/{quote(request_id, safe='')}"
        response = self._api.get(path)
        if response.status_code == 404:
            raise OutcomeUnknown(f"payout order {request_id} is unknown to GIFQ (HTTP 404)")
        if not response.is_success or not isinstance(response.data, Mapping):
            raise OutcomeUnknown(self._status_text("GET", "/payout-orders/:id", response))
        order = response.data
        status = _text(order.get("status"))
        if status == "failed":
            reason = self._api.scrub(_text(order.get("failure_reason"))) or "payout order failed"
            return PollResult(
                kind="failed",
                error_code="request_failed",
                error_message=reason,
                provider_status=status,
            )
        if status != "completed":
            if status not in _PENDING_PAYOUT_ORDER_STATUSES:
                log.warning("payout order in unexpected status %r; treating it as pending", status)
            return PollResult(kind="pending", provider_status=status)
        payouts = [
            payout
            for payout in self._pages("/payouts", {"payout_order_id": request_id})
            if _text_of(payout.get("payout_order_id")) in ("", request_id)
        ]
        wallet = _text(order.get("wallet_currency")) or items[0].currency
        mapped = map_payouts(payouts, items, wallet_currency=wallet)
        scrubbed = tuple(
            dataclasses.replace(r, error_message=self._api.scrub(r.error_message)) for r in mapped
        )
        return PollResult(kind="completed", items=scrubbed, provider_status=status)

    def _same_shape(self, record: Record, items: Sequence[OrderItem]) -> bool:
        try:
            total = to_decimal(record.get("total_amount"))
            count = int(record.get("recipient_count"))  # type: ignore[arg-type]
        except (TypeError, ValueError, ArithmeticError):
            return False
        campaign = record.get("campaign_id")
        return (
            (campaign is None or str(campaign) == self.campaign_id)
            and _text(record.get("wallet_currency")).upper() == items[0].currency.upper()
            and count == len(items)
            and total == sum((item.amount for item in items), Decimal(0))
        )

    def _same_recipients(self, record: Record, items: Sequence[OrderItem]) -> bool:
        """Once payouts are listed, they must be exactly these recipients."""
        order_id = _text_of(record.get("id"))
        if _text(record.get("status")) in _PENDING_PAYOUT_ORDER_STATUSES:
            return True  # no payouts yet: the shape is all there is to compare
        payouts = list(self._pages("/payouts", {"payout_order_id": order_id}))
        if not payouts:
            return True
        wanted = sorted(payout_match_key(i.recipient_email, i.amount, i.currency) for i in items)
        listed = sorted(_payout_key(record) for record in payouts)
        return wanted == listed


# ---------------------------------------------------------------------------
# Encoding (pure).


def order_body(key: str, item: OrderItem) -> dict[str, Any]:
    """`POST /api/orders`. face_value is a decimal string with the currency's decimals."""
    check_reference(key)
    if not item.product_code.strip():
        raise ValueError(f"row {item.row_key} has no brand")
    if not item.country.strip():
        raise ValueError(f"row {item.row_key} has no country")
    body: dict[str, Any] = {
        "brand": item.product_code.strip(),
        "currency": item.currency.upper(),
        "face_value": amount_text(item.amount, item.currency),
        "country": item.country.strip().upper(),
        "reference": key,
    }
    paying = item.payment_currency.strip().upper()
    if paying and paying != body["currency"]:
        body["payment_currency"] = paying
    return body


def payout_order_body(
    campaign_id: str, items: Sequence[OrderItem], expires_in_days: int, limit: int = 1000
) -> dict[str, Any]:
    """`POST /api/payout-orders`: one wallet currency, recipients in chunk order."""
    if not items:
        raise ValueError("a payout order needs at least one recipient")
    if len(items) > limit:
        raise ValueError(f"a payout order holds at most {limit} recipients, not {len(items)}")
    wallet = items[0].currency.upper()
    recipients = []
    for item in items:
        if item.currency.upper() != wallet:
            raise ValueError(
                f"a payout order is paid from one wallet, not {wallet} and {item.currency}"
            )
        paying = item.payment_currency.strip().upper()
        if paying and paying != wallet:
            raise ValueError(
                f"row {item.row_key}: payouts are paid from the {wallet} wallet; "
                f"payment_currency {paying} is not supported"
            )
        recipient: dict[str, Any] = {
            "email": item.recipient_email.strip(),
            "amount": amount_text(item.amount, item.currency),
            "currency": item.currency.upper(),
        }
        if item.recipient_name.strip():
            recipient["name"] = " ".join(item.recipient_name.split())
        recipients.append(recipient)
    return {
        "campaign_id": campaign_id,
        "wallet_currency": wallet,
        "recipients": recipients,
        "expires_in_days": expires_in_days,
    }


def amount_text(amount: Decimal, currency: str) -> str:
    """The amount with exactly the currency's decimals, as text: 50 -> '50.00'."""
    if not amount.is_finite() or amount <= 0:
        raise ValueError(f"{amount} is not a positive amount")
    if not fits_currency(amount, currency):
        raise ValueError(f"{amount} has more decimals than {currency} allows")
    return format(amount.quantize(quantum(currency)), "f")


def check_reference(key: str) -> None:
    if not key or len(key) > _MAX_REFERENCE or not key.isascii() or not key.isprintable():
        raise ValueError("a reference must be 1-255 printable ASCII characters")


def page_params(page: int, limit: int, extra: Params | None = None) -> dict[str, str | int]:
    """Query parameters of one list page. `limit` above GIFQ's 20 is refused, never sent."""
    if not 1 <= limit <= PAGE_LIMIT:
        raise ValueError(f"GIFQ pages hold 1-{PAGE_LIMIT} records, not {limit}")
    if page < 1:
        raise ValueError("pages count from 1")
    return {**(extra or {}), "page": page, "limit": limit}


def is_last_page(page: int, count: int, limit: int, headers: Mapping[str, str]) -> bool:
    """`total-pages` says so; without it, a short page is the last one."""
    total_pages = _header_int(headers, "total-pages")
    if total_pages is not None:
        return page >= total_pages
    return count < limit


def is_pagination_error(data: Any) -> bool:
    return "pagination error" in provider_error_text(data).lower()


_SHORTFALL = re.compile(
    r"([0-9][0-9,]*(?:\.[0-9]+)?)\s*([A-Z]{3})\s+required\W+"
    r"([0-9][0-9,]*(?:\.[0-9]+)?)\s*([A-Z]{3})\s+available",
    re.IGNORECASE,
)


def shortfall(message: str) -> tuple[str, Decimal, Decimal] | None:
    """(currency, required, available) from GIFQ's balance message, when it says so.

    "Insufficient balance: 62.53 USD required, 10.00 USD available"
    """
    match = _SHORTFALL.search(message)
    if match is None or match.group(2).upper() != match.group(4).upper():
        return None
    required, available = (Decimal(match.group(i).replace(",", "")) for i in (1, 3))
    return match.group(2).upper(), required, available


def rejection_code(status: int, message: str) -> str:
    """A stable error code for a definite 4xx refusal (nothing was created)."""
    text = message.lower()
    if "insufficient" in text or "balance" in text or "funds" in text:
        return "insufficient_funds"
    if "reference" in text and ("different" in text or "already used" in text):
        return "idempotency_key_reused"  # a bug on our side: same key, other bytes
    if "stock" in text:
        return "out_of_stock"
    if status == 404:
        return "not_found"
    if status in (400, 422):
        return "validation_error"
    return f"http_{status}"


# ---------------------------------------------------------------------------
# Result mapping (pure).


def order_result(item: OrderItem, order: Record) -> ItemResult:
    """One order's status as the row's result: pending, succeeded or failed."""
    status = _text(order.get("status"))
    order_id = _text_of(order.get("id")) or None
    if status == "completed":
        cost, cost_currency = order_cost(order, item)
        credentials = (
            parse_redemption(order) if isinstance(order.get("redemption"), Mapping) else None
        )
        return ItemResult(
            row_key=item.row_key,
            status="succeeded",
            order_id=order_id,
            cost=cost,
            cost_currency=cost_currency,
            voucher_code=credentials.voucher_code if credentials else None,
            redemption_url=credentials.redemption_url if credentials else None,
            provider_status=status,
            extra=_fx_extra(order),
        )
    if status == "failed":
        reason = " ".join(_text(order.get("failure_reason")).split()) or "the order failed"
        return ItemResult(
            row_key=item.row_key,
            status="failed",
            order_id=order_id,
            provider_status=status,
            error_code="insufficient_funds"
            if "insufficient" in reason.lower()
            else "request_failed",
            error_message=reason,
        )
    if status != "pending":
        log.warning("GIFQ order in unexpected status %r; treating it as pending", status)
    return ItemResult(
        row_key=item.row_key, status="pending", order_id=order_id, provider_status=status
    )


def order_cost(order: Record, item: OrderItem | None = None) -> tuple[Decimal | None, str | None]:
    """What the wallet paid for a completed order, and in which currency.

    Same currency: `price`. Cross-currency: `fx_fee.total_charged` in the payment
    currency (the converted price plus the fee), or, when a provider leaves the
    total out, the converted price plus `fee_amount`.
    """
    currency = _text(order.get("currency")) or (item.currency if item else "")
    fx = order.get("fx_fee")
    if isinstance(fx, Mapping):
        paying = (
            _text(fx.get("currency"))
            or _text(order.get("payment_currency"))
            or (item.payment_currency if item else "")
        )
        total = _optional_money(fx.get("total_charged"))
        if total is not None:
            return total, paying or None
        rate, fee = _optional_money(fx.get("rate")), _optional_money(fx.get("fee_amount"))
        price = _optional_money(order.get("price"))
        if rate is not None and fee is not None and price is not None and paying:
            return round_money(price * rate, paying) + fee, paying
        return None, None
    price = _optional_money(order.get("price"))
    if price is None:
        return None, None
    return price, currency or None


def _fx_extra(order: Record) -> dict[str, str]:
    fx = order.get("fx_fee")
    if not isinstance(fx, Mapping):
        return {}
    extra = {"price": _text_of(order.get("price")), "price_currency": _text(order.get("currency"))}
    for field in ("rate", "fee_percentage", "fee_amount", "total_charged", "currency"):
        extra[f"fx_{field}"] = _text_of(fx.get(field))
    return {k: v for k, v in extra.items() if v}


def payout_match_key(email: str, amount: object, currency: str) -> tuple[str, Decimal, str]:
    """How a payout is matched to its row: Decimal compares by value (50 == 50.00)."""
    return (email.strip().lower(), to_decimal(amount), currency.strip().upper())


def _payout_key(payout: Record) -> tuple[str, Decimal, str]:
    return payout_match_key(
        _text(payout.get("email")),
        payout.get("amount"),
        _text(payout.get("currency")),
    )


def map_payouts(
    payouts: Iterable[Record], items: Sequence[OrderItem], *, wallet_currency: str
) -> tuple[ItemResult, ...]:
    """One ItemResult per item, in item order, from a completed payout order's payouts.

    A payout matches an item on (email, amount, currency). Among several such
    payouts, one that also carries the item's name is preferred; items equal on
    all of these are interchangeable and are paired in listing order. Raises
    IncompleteResult (carrying the exact matches) when the payouts do not
    account for every item one to one.
    """
    queues: dict[tuple[str, Decimal, str], list[Record]] = defaultdict(list)
    stray = 0
    for payout in payouts:
        try:
            queues[_payout_key(payout)].append(payout)
        except (TypeError, ValueError, ArithmeticError):
            stray += 1
    chosen: dict[str, Record] = {}
    for same_name_only in (True, False):
        for item in items:
            if item.row_key in chosen:
                continue
            queue = queues.get(payout_match_key(item.recipient_email, item.amount, item.currency))
            found = _take(queue or [], _norm_name(item.recipient_name) if same_name_only else None)
            if found is not None:
                chosen[item.row_key] = found
    results = {
        item.row_key: payout_result(item, chosen[item.row_key], wallet_currency)
        for item in items
        if item.row_key in chosen
    }
    stray += sum(len(queue) for queue in queues.values())
    missing = len(items) - len(results)
    if missing or stray:
        raise IncompleteResult(
            f"the payouts do not add up: {missing} of {len(items)} recipients without a "
            f"payout, {stray} payouts matching no recipient",
            items=[results[item.row_key] for item in items if item.row_key in results],
        )
    return tuple(results[item.row_key] for item in items)


def _take(queue: list[Record], name: str | None) -> Record | None:
    """Remove and return the first payout (with this name, when one is given)."""
    for index, payout in enumerate(queue):
        if name is None or _norm_name(_text(payout.get("name"))) == name:
            return queue.pop(index)
    return None


def _norm_name(name: str) -> str:
    return " ".join(name.split()).casefold()


def payout_result(item: OrderItem, payout: Record, wallet_currency: str) -> ItemResult:
    status = _text(payout.get("status"))
    payout_id = _text_of(payout.get("id")) or None
    if status == "failed":
        reason = " ".join(_text(payout.get("failure_reason")).split()) or "the payout failed"
        return ItemResult(
            row_key=item.row_key,
            status="failed",
            order_id=payout_id,
            provider_status=status,
            error_code="request_failed",
            error_message=reason,
        )
    if status not in _DELIVERED_PAYOUT_STATUSES:
        log.warning("GIFQ payout in unexpected status %r; counting it as sent", status)
    same_wallet = item.currency.upper() == wallet_currency.upper()
    return ItemResult(
        row_key=item.row_key,
        status="succeeded",
        order_id=payout_id,
        cost=to_decimal(payout.get("amount")) if same_wallet else None,
        cost_currency=wallet_currency.upper() if same_wallet else None,
        provider_status=status,
        extra={"payout_order_id": _text(payout.get("payout_order_id"))},
    )


# ---------------------------------------------------------------------------
# Parsing records (pure). Each raises ValueError/TypeError on malformed data.


def parse_brand(brand: Record) -> list[Product]:
    """One Product per brand option: code = brand slug; equal min and max = fixed value."""
    slug = _required_text(brand, "brand")
    title = _text(brand.get("title")) or slug
    categories = brand.get("categories") or []
    brand_countries = brand.get("countries") or []
    options = brand.get("products") or []
    if not isinstance(options, list):
        raise TypeError("products must be a list")
    products = []
    for option in _records(options):
        low = _optional_money(option.get("min_face_value"))
        high = _optional_money(option.get("max_face_value"))
        countries = option.get("countries") or brand_countries
        products.append(
            Product(
                product_code=slug,
                name=title,
                merchant=title,
                currency=_required_text(option, "currency").upper(),
                countries=tuple(_text(c).upper() for c in countries if _text(c)),
                category=_text(categories[0]) if categories else "",
                min_value=low,
                max_value=high,
                denominations=(low,) if low is not None and low == high else (),
                discount=_optional_money(option.get("discount")) or Decimal(0),
                is_active=option.get("stock_count") != 0,
            )
        )
    return products


def parse_balance(record: Record) -> Balance:
    amount = to_decimal(record.get("amount"))
    return Balance(
        currency=_required_text(record, "currency").upper(), balance=amount, available=amount
    )


def parse_transaction(record: Record) -> WalletTransaction:
    """Signed as GIFQ sends it: negative amounts are debits."""
    kind = _required_text(record, "type")
    order_id = _text_of(record.get("order_id")) or _text_of(record.get("payout_order_id"))
    return WalletTransaction(
        transaction_type=kind,
        amount=to_decimal(record.get("amount")),
        currency=_required_text(record, "currency").upper(),
        order_id=order_id or None,
        transaction_id=_text_of(record.get("id")) or None,
        reference=_text(record.get("reference")) or None,
        timestamp=_parse_time(record.get("created_at")),
        description=kind.replace("_", " "),
    )


def parse_provider_order(record: Record) -> ProviderOrder:
    cost, _currency = order_cost(record)
    return ProviderOrder(
        order_id=_required_text(record, "id"),
        product_code=_text(record.get("brand")),
        currency=_text(record.get("currency")).upper(),
        face_value=to_decimal(record.get("face_value")),
        status=_text(record.get("status")),
        created_at=_parse_time(record.get("created_at")),
        reference=_text(record.get("reference")) or None,
        cost=cost if _text(record.get("status")) == "completed" else None,
    )


def parse_payout_order_line(record: Record) -> ProviderOrder:
    """One recipient's payout, in the shape reconciliation reads orders in."""
    return ProviderOrder(
        order_id=_required_text(record, "id"),
        product_code="",
        currency=_text(record.get("currency")).upper(),
        face_value=to_decimal(record.get("amount")),
        status=_text(record.get("status")),
        created_at=_parse_time(record.get("created_at")),
        recipient_email=_text(record.get("email")),
        reference=_text_of(record.get("payout_order_id")) or None,
        cost=to_decimal(record.get("amount")),
    )


def parse_redemption(order: Record) -> Redemption:
    """The order's credentials as one voucher code and one link.

    The code is `code` (or `serial`); a `pin`, `security_code` or
    `link_challenge_code` the brand also needs follows it, labelled, so the
    recipient has everything in one cell.
    """
    fields = order.get("redemption")
    found = fields if isinstance(fields, Mapping) else {}
    values = {name: _text_of(found.get(name)) for name in _REDEMPTION_FIELDS}
    parts = [values["code"] or values["serial"]]
    if values["code"] and values["serial"]:
        parts.append(f"serial {values['serial']}")
    labels = {"pin": "PIN", "security_code": "security code", "link_challenge_code": "challenge"}
    parts += [f"{label} {values[name]}" for name, label in labels.items() if values[name]]
    return Redemption(
        order_id=_required_text(order, "id"),
        voucher_code=" / ".join(part for part in parts if part) or None,
        redemption_url=values["link"] or None,
    )


def _read(path: str, parse: Callable[[Record], T], record: Record) -> T:
    """Parse one record; malformed provider data becomes a one-line operator error."""
    try:
        return parse(record)
    except (ValueError, TypeError, ArithmeticError):
        raise ProviderUnavailable(f"GIFQ sent data batcher cannot read from {path}") from None


def _records(values: Iterable[Any]) -> Iterator[Record]:
    return (value for value in values if isinstance(value, Mapping))


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _text_of(value: Any) -> str:
    """A string or number as text (ids may be either); Decimals exactly as written."""
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, int | str):
        return str(value).strip()
    return ""


def _required_text(record: Record, field: str) -> str:
    value = _text_of(record.get(field))
    if not value:
        raise ValueError(f"missing {field}")
    return value


def _optional_money(value: Any) -> Decimal | None:
    return None if value is None or value == "" else to_decimal(value)


def _header_int(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return _aware(datetime.fromisoformat(value.strip()))
    except ValueError:
        return None


def _created_before(record: Record, moment: datetime | None) -> bool:
    created = _parse_time(record.get("created_at"))
    return moment is not None and created is not None and created < moment


def _aware(moment: datetime) -> datetime:
    """Naive datetimes are taken as UTC, so comparisons never mix the two."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
