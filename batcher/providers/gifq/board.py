"""What the newest-first GIFQ order list shows: its order, and the board that answers polls."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from batcher.providers.gifq.parse import FINAL_ORDER_STATUSES, PAGE_LIMIT, text_of
from batcher.providers.wire import Record, as_text

_MAX_BOARD_ENTRIES = 20_000
#: How far short of its last page's end a read may stop and still count as full.
_PAGE_SLACK = 3
#: Pages a read of the board covers while orders are being created fast: each read
#: shows again what the last one showed not final, once per read, not once per page.
_READ_PAGES = 2
#: How soon the order list is read again when no order was created since the last read.
_IDLE_REFRESH = 0.5
#: The run's tail starts sooner when the orders were seen to settle fast: once no order
#: was created for this long at least, and for longer than any was seen not final
#: (by a quarter, and 50 ms), up to `_IDLE_REFRESH`.
_MIN_IDLE = 0.25
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
        self._carried = 1  # awaited orders the last read showed not final
        self._last_created_at: float | None = None
        self._born: dict[str, float] = {}  # awaited orders this client created: when
        self._slowest: float | None = None  # the oldest an order of ours was seen not final

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
        self._born.pop(order_id, None)
        self._orders.pop(order_id, None)

    def waiting(self) -> set[str]:
        """Orders a poll awaits whose final status the board does not know yet."""
        return {
            order_id
            for order_id in self._waiting
            if as_text((self._orders.get(order_id) or {}).get("status")) not in FINAL_ORDER_STATUSES
        }

    def created(self, record: Record) -> None:
        """An order this client just created: it tops the newest-first list, and a poll
        will wait for it (so a read looks for it before that poll comes)."""
        self.remember(record)
        order_id = text_of(record.get("id"))
        self.watch(order_id)
        self._created_since_refresh += 1
        self._last_created_at = self._clock()
        if order_id and len(self._born) < self._max_entries:
            self._born[order_id] = self._last_created_at

    def seen_not_final(self, order_id: str) -> None:
        """A read showed this order (one this client created) not final yet."""
        born = self._born.get(order_id)
        if born is not None:
            age = self._clock() - born
            self._slowest = age if self._slowest is None else max(self._slowest, age)

    def tail_age(self, idle_age: float = _IDLE_REFRESH) -> float:
        """How long no order must have been created for a run's tail to begin: `idle_age`,
        or less once orders were seen to settle sooner (`_MIN_IDLE` at the least)."""
        if self._slowest is None:
            return idle_age
        return min(idle_age, max(_MIN_IDLE, self._slowest * 1.25 + 0.05))

    def stale(
        self, max_age: float, *, page_size: int = PAGE_LIMIT, idle_age: float = _IDLE_REFRESH
    ) -> bool:
        """Time to read the list again?

        A read goes down as deep as the orders created since the last one, plus
        those that read showed not final (or at least the newest it showed, so the
        listed stretch stays unbroken): its `depth`. Each page costs a request
        whether it is full or not, and every read shows again what the last one
        showed not final, so:

        - while orders are being created fast enough to fill a page before
          `max_age`, read `_READ_PAGES` pages (or more) when the last of them
          would be nearly full (`depth` within `_PAGE_SLACK` of its end): 38 to
          40 orders on two pages, never 21 on two; and after twice `max_age` at
          the latest (`read_due_in` says when to ask);
        - fewer than a page's worth: after `max_age`;
        - no order created for `idle_age` (the tail of a run, or a run that only
          polls): after `idle_age`, since a page then costs no more than one GET
          by id and may answer many polls.
        """
        if self._refreshed_at is None:
            return True
        now = self._clock()
        age = now - self._refreshed_at
        if self._idle(now, idle_age):
            return age >= self.tail_age(idle_age)
        depth = self.depth()
        if depth <= page_size - _PAGE_SLACK:
            return age >= max_age
        full = depth >= _READ_PAGES * page_size - _PAGE_SLACK and -depth % page_size < _PAGE_SLACK
        return full or age >= 2 * max_age

    def read_due_in(
        self, max_age: float, *, page_size: int = PAGE_LIMIT, idle_age: float = _IDLE_REFRESH
    ) -> float | None:
        """While orders are being created: about when `stale` will next say yes (the
        depth it waits for, at the pace orders were created since the last read);
        None when it cannot tell or it says yes already."""
        now = self._clock()
        if self._refreshed_at is None or self._idle(now, idle_age):
            return None
        age, depth = now - self._refreshed_at, self.depth()
        if self._created_since_refresh == 0 or age <= 0 or self.stale(max_age, page_size=page_size):
            return None
        rate = self._created_since_refresh / age
        # less than a page's worth is read at max_age; more, at twice that at the latest
        deadline = max_age if depth <= page_size - _PAGE_SLACK else 2 * max_age
        target = max(_READ_PAGES * page_size, -(-depth // page_size) * page_size) - 1
        return max(0.0, min((target - depth) / rate, deadline - age))

    def _idle(self, now: float, idle_age: float) -> bool:
        created = self._last_created_at
        return created is None or now - created >= self.tail_age(idle_age)

    def depth(self) -> int:
        """How far down the next read must go: the orders created since the last read,
        and below them those it showed not final (at least one: its newest)."""
        return self._created_since_refresh + max(1, self._carried)

    def read_showed(self, not_final: int) -> None:
        """The last read showed `not_final` of the awaited orders not final yet."""
        self._carried = not_final

    def idle_read_in(self, idle_age: float = _IDLE_REFRESH) -> float | None:
        """Once no order has been created for `idle_age` (the run's tail): seconds until
        `stale` lets the list be read again; None while orders are still being created."""
        now = self._clock()
        if not self._idle(now, idle_age):
            return None
        if self._refreshed_at is None:
            return 0.0
        return max(0.0, self._refreshed_at + self.tail_age(idle_age) - now)

    def refreshing(self) -> None:
        self._refreshed_at = self._clock()
        self._created_since_refresh = 0

    def __len__(self) -> int:
        return len(self._orders)


#: Orders a listed stretch keeps; past it the oldest are dropped (and read again if needed).
_MAX_STRETCH_ENTRIES = 20_000


class ListedStretch:
    """The unbroken top of the newest-first order list, as this client's reads showed it.

    GIFQ lists orders newest first, a new order on top, and never removes one
    (docs/providers/gifq.md), so a read from page 1 down is one unbroken stretch of
    the list, and a later read that reaches the newest order of the stretch
    continues it: the orders between are exactly those the later read showed above
    it. A later read that does not reach it starts the stretch again. `bottom` says
    the stretch reaches the end of the list (a read got to its last page).

    Each order keeps the last record a read (or a fetch by id) showed, without its
    redemption details. The end-of-run report lists from it what it already knows:
    it reads only the orders above it, those not yet final in it, and those below it.
    """

    def __init__(self, *, max_entries: int = _MAX_STRETCH_ENTRIES) -> None:
        self._max_entries = max_entries
        self._ids: list[str] = []  # oldest first, so newer orders are appended
        self._records: dict[str, Record] = {}
        self.bottom = False

    @property
    def newest(self) -> str | None:
        return self._ids[-1] if self._ids else None

    def read(self, records: Sequence[Record], *, reached_end: bool) -> None:
        """One read from page 1 down (newest first, each order once)."""
        ids = [text_of(record.get("id")) for record in records]
        if "" in ids:
            self._restart([], [], reached_end=False)  # an order without an id: trust nothing
            return
        newest = self.newest
        at = ids.index(newest) if newest is not None and newest in ids else None
        if at is None or not self._continues(ids[at:]):
            self._restart(ids, records, reached_end=reached_end)
            return
        deeper = ids[at + len(self._ids) :]  # the read went on below the stretch: it grows down
        self._ids[:0] = reversed(deeper)
        self._ids.extend(reversed(ids[:at]))
        self._keep(ids, records)
        self.bottom |= reached_end
        overflow = len(self._ids) - self._max_entries
        if overflow > 0:
            for order_id in self._ids[:overflow]:
                self._records.pop(order_id, None)
            del self._ids[:overflow]
            self.bottom = False

    def update(self, record: Record) -> None:
        """A fresher record of an order in the stretch (a fetch by id)."""
        order_id = text_of(record.get("id"))
        if order_id in self._records:
            self._keep([order_id], [record])

    def records(self) -> list[Record]:
        """The stretch, newest first."""
        return [self._records[order_id] for order_id in reversed(self._ids)]

    def unsettled(self) -> list[tuple[str, Record]]:
        """Orders whose last record in the stretch was not final yet, with that record."""
        return [
            (order_id, record)
            for order_id in self._ids
            if as_text((record := self._records[order_id]).get("status"))
            not in FINAL_ORDER_STATUSES
        ]

    def __len__(self) -> int:
        return len(self._ids)

    def _continues(self, older: Sequence[str]) -> bool:
        """The read's orders from the stretch's newest down are the stretch's own, in order."""
        known = self._ids[::-1][: len(older)]
        return list(older[: len(known)]) == known

    def _restart(self, ids: Sequence[str], records: Sequence[Record], *, reached_end: bool) -> None:
        self._ids = list(reversed(ids[: self._max_entries]))
        self._records = {}
        self._keep(self._ids, records)
        self.bottom = reached_end and len(ids) <= self._max_entries

    def _keep(self, ids: Sequence[str], records: Sequence[Record]) -> None:
        by_id = {text_of(record.get("id")): record for record in records}
        for order_id in ids:
            record = by_id.get(order_id)
            if record is not None:
                self._records[order_id] = {k: v for k, v in record.items() if k != "redemption"}
