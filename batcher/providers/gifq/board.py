"""What the newest-first GIFQ order list shows: its order, and the board that answers polls."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from batcher.providers.gifq.parse import FINAL_ORDER_STATUSES, PAGE_LIMIT, text_of
from batcher.providers.wire import Record, as_text

_MAX_BOARD_ENTRIES = 20_000
#: Older orders a refresh's first page still shows, for those pending at the last one.
_PAGE_SLACK = 4
#: How soon the order list is read again when no order was created since the last read.
_IDLE_REFRESH = 0.5
Clock = Callable[[], float]


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
        order_id = text_of(record.get("id"))
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
            if as_text((self._orders.get(order_id) or {}).get("status")) not in FINAL_ORDER_STATUSES
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
