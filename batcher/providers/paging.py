"""Reading a newest-first paged listing with a few pages in flight at once.

A provider's list endpoints (orders, wallet transactions) answer one page at a
time, newest first, with the listing's total. Page after page, 100,000 orders are
1,000 round trips end to end; with a few workers the round trips overlap. Every
request still goes through the key's `RateLimiter` (in `ApiClient`), so under a
real rate limit the workers only keep the pipe full, never exceed the limit, and
each page gets the same retry decisions as any other GET.

Records that arrive while we read go to the head of the listing and push every
older record one place down, so pages read at different moments overlap or leave
a gap between them. Counted from the *oldest* record, though, a record's
position never moves (the listing only grows at its head): a record at `offset`
on an answer that gave `total` sits at position `total - 1 - offset`. So every
record is placed by position; a position read twice must hold the same record
(by id), and the positions still missing, from the oldest one wanted (the
floor) to the newest one the first page showed, are read again from the page
that holds them now, until none is missing. The floor is 0 for a whole listing,
or the position just above the newest record older than a cutoff (the listing is
newest first, so everything below it is older still). Records that arrive after
the first page are listed when a page shows them, but not waited for: a listing
that keeps growing could otherwise be chased forever.

This rests on one reading of the contract: an answer's total and its records are
one snapshot, and records are never removed or reordered. A listing that shows
otherwise (one record at two positions, two records at one, more records than
its total) is read again one page at a time, as batcher always did, with
duplicates dropped by id: that way a record can be seen twice but never missed
while records arrive.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Pages in flight at once. A few overlap the round trips; more only queue at the
#: limiter (a real rate limit) or in the provider.
LIST_WORKERS = 4
#: Rounds of re-reading missing positions before the listing counts as unreadable
#: by position (it kept moving faster than we read): then it is read page by page.
MAX_GAP_ROUNDS = 8
#: A guard for the page-by-page reading, against a provider that never says "last page".
MAX_PAGES = 10_000


@dataclass(frozen=True)
class Page(Generic[T]):
    """One answer of a newest-first listing.

    `items` holds one entry per record on the page, in the page's order; None for
    a record that is not an object (it still takes its position). `total` is the
    number of records in the whole listing when the page was answered, when the
    provider says.
    """

    number: int
    items: list[T | None]
    total: int | None
    total_pages: int | None


FetchPage = Callable[[int], Page[T]]
Identity = Callable[[T], str | None]
IsOlder = Callable[[T], bool]


class ListingMoved(Exception):
    """The listing changed in a way positions counted from its oldest record cannot explain."""


class Positions(Generic[T]):
    """Records of a newest-first listing by position from its oldest record (pure)."""

    def __init__(self, limit: int, identity: Identity[T], older: IsOlder[T] | None) -> None:
        self.limit = limit
        self._identity = identity
        self._older = older
        self._held: dict[int, T | None] = {}
        self._position_of: dict[str, int] = {}
        self.floor = 0  # the oldest position wanted
        self.floor_found = False  # a record older than the cutoff has been seen
        self.top: int | None = None  # the newest position wanted: the first answer's newest
        self.newest = -1  # the newest position any answer showed

    def place(self, page: Page[T]) -> None:
        if page.total is None:
            raise ListingMoved(f"page {page.number} does not give the listing's total")
        if self.top is None:
            self.top = page.total - 1
        self.newest = max(self.newest, page.total - 1)
        top = page.total - 1 - (page.number - 1) * self.limit
        if self._place_all(top, page.items):
            return
        for index, item in enumerate(page.items):
            position = top - index
            if position < 0:
                raise ListingMoved(f"page {page.number} holds more records than its total")
            if item is not None and self._older is not None and self._older(item):
                # Newest first: every position below this one is older still.
                self.floor = max(self.floor, position + 1)
                self.floor_found = True
                continue
            self._hold(position, item)

    def _place_all(self, top: int, items: list[T | None]) -> bool:
        """A page's records held at once, when that is all `place` would do record by
        record (the usual case: positions not held yet, records not seen yet, none
        past the cutoff); False, with nothing changed, for anything else.

        A report places 200,000 records; one at a time that was a tenth of its listing.
        """
        positions = range(top, top - len(items), -1)
        held, position_of = self._held, self._position_of
        if top - len(items) + 1 < 0 or not held.keys().isdisjoint(positions):
            return False
        older = self._older
        if older is not None and any(older(item) for item in items if item is not None):
            return False
        identity = self._identity
        keys = [None if item is None else identity(item) for item in items]
        keyed = {key: position for key, position in zip(keys, positions, strict=True) if key}
        if len(keyed) != len(keys) - keys.count(None) or not position_of.keys().isdisjoint(keyed):
            return False  # a record twice on the page, or seen at another position
        held.update(zip(positions, items, strict=True))
        position_of.update(keyed)
        return True

    def _hold(self, position: int, item: T | None) -> None:
        key = self._identity(item) if item is not None else None
        if position in self._held:
            known = self._held[position]
            if (self._identity(known) if known is not None else None) != key:
                raise ListingMoved(f"two records at position {position}")
            return
        if key is not None and self._position_of.setdefault(key, position) != position:
            raise ListingMoved(f"record {key} at two positions")
        self._held[position] = item

    def missing_pages(self) -> list[int]:
        """The pages that hold the missing positions now (at the newest total seen)."""
        total = self.newest + 1
        held = self._held
        wanted = range(self.floor, (self.top if self.top is not None else -1) + 1)
        pages = {
            (total - 1 - position) // self.limit + 1 for position in wanted if position not in held
        }
        return sorted(pages)

    def records(self) -> list[T]:
        """The records held from the newest to the floor, newest first."""
        found = map(self._held.get, range(self.newest, self.floor - 1, -1))
        return [item for item in found if item is not None]


def read_newest_first(
    fetch: FetchPage[T],
    *,
    limit: int,
    identity: Identity[T],
    older: IsOlder[T] | None = None,
    workers: int = LIST_WORKERS,
) -> list[T]:
    """Every record of a newest-first listing, newest first, down to (not including)
    the first one `older` says is past the cutoff; each once.

    `fetch(n)` reads page n (of `limit` records) through the provider's client, so
    its errors (ProviderUnavailable, AuthError) come out of here unchanged.
    """
    first = fetch(1)
    if first.total is not None and first.total_pages is not None:
        positions: Positions[T] = Positions(limit, identity, older)
        try:
            return _read_by_position(fetch, first, positions, workers)
        except ListingMoved as exc:
            log.warning("the listing moved while it was read (%s); reading it page by page", exc)
            first = fetch(1)
    return read_page_by_page(fetch, first, identity=identity, older=older)


def _read_by_position(
    fetch: FetchPage[T], first: Page[T], positions: Positions[T], workers: int
) -> list[T]:
    positions.place(first)
    last_page, workers = first.total_pages or 0, max(1, workers)
    in_flight: deque[Future[Page[T]]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="listing") as pool:
        try:
            # Pages in order, a few at a time, until the cutoff shows up or the last page.
            following = 2
            while True:
                while len(in_flight) < workers and following <= last_page:
                    if positions.floor_found:
                        break
                    in_flight.append(pool.submit(fetch, following))
                    following += 1
                if not in_flight:
                    break
                positions.place(in_flight.popleft().result())
            # Records that arrived meanwhile pushed some positions onto pages already read.
            for _ in range(MAX_GAP_ROUNDS):
                pages = positions.missing_pages()
                if not pages:
                    return positions.records()
                for page in pool.map(fetch, pages):
                    positions.place(page)
        finally:
            for future in in_flight:
                future.cancel()
    raise ListingMoved(f"positions still missing after {MAX_GAP_ROUNDS} rounds")


def read_page_by_page(
    fetch: FetchPage[T],
    first: Page[T],
    *,
    identity: Identity[T],
    older: IsOlder[T] | None = None,
) -> list[T]:
    """One page after another, each once, duplicates dropped by id. Records that
    arrive meanwhile only push the rest further on: one may be read twice, none is
    skipped."""
    found: list[T] = []
    seen: set[str] = set()
    page = first
    while True:
        for item in page.items:
            if item is None:
                continue
            if older is not None and older(item):
                return found  # newest first: everything after this is older still
            key = identity(item)
            if key is not None:
                if key in seen:
                    continue
                seen.add(key)
            found.append(item)
        last = page.total_pages
        if not page.items or last is None or page.number >= last or page.number >= MAX_PAGES:
            return found
        page = fetch(page.number + 1)
