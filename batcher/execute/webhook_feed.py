"""Settling order requests from received webhook events instead of polls.

`batcher listen` writes verified events into the ledger's database; the runner
asks this feed, at most every `check_interval` seconds, which of its accepted
order requests already have a terminal event, and settles them with the
provider's own poll parser, so an event and a poll give the same result.
Polls remain, as a slow fallback: the first one waits for the provider's
typical completion time plus `poll_margin` (time for a lost delivery's first
retry), then they continue as without webhooks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from batcher.config import WebhookSettings
from batcher.ledger.events import WebhookEvents
from batcher.ledger.location import LedgerLocation
from batcher.providers.base import OrderItem, PollResult
from batcher.providers.webhooks import SettlesFromEvents

DEFAULT_CHECK_INTERVAL = 0.05  # seconds: a read of an indexed table, cheap next to a request


@dataclass
class EventFeed:
    """The received webhook events, read for the order requests they already settle."""

    events: WebhookEvents
    parser: SettlesFromEvents
    _: KW_ONLY
    poll_margin: float
    check_interval: float = DEFAULT_CHECK_INTERVAL
    clock: Callable[[], float] = time.monotonic
    _next_check: float = field(default=0.0, init=False)
    _unreadable: set[str] = field(default_factory=set, init=False)

    def first_poll_delay(self, typical_completion: float) -> float:
        return typical_completion + self.poll_margin

    def arrived(self, request_ids: Collection[str]) -> dict[str, Mapping[str, Any]]:
        """Terminal event payloads for these requests; empty between checks."""
        now = self.clock()
        if not request_ids or now < self._next_check:
            return {}
        self._next_check = now + self.check_interval
        wanted = [r for r in request_ids if r not in self._unreadable]
        return dict(self.events.terminal_payloads(wanted))

    def result(self, payload: Mapping[str, Any], items: Sequence[OrderItem]) -> PollResult:
        """The same result a poll would give (raises as a poll would, too)."""
        return self.parser.order_request_result(payload, items)

    def report_orphans(self, say: Callable[[str], None]) -> None:
        """One line when events arrived for order requests no batch in this ledger sent."""
        count = self.events.orphan_count()
        if count:
            say(
                f"{count} webhook event(s) name order requests no batch sent (orphans);"
                " see `batcher webhooks events --orphans`"
            )

    def ignore(self, request_id: str) -> None:
        """An event that could not be read: leave this request to the polls."""
        self._unreadable.add(request_id)


def open_feed(
    provider: object,
    ledger: LedgerLocation,
    settings: WebhookSettings | None,
    say: Callable[[str], None],
) -> EventFeed | None:
    """The feed for a run, when [webhooks] is enabled and the provider's events can settle."""
    if settings is None or not settings.enabled:
        return None
    if not isinstance(provider, SettlesFromEvents):
        say("webhooks are enabled, but this provider's events cannot settle orders; polling")
        return None
    return EventFeed(WebhookEvents(ledger), provider, poll_margin=settings.poll_margin_seconds)
