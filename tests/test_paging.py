"""Reading a newest-first paged listing a few pages at a time while records arrive
(`batcher.providers.paging`), against an in-memory listing. The same reading against
the real sandbox is in tests/test_ugiftme_client.py."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batcher.core.errors import ProviderUnavailable
from batcher.providers import paging
from batcher.providers.paging import Page, read_newest_first


@dataclass(frozen=True)
class Record:
    id: str
    moment: int  # grows with every record, as a timestamp would


class Listing:
    """Records oldest first; pages are served newest first. Before each page is read,
    `arrivals` new records land at its head (and `removals` old ones may vanish)."""

    def __init__(
        self, size: int, limit: int, arrivals: int = 0, *, give_total: bool = True
    ) -> None:
        self.records = [Record(f"r{n}", n) for n in range(size)]
        self.limit = limit
        self.arrivals = arrivals
        self.give_total = give_total
        self.remove_at_read: int | None = None
        self.reads = 0
        self._lock = threading.Lock()

    def fetch(self, number: int) -> Page[Record]:
        with self._lock:  # one answer is one snapshot: its total and its records
            self.reads += 1
            if self.remove_at_read == self.reads:
                del self.records[len(self.records) // 2]
            for _ in range(self.arrivals):
                self.records.append(Record(f"r{len(self.records)}", len(self.records)))
            total = len(self.records)
            start = (number - 1) * self.limit
            newest_first = self.records[::-1][start : start + self.limit]
            pages = -(-total // self.limit)
        return Page(
            number,
            list(newest_first),
            total if self.give_total else None,
            pages,
        )


def record_id(record: Record) -> str:
    return record.id


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(0, 60),
    limit=st.integers(2, 7),
    arrivals=st.integers(0, 1),
    workers=st.integers(1, 5),
    cutoff=st.none() | st.integers(0, 60),
)
def test_every_record_once_while_records_arrive(
    size: int, limit: int, arrivals: int, workers: int, cutoff: int | None
) -> None:
    """Up to one new record before every page read: faster than that, a listing
    grows as fast as it can be read, page by page too."""
    listing = Listing(size, limit, arrivals)
    older = None if cutoff is None else (lambda r: r.moment < cutoff)
    found = read_newest_first(
        listing.fetch, limit=limit, identity=record_id, older=older, workers=workers
    )
    ids = [r.id for r in found]
    assert len(ids) == len(set(ids)), "a record was listed twice"
    wanted_at_start = {f"r{n}" for n in range(size) if cutoff is None or n >= cutoff}
    assert wanted_at_start <= set(ids), "a record that was there all along was missed"
    assert all(cutoff is None or r.moment >= cutoff for r in found)
    assert [r.moment for r in found] == sorted((r.moment for r in found), reverse=True)
    assert set(ids) <= {r.id for r in listing.records}


def test_pages_are_read_concurrently_and_the_gaps_arrivals_leave_are_read_again() -> None:
    listing = Listing(1_000, 10, arrivals=1)
    found = read_newest_first(listing.fetch, limit=10, identity=record_id, workers=4)
    assert {f"r{n}" for n in range(1_000)} <= {r.id for r in found}
    assert len(found) == len({r.id for r in found})
    # 100 pages, then the pages the newest arrivals pushed the others onto
    assert 100 < listing.reads < 150


def test_a_listing_without_a_total_is_read_page_by_page() -> None:
    listing = Listing(95, 10, arrivals=1, give_total=False)
    found = read_newest_first(listing.fetch, limit=10, identity=record_id, workers=4)
    assert {f"r{n}" for n in range(95)} <= {r.id for r in found}
    assert len(found) == len({r.id for r in found})


def test_a_record_removed_while_reading_falls_back_to_page_by_page(
    caplog: pytest.LogCaptureFixture,
) -> None:
    listing = Listing(200, 10, arrivals=1)
    listing.remove_at_read = 5  # a deletion breaks positions counted from the oldest record
    found = read_newest_first(listing.fetch, limit=10, identity=record_id, workers=1)
    ids = [r.id for r in found]
    assert len(ids) == len(set(ids))
    assert {r.id for r in listing.records if r.moment < 200} <= set(ids)
    assert "reading it page by page" in caplog.text


def test_a_listing_that_never_settles_is_read_page_by_page(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(paging, "MAX_GAP_ROUNDS", 0)
    listing = Listing(50, 10, arrivals=2)
    found = read_newest_first(listing.fetch, limit=10, identity=record_id, workers=3)
    assert {f"r{n}" for n in range(50)} <= {r.id for r in found}
    assert len(found) == len({r.id for r in found})


def test_a_failed_page_fails_the_listing() -> None:
    listing = Listing(100, 10)

    def fetch(number: int) -> Page[Record]:
        if number == 6:
            raise ProviderUnavailable("sandbox: GET /orders failed: HTTP 503")
        return listing.fetch(number)

    with pytest.raises(ProviderUnavailable, match="503"):
        read_newest_first(fetch, limit=10, identity=record_id, workers=3)


def test_the_cutoff_stops_the_reading_within_a_few_pages() -> None:
    listing = Listing(10_000, 10)
    found = read_newest_first(
        listing.fetch, limit=10, identity=record_id, older=lambda r: r.moment < 9_950, workers=4
    )
    assert [r.moment for r in found] == list(range(9_999, 9_949, -1))
    assert listing.reads <= 6 + 4  # the pages wanted, and at most one round of workers past


# ---------------------------------------------- a page placed at once, or record by record

ids = st.one_of(st.none(), st.sampled_from([f"r{n}" for n in range(12)]))
pages = st.builds(
    Page,
    st.integers(min_value=1, max_value=4),
    st.lists(st.one_of(st.none(), st.builds(Record, ids, st.integers(0, 20))), max_size=4),
    st.integers(min_value=0, max_value=14),
    st.just(None),
)


def placed(
    sequence: list[Page[Record]], cutoff: int | None, one_by_one: bool
) -> tuple[object, ...]:
    positions: paging.Positions[Record] = paging.Positions(
        3,
        lambda record: record.id,
        None if cutoff is None else (lambda record: record.moment < cutoff),
    )
    if one_by_one:
        positions._place_all = lambda top, items: False  # type: ignore[method-assign]
    outcome: list[object] = []
    for page in sequence:
        try:
            positions.place(page)
            outcome.append("placed")
        except paging.ListingMoved as exc:
            outcome.append(str(exc))
            break
    state = (positions._held, positions._position_of, positions.floor, positions.floor_found)
    return (*outcome, state, positions.top, positions.newest)


@settings(max_examples=400, deadline=None)
@given(st.lists(pages, max_size=5), st.one_of(st.none(), st.integers(0, 20)))
def test_a_page_placed_at_once_is_placed_as_record_by_record(
    sequence: list[Page[Record]], cutoff: int | None
) -> None:
    assert placed(sequence, cutoff, one_by_one=False) == placed(sequence, cutoff, one_by_one=True)


def test_the_usual_page_is_placed_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("placed record by record")

    positions: paging.Positions[Record] = paging.Positions(2, record_id, None)
    monkeypatch.setattr(positions, "_hold", refuse)
    positions.place(Page(1, [Record("r3", 3), None], 4, 2))
    positions.place(Page(2, [Record("r1", 1), Record("r0", 0)], 4, 2))
    assert [record.id for record in positions.records()] == ["r3", "r1", "r0"]
