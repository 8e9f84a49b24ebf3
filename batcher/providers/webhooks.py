"""Provider-neutral webhook vocabulary: subscriptions and verified events
(`webhook_clients` maps a provider name to its client and event reader).

A verified delivery becomes `EventEvidence`: what the ledger keeps (the event,
the order request id, the order ids) and the payload with every voucher code
cut to its last 4 characters and every redemption URL removed, because both
are bearer credentials and the ledger must never hold one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypedDict, Unpack, runtime_checkable

from batcher.core.secrets import SecretStr
from batcher.providers.base import OrderItem, PollResult

#: keys whose values are bearer credentials in any provider's event payload
_REDACTED_KEYS = frozenset({"redemptionUrl", "redemptionURL", "pin", "voucherPin"})
_VOUCHER_KEYS = frozenset({"voucherCode"})


@dataclass(frozen=True)
class Subscription:
    id: str
    url: str
    events: tuple[str, ...]
    description: str | None = None
    active: bool = True
    #: only on creation; the provider shows it once
    secret: SecretStr | None = None


@dataclass(frozen=True)
class TestDelivery:
    ok: bool
    status_code: int | None
    error: str | None


@dataclass(frozen=True)
class EventEvidence:
    """A verified delivery, reduced to what may be kept."""

    event: str
    request_id: str | None
    status: str | None
    order_ids: tuple[str, ...]
    payload: str  # redacted, canonical JSON
    terminal: bool  # the order request has its final outcome


class SubscriptionChanges(TypedDict, total=False):
    """What `WebhookClient.update` may change: an absent or None field stays as it is."""

    url: str | None
    events: Sequence[str] | None
    description: str | None
    active: bool | None


class WebhookClient(Protocol):
    """Subscription management at a provider."""

    valid_events: tuple[str, ...]
    default_events: tuple[str, ...]

    def subscribe(
        self, url: str, events: Sequence[str], description: str | None = None
    ) -> Subscription: ...
    def subscriptions(self) -> list[Subscription]: ...
    def update(self, webhook_id: str, **changes: Unpack[SubscriptionChanges]) -> Subscription: ...
    def delete(self, webhook_id: str) -> None: ...
    def test(self, webhook_id: str) -> TestDelivery: ...
    def close(self) -> None: ...


@runtime_checkable
class SettlesFromEvents(Protocol):
    """A provider whose webhook events carry an order request's final result."""

    def order_request_result(
        self, data: Mapping[str, Any], items: Sequence[OrderItem]
    ) -> PollResult: ...


class EventReader(Protocol):
    """Turns a verified delivery body into evidence; ValueError when unreadable."""

    def __call__(self, body: bytes) -> EventEvidence: ...


def last4(code: str) -> str:
    """The same reduction the ledger applies to voucher codes everywhere."""
    return re.sub(r"[^0-9A-Za-z]", "", code)[-4:]


def redact(value: Any) -> Any:
    """`value` (parsed JSON) without bearer credentials: codes cut to 4, URLs removed."""
    if isinstance(value, list):
        return [redact(item) for item in value]
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in _REDACTED_KEYS:
                continue
            if key in _VOUCHER_KEYS and isinstance(item, str):
                out[key] = last4(item)
            else:
                out[key] = redact(item)
        return out
    return value
