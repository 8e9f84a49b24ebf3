"""GIFQ payouts mode: up to 1,000 recipients per `POST /api/payout-orders`."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Literal, Unpack

import httpx

from batcher.config import ProviderSettings
from batcher.core.errors import AuthError, ProviderUnavailable, UsageError
from batcher.core.models import Product
from batcher.core.money import to_decimal
from batcher.providers.base import (
    LookupHints,
    OrderItem,
    OutcomeUnknown,
    PollResult,
    ProviderOptions,
    ProviderOrder,
    Redemption,
    SubmitResult,
)
from batcher.providers.gifq.board import Clock
from batcher.providers.gifq.common import GifqBase
from batcher.providers.gifq.parse import (
    check_reference,
    created_before,
    map_payouts,
    parse_payout_order_line,
    payout_key,
    payout_match_key,
    payout_order_body,
    text_of,
)
from batcher.providers.wire import Record, as_text, aware
from batcher.transport.http import (
    canonical_json,
)
from batcher.transport.throttle import RateLimiter

log = logging.getLogger(__name__)

#: Pages of payout orders `lookup` scans (4,000 payout orders, up to 4M recipients).
PAYOUT_LOOKUP_PAGES = 200
#: How far GIFQ's clock may be behind ours when comparing creation times.
CLOCK_SKEW = timedelta(minutes=10)
_PENDING_PAYOUT_ORDER_STATUSES = {"queued", "processing"}
#: How long a lookup waits for a look-alike payout order to list its payouts.
SETTLE_WAIT_SECONDS = 120.0


class GifqPayouts(GifqBase):
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
        settle_wait: float = SETTLE_WAIT_SECONDS,
        sleep: Callable[[float], object] = time.sleep,
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
        self.settle_wait = settle_wait
        self._sleep = sleep
        self.stop = options.stop
        self._claimed: set[str] = set()  # payout orders this process already tied to a chunk
        self._ledger_claims: frozenset[str] = frozenset()  # ... and those the ledger ties
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
        status = as_text(campaign.get("status")) or "unknown"
        if status != "active":
            title = as_text(campaign.get("title"))
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
            found = self.lookup(
                key, items, sent_after=self._unanswered[key], claimed=self._ledger_claims
            )
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
                text_of(response.data.get("id")) if isinstance(response.data, Mapping) else ""
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
        self, key: str, items: Sequence[OrderItem], **hints: Unpack[LookupHints]
    ) -> SubmitResult | None:
        """Find the payout order an unanswered POST may have created, without resending.

        A candidate is not failed, not in `claimed` (tied to another chunk in the
        ledger) nor claimed by this process, matches campaign, wallet currency,
        recipient count and total, was created after `sent_after` (less `CLOCK_SKEW`)
        when the caller knows when the chunk was first sent, and pays exactly these
        recipients. Recipients are compared whatever the status: a candidate still
        queued or processing lists no payouts yet, so the lookup waits up to
        `settle_wait` seconds for it to finish, and otherwise stops rather than take a
        look-alike (two chunks of equal count and total) for this chunk's order.

        - one candidate: that is the chunk's payout order;
        - none: it was never created, or it failed and was refunded; either way a
          resend pays each recipient once, so None (resend);
        - several, an unsettled look-alike, or a list too long to scan to its end:
          batcher cannot tell, and stops rather than guess or resend.
        """
        sent_after, claimed = hints.get("sent_after"), hints.get("claimed", frozenset())
        listed, complete = self._scan("/payout-orders", self.lookup_pages)
        oldest = aware(sent_after) - CLOCK_SKEW if sent_after else None
        self._ledger_claims = claimed  # remembered for this run's in-process resends
        taken = claimed | self._claimed
        shaped = [
            record
            for record in listed
            if as_text(record.get("status")) != "failed"
            and text_of(record.get("id")) not in taken
            and not created_before(record, oldest)
            and self._same_shape(record, items)
        ]
        live = [record for record in map(self._settled, shaped) if self._is_match(record, items)]
        if len(live) > 1:
            ids = ", ".join(sorted(text_of(record.get("id")) for record in live))
            raise ProviderUnavailable(
                f"an unanswered payout order matches {len(live)} GIFQ payout orders "
                f"({ids}); batcher will not guess or resend",
                hint="check them in GIFQ; the chunk stays unresolved until then",
            )
        if live:
            order_id = text_of(live[0].get("id"))
            self._claimed.add(order_id)
            return SubmitResult(kind="accepted", request_id=order_id)
        if not complete:
            raise ProviderUnavailable(
                f"cannot tell whether an unanswered payout order was created: GIFQ lists "
                f"more than {self.lookup_pages * self.page_limit} payout orders",
                hint="check GIFQ for it; the chunk stays unresolved until then",
            )
        return None

    def requests_in_progress(self, since: datetime) -> int:
        """Payout orders still queued or processing: their payouts are not listed yet."""
        oldest = aware(since)
        listed, _complete = self._scan("/payout-orders", self.lookup_pages)
        return sum(
            1
            for record in listed
            if as_text(record.get("status")) in _PENDING_PAYOUT_ORDER_STATUSES
            and not created_before(record, oldest)
        )

    # ------------------------------------------------------------- internals

    def _campaign(self) -> Record | None:
        for record in self._pages("/campaigns"):
            if text_of(record.get("id")) == self.campaign_id:
                return record
        return None

    def _poll(self, request_id: str, items: Sequence[OrderItem]) -> PollResult:
        order = self._get_by_id("payout-orders", request_id, "payout order")
        status = as_text(order.get("status"))
        if status == "failed":
            reason = self._api.scrub(as_text(order.get("failure_reason"))) or "payout order failed"
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
            if text_of(payout.get("payout_order_id")) in ("", request_id)
        ]
        wallet = as_text(order.get("wallet_currency")) or items[0].currency
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
            and as_text(record.get("wallet_currency")).upper() == items[0].currency.upper()
            and count == len(items)
            and total == sum((item.amount for item in items), Decimal(0))
        )

    def _settled(self, record: Record) -> Record:
        """The payout order once it has left queued/processing (its payouts listed),
        read again every second for up to `settle_wait` seconds; as it is otherwise.

        A stop request (Ctrl-C, SIGTERM) ends the wait within a second: the chunk stays
        unknown, and the next run looks it up again."""
        order_id = text_of(record.get("id"))
        waited = 0.0
        while as_text(record.get("status")) in _PENDING_PAYOUT_ORDER_STATUSES:
            if waited >= self.settle_wait:
                raise ProviderUnavailable(
                    f"payout order {order_id} looks like this chunk's but is still "
                    f"{as_text(record.get('status'))}, so its recipients cannot be compared yet",
                    hint="rerun in a few minutes; nothing is resent until it can be compared",
                )
            if self.stop is not None and self.stop.wait(1.0):
                raise OutcomeUnknown(f"stopped while waiting for payout order {order_id} to settle")
            if self.stop is None:
                self._sleep(1.0)
            waited += 1.0
            try:
                record = self._get_by_id("payout-orders", order_id, "payout order")
            except OutcomeUnknown:
                continue
        return record

    def _is_match(self, record: Record, items: Sequence[OrderItem]) -> bool:
        """A settled, live payout order that pays exactly these recipients."""
        if as_text(record.get("status")) == "failed":
            return False  # refunded: a resend pays each recipient once
        order_id = text_of(record.get("id"))
        payouts = list(self._pages("/payouts", {"payout_order_id": order_id}))
        wanted = sorted(payout_match_key(i.recipient_email, i.amount, i.currency) for i in items)
        listed = sorted(payout_key(record) for record in payouts)
        return wanted == listed
