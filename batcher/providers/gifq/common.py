"""What both GIFQ modes share: construction, reads, paging and rejections."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from datetime import datetime
from typing import TypeVar
from urllib.parse import quote

import httpx

from batcher.config import ProviderSettings
from batcher.core.errors import ProviderUnavailable
from batcher.core.models import AccountInfo, Balance, Campaign, WalletTransaction
from batcher.providers.base import (
    ApiBackedProvider,
    OutcomeUnknown,
    ProviderOptions,
    SubmitResult,
)
from batcher.providers.gifq.board import Clock, ListOrder
from batcher.providers.gifq.parse import (
    PAGE_LIMIT,
    is_last_page,
    is_pagination_error,
    page_params,
    parse_balance,
    parse_transaction,
    rejection_code,
    shortfall,
    text_of,
)
from batcher.providers.wire import Record, as_text, aware, read_record, records_in
from batcher.transport.http import (
    ApiClient,
    ApiResponse,
    Params,
    provider_error_text,
)
from batcher.transport.throttle import DocumentedWindow, RateLimiter, limiter_for

#: Pages `lookup` scans for a reference (100 orders) before it says "not found".
LOOKUP_PAGES = 5
#: GIFQ's documented limit (docs/providers/gifq.md): 10 requests a second per token,
#: counted in fixed one-second windows, with no header saying where a window starts.
#: The limiter sends a window's 10 back to back and the 11th a second after the first
#: one's answer came back, which no window can see as an 11th (transport/throttle.py).
RATE_WINDOW = DocumentedWindow(limit=10, seconds=1.0)
#: The even pace (a share of the profile's 10/s) used only for a few seconds after a
#: 429, should one ever come: the window log above is what paces normally.
PACE_MARGIN = 0.90
_MAX_PAGES = 10_000  # a guard against a list that never ends

T = TypeVar("T")


#: GIFQ's production API host; every other host (its sandbox, a local one) is a sandbox
PRODUCTION_HOST = "api.gifq.com"


def environment_of(base_url: str) -> str:
    """'production' or 'sandbox': what the URL points at, not how it is spelled."""
    host = (httpx.URL(base_url.strip()).host or "").lower().rstrip(".")
    return "production" if host == PRODUCTION_HOST else "sandbox"


def account_fingerprint(base_url: str, token: str) -> str:
    """A stable account id that reveals nothing about the token.

    GIFQ has no account endpoint, so the id is derived from the token and the
    environment it belongs to (production or sandbox), never from the URL's
    spelling: `localhost` and `127.0.0.1`, a trailing slash or an upper-case host
    are one account, so a rerun spelled differently re-plans the same references.
    A rotated token counts as another account (the ledger refuses to mix them).
    """
    environment = environment_of(base_url)
    digest = hashlib.sha256(f"gifq\x1f{environment}\x1f{token}".encode()).hexdigest()
    return f"gifq-{digest[:16]}"


def former_account_fingerprint(base_url: str, token: str) -> str:
    """The id batcher before ledger schema 2 recorded (URL text plus token), so batches
    begun then keep their id and their chunk keys."""
    digest = hashlib.sha256(f"gifq\x1f{base_url.rstrip('/')}\x1f{token}".encode()).hexdigest()
    return f"gifq-{digest[:16]}"


class GifqBase(ApiBackedProvider):
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
                documented_window=RATE_WINDOW,
                shared=options.shared_pace if options else None,
                base_url=settings.base_url,
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
        self._former_account_id = former_account_fingerprint(settings.base_url, token)
        self._environment = environment_of(settings.base_url)
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
            extra={
                "host": self._api.host,
                "wallets": currencies,
                "environment": self._environment,
                "former_account_ids": self._former_account_id,
            },
        )

    def balances(self) -> list[Balance]:
        data = self._get("/balances").data
        if not isinstance(data, list):
            raise self._bad_shape("/balances")
        return [
            read_record("GIFQ", "/balances", parse_balance, record) for record in records_in(data)
        ]

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
        start = aware(since) if since else None
        end = aware(until) if until else None
        order = ListOrder()
        found: list[T] = []
        for records, _last in self._page_lists(path, None, _MAX_PAGES):
            page = [read_record("GIFQ", path, parse, record) for record in records]
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
        self, path: str, params: Params | None, max_pages: int, *, first: int = 1
    ) -> Generator[tuple[list[Record], bool]]:
        """Each page's records (from page `first` on) and whether it is the last page,
        fetched as consumed."""
        for page in range(first, first + max_pages):
            response = self._api.get(path, params=page_params(page, self.page_limit, params))
            if response.status_code == 400 and is_pagination_error(response.data):
                yield [], True  # past the last page (an empty list has no page 1)
                return
            if not response.is_success:
                raise ProviderUnavailable(self._status_text("GET", path, response))
            if not isinstance(response.data, list):
                raise self._bad_shape(path)
            last = is_last_page(page, len(response.data), self.page_limit, response.headers)
            yield list(records_in(response.data)), last
            if last:
                return

    def campaigns(self) -> list[Campaign]:
        """The account's payout campaigns (`batcher campaigns`, and the payouts preflight)."""
        return [
            Campaign(
                campaign_id=text_of(record.get("id")),
                title=as_text(record.get("title")),
                status=as_text(record.get("status")),
                brands=tuple(
                    text_of(b.get("id") if isinstance(b, Mapping) else b)
                    for b in record.get("brands") or ()
                ),
            )
            for record in self._pages("/campaigns")
        ]

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

    def _get_by_id(self, collection: str, record_id: str, what: str) -> Record:
        """`GET /<collection>/:id`; anything but the record leaves the outcome unknown."""
        response = self._api.get(f"/{collection}/{quote(record_id, safe='')}")
        if response.status_code == 404:
            raise OutcomeUnknown(f"{what} {record_id} is unknown to GIFQ (HTTP 404)")
        if not response.is_success or not isinstance(response.data, Mapping):
            raise OutcomeUnknown(self._status_text("GET", f"/{collection}/:id", response))
        return response.data

    def _bad_shape(self, path: str) -> ProviderUnavailable:
        return ProviderUnavailable(f"{self._api.host}: GET {path} answered in an unexpected shape")

    def _rejection(self, response: ApiResponse, currency: str) -> SubmitResult:
        """A definite 4xx on a POST: nothing was created."""
        data = response.data if isinstance(response.data, Mapping) else {}
        message = self._api.scrub(provider_error_text(data)) or f"HTTP {response.status_code}"
        request_id = as_text(data.get("request_id")) or response.headers.get("x-request-id") or None
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
