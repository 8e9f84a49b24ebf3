"""GIFQ orders mode: one gift card per `POST /api/orders`, keyed by `reference`."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Generator, Mapping, Sequence
from contextlib import closing
from datetime import datetime
from typing import Literal, Unpack
from urllib.parse import quote

import httpx

from batcher.config import ProviderSettings
from batcher.core.errors import AuthError, OutcomeUnknown, ProviderUnavailable
from batcher.core.fields import BASE_REQUIRED
from batcher.core.models import FxQuote, Product
from batcher.providers.base import (
    ItemResult,
    LookupHints,
    OrderItem,
    PollResult,
    ProviderOptions,
    ProviderOrder,
    Redemption,
    SubmitResult,
)
from batcher.providers.gifq.board import Clock, ListedStretch, OrderBoard
from batcher.providers.gifq.common import _MAX_PAGES, LOOKUP_PAGES, GifqBase
from batcher.providers.gifq.parse import (
    FINAL_ORDER_STATUSES,
    fx_quote,
    order_body,
    order_result,
    parse_brand,
    parse_provider_order,
    parse_redemption,
    text_of,
)
from batcher.providers.wire import Record, as_text, aware, parse_time, read_record
from batcher.transport.http import (
    canonical_json,
)
from batcher.transport.throttle import RateLimiter

#: Pages a poll may scan for the orders it waits for before it falls back to GET by id
#: (more when this client created more orders than that since the last read).
SCAN_PAGES = 3
#: At most this many pages in one read of the board, however many orders were created.
_MAX_SCAN_PAGES = 50


#: pages of the order list read for the last FX rates (20 orders a page)
FX_PAGES = 5
#: Pages a listing reads from the top to reach the orders this client listed already;
#: more orders than that created since by others, and it lists everything again.
TOP_PAGES = LOOKUP_PAGES
#: Orders not yet final when last listed that a listing fetches one by one (GET by id);
#: more than that, and it lists everything again.
REFETCH_MAX = 20


def _older(record: Record, start: datetime) -> bool:
    """Created before `start`, as far as the record says."""
    moment = parse_time(record.get("created_at"))
    return moment is not None and aware(moment) < start


def _newer(a: FxQuote, b: FxQuote) -> bool:
    return a.seen_at is not None and (b.seen_at is None or a.seen_at > b.seen_at)


class GifqOrders(GifqBase):
    """The Provider protocol over GIFQ single orders, keyed by `reference`."""

    submit_limit = 1
    idempotency_carrier: Literal["header", "body"] = "body"
    required_fields = BASE_REQUIRED | {"country"}
    validates_catalog = True

    def __init__(
        self,
        settings: ProviderSettings,
        *,
        options: ProviderOptions | None = None,
        max_rate: float | None = None,
        transport: httpx.BaseTransport | None = None,
        limiter: RateLimiter | None = None,
        clock: Clock = time.monotonic,
        refresh_seconds: float = 2.0,
        scan_pages: int = SCAN_PAGES,
        lookup_pages: int = LOOKUP_PAGES,
    ) -> None:
        super().__init__(
            settings,
            options=options,
            max_rate=max_rate,
            transport=transport,
            limiter=limiter,
            clock=clock,
        )
        self.board = OrderBoard(clock=clock)
        self.listed = ListedStretch()  # what this client's reads of the order list showed
        self.refresh_seconds = refresh_seconds
        self.scan_pages = scan_pages
        self.lookup_pages = lookup_pages
        self._off_list: set[str] = set()  # orders too old for the first pages: GET by id
        self._board_reads = 0  # requests polls made: a poll that made none was answered from memory

    # ------------------------------------------------------------------ reads

    def catalog(self) -> list[Product]:
        products: list[Product] = []
        for brand in self._pages("/products"):
            products.extend(read_record("GIFQ", "/products", parse_brand, brand))
        return products

    def orders(self, since: datetime, until: datetime | None = None) -> list[ProviderOrder]:
        """Orders created in [since, until], from the newest-first list.

        What this client has listed already (its `listed` stretch, e.g. during a
        run's polls) is not read again: only the orders above it, those it last
        saw not final, and those below it down to `since`. Whatever does not fit
        that (a broken stretch, many new orders from elsewhere) lists everything.
        """
        start = aware(since)
        end = aware(until) if until else None
        found = self._listed_orders(start)
        if found is None:
            found = self._orders_from_top(start)
        return [o for o in found if not (end and o.created_at and o.created_at > end)]

    def fx_rates(self) -> list[FxQuote]:
        """The newest rate GIFQ reported per (card currency, paying currency).

        GIFQ publishes no rate endpoint; every cross-currency order carries the
        `fx_fee` it was charged at. The newest `FX_PAGES` pages of orders are read.
        """
        found: dict[tuple[str, str], FxQuote] = {}
        with closing(self._order_pages(FX_PAGES)) as pages:
            for records, _last in pages:
                for record in records:
                    quote_ = fx_quote(record)
                    if quote_ is None:
                        continue
                    key = (quote_.source, quote_.paying)
                    known = found.get(key)
                    if known is None or _newer(quote_, known):
                        found[key] = quote_
        return list(found.values())

    def redemption(self, order_id: str) -> Redemption | None:
        """How one order is redeemed (`GET /api/orders/:id`); None when GIFQ has no such order."""
        response = self._api.get(f"/orders/{quote(order_id, safe='')}")
        if response.status_code == 404:
            return None
        if not response.is_success or not isinstance(response.data, Mapping):
            raise ProviderUnavailable(self._status_text("GET", "/orders/:id", response))
        return read_record("GIFQ", "/orders/:id", parse_redemption, response.data)

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
            if as_text(order.get("reference")) not in ("", key):
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
        refreshes = self._board_reads
        try:
            order = self._order_status(request_id)
        except AuthError:
            raise
        except ProviderUnavailable as exc:  # for the runner, a failed poll is just "not yet"
            raise OutcomeUnknown(exc.message) from None
        cached = self._board_reads == refreshes  # answered from the board, no request made
        # In the run's tail, a "pending" from the board's memory is worth asking again as
        # soon as the board may be read again: one list page then settles every order on it.
        # And a read answers the other orders' polls too: once everything is sent, the
        # runner asks them now rather than at their own times.
        idle = self.board.idle_read_in()
        if idle is None:
            # Orders are still being created: a poll due when the board's next read is
            # (its pages nearly full) makes that read, whatever the backoff says.
            again = self.board.read_due_in(self.refresh_seconds, page_size=self.page_limit)
        else:
            again = idle if cached else None
        news = not cached
        if order is None:
            return PollResult(
                kind="pending", from_cache=cached, ask_again_in=again, news_for_others=news
            )
        result = self._order_result(item, order)
        if result.status == "pending":
            return PollResult(
                kind="pending",
                provider_status=result.provider_status,
                from_cache=cached,
                ask_again_in=again,
                news_for_others=news,
            )
        self.board.settled(request_id)
        self._off_list.discard(request_id)
        return PollResult(
            kind="completed",
            items=(result,),
            provider_status=result.provider_status,
            news_for_others=news,
        )

    def lookup(
        self, key: str, items: Sequence[OrderItem], **hints: Unpack[LookupHints]
    ) -> SubmitResult | None:
        """Find the order an unanswered POST may have created, by its reference.

        Scans at most `lookup_pages` newest-first pages. None means it is not
        there: either it was never created, or it is older than the pages
        scanned; in both cases resending the same bytes is safe, because GIFQ
        answers a repeated reference with the existing order.
        """
        (item,) = items
        with closing(self._order_pages(self.lookup_pages)) as pages:
            for records, _last in pages:
                for record in records:
                    self.board.remember(record)
                    if as_text(record.get("reference")) == key:
                        return self._submit_result(record, item)
        return None

    def requests_in_progress(self, since: datetime) -> int:
        """None: an order is listed (with its reference) from the moment it exists."""
        return 0

    # ------------------------------------------------------------- internals

    def _submit_result(self, order: Record, item: OrderItem) -> SubmitResult:
        order_id = text_of(order.get("id"))
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
        if known is not None and as_text(known.get("status")) in FINAL_ORDER_STATUSES:
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
        """Read the newest orders until every order being waited for has been seen, and
        the newest one the last read saw (so the listed stretch stays unbroken)."""
        self._board_reads += 1
        # The orders this client created since the last read are on top of the list:
        # read down to them whatever `scan_pages` says (a page holds 20 of them, a
        # GET by id one).
        pages_deep = max(self.scan_pages, -(-self.board.depth() // self.page_limit))
        self.board.refreshing()
        waiting = self.board.waiting() - self._off_list
        awaited = set(waiting)
        last_newest = self.listed.newest
        not_final = 0
        try:
            with closing(self._order_pages(min(pages_deep, _MAX_SCAN_PAGES))) as pages:
                for records, _last in pages:
                    for record in records:
                        self.board.remember(record)
                        order_id = text_of(record.get("id"))
                        waiting.discard(order_id)
                        if order_id == last_newest:
                            last_newest = None
                        if order_id in awaited and as_text(record.get("status")) not in (
                            FINAL_ORDER_STATUSES
                        ):
                            not_final += 1
                            self.board.seen_not_final(order_id)
                    if not waiting and last_newest is None:
                        return
        finally:
            self.board.read_showed(not_final)
        self._off_list.update(waiting)  # older than the pages scanned: GET by id from now on

    def _order_pages(self, max_pages: int) -> Generator[tuple[list[Record], bool]]:
        """Pages of the order list from the top, as `_page_lists` yields them; when the
        read ends, however it ends, what it showed goes to the `listed` stretch."""
        read: list[Record] = []
        seen: set[str] = set()
        reached_end = False
        try:
            for records, last in self._page_lists("/orders", None, max_pages):
                for record in records:  # a page repeats the last of the one above when
                    order_id = text_of(record.get("id"))  # an order is created between them
                    if order_id not in seen:
                        seen.add(order_id)
                        read.append(record)
                reached_end = last
                yield records, last
        finally:
            self.listed.read(read, reached_end=reached_end)

    def _orders_from_top(self, start: datetime) -> list[ProviderOrder]:
        """Every order from the newest down to `start`, read page by page."""
        found: dict[str, ProviderOrder] = {}
        with closing(self._order_pages(_MAX_PAGES)) as pages:
            for records, _last in pages:
                for record in records:
                    order = read_record("GIFQ", "/orders", parse_provider_order, record)
                    if order.created_at and order.created_at < start:
                        return list(found.values())  # newest first (doc): the rest is older
                    found.setdefault(order.order_id, order)
        return list(found.values())

    def _listed_orders(self, start: datetime) -> list[ProviderOrder] | None:
        """Orders from the newest down to `start`, reading only what the `listed`
        stretch does not hold final; None when it cannot (then list everything)."""
        newest = self.listed.newest
        if newest is None:
            return None
        reached = False
        just_read: set[str] = set()  # as the provider shows them now: nothing to read again
        with closing(self._order_pages(TOP_PAGES)) as pages:
            for records, _last in pages:
                just_read.update(text_of(record.get("id")) for record in records)
                if newest in just_read:
                    reached = True
                    break
        if not reached:
            return None
        stale = [
            order_id
            for order_id, record in self.listed.unsettled()
            if order_id not in just_read and not _older(record, start)
        ]
        if len(stale) > REFETCH_MAX:
            return None
        for order_id in stale:
            response = self._api.get(f"/orders/{quote(order_id, safe='')}")
            if not response.is_success or not isinstance(response.data, Mapping):
                return None
            self.listed.update(response.data)
        records = self.listed.records()
        if not self.listed.bottom and records and not _older(records[-1], start):
            below = self._below(len(records), text_of(records[-1].get("id")), start)
            if below is None:
                return None
            records += below
        found: dict[str, ProviderOrder] = {}
        for record in records:
            order = read_record("GIFQ", "/orders", parse_provider_order, record)
            if order.created_at and order.created_at < start:
                break  # newest first (doc): the rest is older
            found.setdefault(order.order_id, order)
        return list(found.values())

    def _below(self, count: int, oldest_id: str, start: datetime) -> list[Record] | None:
        """The orders below the stretch (`count` orders down to `oldest_id` when it was
        read from the top) down to `start`; None when `oldest_id` is not where it should be."""
        first = (count - 1) // self.page_limit + 1  # its page, unless newer orders pushed it down
        found: list[Record] = []
        anchored = False
        with closing(self._page_lists("/orders", None, _MAX_PAGES, first=first)) as pages:
            for read, (records, _last) in enumerate(pages):
                if not anchored:
                    ids = [text_of(record.get("id")) for record in records]
                    if oldest_id not in ids:
                        if read >= 1:
                            return None  # pushed down more than a page: list everything
                        continue
                    anchored = True
                    records = records[ids.index(oldest_id) + 1 :]
                for record in records:
                    found.append(record)
                    if _older(record, start):
                        return found
        return found if anchored else None

    def _fetch_order(self, order_id: str) -> Record:
        self._board_reads += 1
        order = self._get_by_id("orders", order_id, "order")
        self.board.remember(order)
        return order
