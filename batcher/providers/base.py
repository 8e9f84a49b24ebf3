"""The small interface the pipeline speaks to. One implementation per provider.

The runner never names a provider: it asks the provider to encode a chunk of
items into exact bytes (stored in the ledger before sending, so a resend is
byte-identical), to submit those bytes under an idempotency key, to poll an
order request, and to report catalog, balances, transactions and orders.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Literal, Protocol, TypedDict, Unpack, runtime_checkable

from batcher.core.errors import OutcomeUnknown
from batcher.core.models import AccountInfo, Balance, Product, WalletTransaction
from batcher.transport.http import ApiClient
from batcher.transport.throttle import RateLimiter, SharedPace

__all__ = ["OutcomeUnknown"]


@dataclass(frozen=True)
class OrderFields:
    """What defines one gift-card order: which card, for how much, and for whom."""

    recipient_email: str
    product_code: str
    amount: Decimal
    currency: str
    recipient_name: str = ""
    message: str = ""
    country: str = ""
    payment_currency: str = ""


@dataclass(frozen=True, kw_only=True)
class OrderItem(OrderFields):
    """One row's order, as the runner hands it to a provider.

    `row_key` and `merchant` are keyword-only: they follow the order fields' defaults.
    """

    row_key: str
    merchant: str


ItemStatus = Literal["succeeded", "failed", "pending"]


@dataclass(frozen=True)
class ItemResult:
    """The provider's answer for one item, already mapped back to its row."""

    row_key: str
    status: ItemStatus
    order_id: str | None = None
    transaction_id: str | None = None
    cost: Decimal | None = None  # what the wallet was charged, in `cost_currency`
    cost_currency: str | None = None
    # Bearer credentials: never logged, masked in reports, and kept out of repr().
    voucher_code: str | None = field(default=None, repr=False)
    redemption_url: str | None = field(default=None, repr=False)
    provider_status: str = ""
    error_code: str = ""
    error_message: str = ""
    request_id: str | None = None  # provider's request id for a failure (GIFQ 422)
    extra: dict[str, str] = field(default_factory=dict)


SubmitKind = Literal["accepted", "completed", "rejected", "insufficient_funds"]


@dataclass(frozen=True)
class SubmitResult:
    """A definite answer to a submission.

    - accepted: an order request exists (`request_id`); poll it.
    - completed: results are known now (`items`: one per item, none missing).
    - rejected: a definite 4xx; nothing was created; the chunk's rows are released.
    - insufficient_funds: nothing was created; stop sending in `currency`.
    """

    kind: SubmitKind
    request_id: str | None = None
    items: tuple[ItemResult, ...] = ()
    error_code: str = ""
    error_message: str = ""
    currency: str | None = None
    required: Decimal | None = None
    available: Decimal | None = None
    provider_request_id: str | None = None  # e.g. GIFQ's 422 request_id


PollKind = Literal["pending", "completed", "failed"]


@dataclass(frozen=True)
class PollResult:
    kind: PollKind
    items: tuple[ItemResult, ...] = ()
    error_code: str = ""
    error_message: str = ""
    provider_status: str = ""
    #: "pending" read from what the client already held, without asking the provider:
    #: the next poll costs the provider nothing, so the runner does not back off
    from_cache: bool = False
    #: "pending" from a client that knows when it may next learn more (GIFQ's order board:
    #: when its next list read is due): poll again no later than this many seconds
    ask_again_in: float | None = None
    #: this poll's request brought news that other requests' polls can read from the
    #: client's memory (GIFQ's order board): once everything is sent, poll them now
    news_for_others: bool = False


@dataclass(frozen=True)
class ProviderOrder:
    """An order as the provider lists it, for three-way reconciliation."""

    order_id: str
    product_code: str
    currency: str
    face_value: Decimal
    status: str
    created_at: datetime | None
    recipient_email: str = ""
    recipient_name: str = ""
    transaction_id: str | None = None
    reference: str | None = None
    cost: Decimal | None = None


@dataclass(frozen=True)
class Redemption:
    """How a recipient redeems one order: a bearer credential, for `--reveal-codes` only.

    Never logged, never stored in the ledger, and kept out of repr().
    """

    order_id: str
    voucher_code: str | None = field(default=None, repr=False)
    redemption_url: str | None = field(default=None, repr=False)


class IncompleteResult(OutcomeUnknown):
    """The provider answered, but its answer does not account for every item.

    `items` holds only the results that are certain (say, orders matched exactly to
    their rows); every other item's outcome is unknown, exactly as for
    OutcomeUnknown, and is resolved by resending the same key and bytes.
    """

    def __init__(self, reason: str, *, items: Sequence[ItemResult] = ()) -> None:
        super().__init__(reason)
        self.items = tuple(items)


class LookupHints(TypedDict, total=False):
    """What the ledger knows of an unanswered chunk, for `Provider.lookup`."""

    sent_after: datetime | None  # when the chunk was first sent
    claimed: frozenset[str]  # provider order ids the ledger ties to other chunks


@dataclass(frozen=True)
class ProviderOptions:
    """How the run uses the provider: ordinary orders, or payouts (recipients choose)."""

    mode: Literal["orders", "payouts"] = "orders"
    campaign_id: str | None = None
    expires_in_days: int | None = None
    #: the run's stop flag (Ctrl-C, SIGTERM): a wait inside the provider ends when it is set
    stop: threading.Event | None = field(default=None, compare=False)
    #: the request schedule shared with other processes on the same key (a PostgreSQL
    #: ledger's `rate_slots`); None: this process's own limiter only
    shared_pace: SharedPace | None = field(default=None, compare=False)


@runtime_checkable
class Provider(Protocol):
    name: str
    #: sheet columns this provider/mode needs (see batcher.intake.read.BASE_REQUIRED)
    required_fields: frozenset[str]
    #: False when rows are not tied to catalog products (payouts)
    validates_catalog: bool
    #: the most items one submission may carry (bulk 100, single 1, payout 1000)
    submit_limit: int
    #: "header" when the key travels as Idempotency-Key, "body" when it is a reference
    idempotency_carrier: Literal["header", "body"]

    def account(self) -> AccountInfo: ...
    def preflight(self) -> None:
        """Checks before validation (e.g. the payout campaign is active). Raises UsageError."""
        ...

    def catalog(self) -> list[Product]: ...
    def balances(self) -> list[Balance]: ...
    def transactions(self, since: datetime | None = None) -> list[WalletTransaction]: ...
    def orders(self, since: datetime, until: datetime | None = None) -> list[ProviderOrder]: ...

    def redemption(self, order_id: str) -> Redemption | None:
        """The voucher code and redemption URL of one order; None when there is no such order.

        Only `batcher report --reveal-codes` asks for these: they are bearer credentials.
        """
        ...

    def encode(self, key: str, items: Sequence[OrderItem]) -> bytes:
        """The exact request body for these items. Pure and deterministic."""
        ...

    def submit(self, key: str, payload: bytes, items: Sequence[OrderItem]) -> SubmitResult:
        """Send `payload` under `key`. Raises OutcomeUnknown when no definite answer came."""
        ...

    def poll(self, request_id: str, items: Sequence[OrderItem]) -> PollResult:
        """Check an accepted order request. Raises OutcomeUnknown on transport trouble."""
        ...

    def lookup(
        self, key: str, items: Sequence[OrderItem], **hints: Unpack[LookupHints]
    ) -> SubmitResult | None:
        """Find what an earlier, unanswered submission did, without sending it again.

        `sent_after` is when the chunk was first sent, so a provider that must match
        by content (GIFQ payouts) never mistakes an older, identical order for it.
        `claimed` are the provider order ids the ledger already ties to other chunks:
        one of them is never this chunk's answer.

        None means the provider cannot tell (or nothing was created) and the
        caller must resend the same key and bytes, which the provider deduplicates.
        """
        ...

    def requests_in_progress(self, since: datetime) -> int:
        """How many order requests since `since` the provider is still processing, whose
        orders `orders()` cannot list yet. Recovery waits for 0 before it trusts the list."""
        ...

    def close(self) -> None: ...


class ApiBackedProvider:
    """What every provider client built on `ApiClient` shares: its limiter and closing."""

    _api: ApiClient

    @property
    def limiter(self) -> RateLimiter:
        return self._api.limiter

    def close(self) -> None:
        self._api.close()
