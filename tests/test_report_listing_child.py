"""A full report's listing GETs made by a forked child (`reporting.listing_child`), and
the rows matching reads, read while the listings come in.

The child only makes the GETs: this process decodes and places every page as it does
when it makes them itself, so the listing must be the same record for record; a child
that cannot answer (gone, or a GET it could not make) leaves the rest to this process,
with the same result.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from batcher.providers.base import OrderItem
from batcher.providers.ugiftme import UGiftMeProvider
from batcher.reporting import listing_child, reconcile, reports
from batcher.reporting.listing_child import ListingChild
from batcher.reporting.reconcile import RunWindow, Window
from batcher.sandbox.server import SandboxHandle
from batcher.transport.throttle import forget_limiters
from tests.test_report_pages import BALANCES, SPECS, report
from tests.test_reports import build
from tests.test_ugiftme_client import SANDBOX_KEY, settings_for, sync_mode
from tests.test_workbook_fork import FORK_WARNING


@pytest.fixture
def sandbox(make_ugiftme_sandbox: Callable[..., SandboxHandle]) -> Iterator[SandboxHandle]:
    forget_limiters()
    yield make_ugiftme_sandbox(api_keys=(SANDBOX_KEY,))
    forget_limiters()


@pytest.fixture
def ugiftme(sandbox: SandboxHandle) -> Iterator[UGiftMeProvider]:
    client = UGiftMeProvider(settings_for(sandbox))
    yield client
    client.close()


@pytest.fixture
def forkable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forks allowed: the test runner's and the sandbox's threads aside."""
    monkeypatch.setattr(listing_child, "may_fork", lambda: True)


def seed(provider: UGiftMeProvider) -> None:
    """40 orders and their purchases: 8 pages of 5 in each listing, some of 4 workers."""
    for n in range(4):
        items = [
            OrderItem(
                row_key=f"row{i}", product_code="AMAZON_UK_STD", merchant="Amazon UK",
                currency="GBP", amount=Decimal(10 + i), recipient_email=f"p{n}-{i}@example.com",
            )
            for i in range(10)
        ]  # fmt: skip
        provider.submit(f"b1-seed{n}", provider.encode(f"b1-seed{n}", items), items)
    provider.page_limit, provider.list_workers = 5, 4


def listing(provider: UGiftMeProvider, since: datetime) -> tuple[Any, ...]:
    window = RunWindow("run-1", Window(since, datetime.now(UTC)))
    data, error = reports.fetch_provider_data(provider, [window])
    assert error is None and data is not None
    return (
        provider.orders(since),
        provider.transactions(since),
        list(data.orders),
        list(data.transactions),
    )


@pytest.mark.filterwarnings(FORK_WARNING)
def test_a_listing_whose_gets_a_child_makes_is_the_listing_made_here(
    sandbox: SandboxHandle, ugiftme: UGiftMeProvider, forkable: None
) -> None:
    sync_mode(sandbox)
    since = datetime.now(UTC) - timedelta(minutes=1)
    seed(ugiftme)
    here = listing(ugiftme, since)
    child = ListingChild.start(ugiftme)
    assert child is not None
    try:
        there = listing(ugiftme, since)
        assert not child.retired
    finally:
        child.close()
        reports.stop_listing_child(ugiftme)
    assert child.answered >= 4 * 8, "the child made the pages' GETs"
    assert there == here
    assert len(here[0]) == 40 and len(here[1]) >= 40
    # this process's own connection still serves it after the child is gone
    assert listing(ugiftme, since) == here


@pytest.mark.filterwarnings(FORK_WARNING)
def test_a_child_that_dies_leaves_the_rest_of_the_listing_to_this_process(
    sandbox: SandboxHandle,
    ugiftme: UGiftMeProvider,
    forkable: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sync_mode(sandbox)
    since = datetime.now(UTC) - timedelta(minutes=1)
    seed(ugiftme)
    here = listing(ugiftme, since)
    real = ugiftme.child_pages

    def child_pages() -> Callable[[], Any]:
        serve = real()

        def dying() -> Any:
            get = serve()
            made = [0]

            def get_then_die(path: str, params: Any) -> bytes | None:
                made[0] += 1
                if made[0] > 3:
                    os._exit(9)  # the child dies mid-listing
                return get(path, params)

            return get_then_die

        return dying

    monkeypatch.setattr(ugiftme, "child_pages", child_pages)
    child = ListingChild.start(ugiftme)
    assert child is not None
    try:
        there = listing(ugiftme, since)
    finally:
        child.close()
        reports.stop_listing_child(ugiftme)
    assert child.retired and 1 <= child.answered <= 3
    assert there == here


@pytest.mark.filterwarnings(FORK_WARNING)
def test_a_get_the_child_refuses_is_made_here(
    sandbox: SandboxHandle,
    ugiftme: UGiftMeProvider,
    forkable: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A body the child's client would not hand over as it came (an error status, a
    body that may echo the key) is None: this process makes that GET, and the rest."""
    sync_mode(sandbox)
    since = datetime.now(UTC) - timedelta(minutes=1)
    seed(ugiftme)
    here = listing(ugiftme, since)
    monkeypatch.setattr(ugiftme, "child_pages", lambda: lambda: lambda path, params: None)
    child = ListingChild.start(ugiftme)
    assert child is not None
    try:
        there = listing(ugiftme, since)
    finally:
        child.close()
        reports.stop_listing_child(ugiftme)
    assert child.retired and child.answered == 0
    assert there == here


@pytest.mark.filterwarnings(FORK_WARNING)
@pytest.mark.timeout(60)
def test_a_slot_whose_thread_fails_is_never_waited_on(
    sandbox: SandboxHandle,
    ugiftme: UGiftMeProvider,
    forkable: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A child thread that fails outside the GET (here: an answer it cannot send,
    after saying a body follows) closes its slot: this process reads the end of it
    and goes on alone, rather than wait for the rest of a body that never comes."""
    sync_mode(sandbox)
    since = datetime.now(UTC) - timedelta(minutes=1)
    seed(ugiftme)
    here = listing(ugiftme, since)
    unsendable: Any = "a body that is not bytes"
    monkeypatch.setattr(ugiftme, "child_pages", lambda: lambda: lambda path, params: unsendable)
    child = ListingChild.start(ugiftme)
    assert child is not None
    try:
        there = listing(ugiftme, since)
    finally:
        child.close()
        reports.stop_listing_child(ugiftme)
    assert child.retired and child.answered == 0
    assert there == here


def test_no_child_while_another_thread_runs() -> None:
    """A child forked now could inherit a lock the other thread holds."""
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert not listing_child.may_fork()
    finally:
        stop.set()
        other.join()


def test_no_child_for_a_provider_that_cannot_use_one(forkable: None) -> None:
    assert ListingChild.start(object()) is None


class Spy:
    """What matching was handed: the rows read ahead, or None (read as matched)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ahead: list[int | None] = []
        self.children: list[object] = []
        real_match, real_start = reconcile.match_orders, ListingChild.start

        def match_orders(inputs: Any, *args: Any, **kwargs: Any) -> Any:
            ahead = inputs.read_ahead
            self.ahead.append(None if ahead is None else len(ahead))
            return real_match(inputs, *args, **kwargs)

        def start(provider: object) -> ListingChild | None:
            self.children.append(provider)
            return real_start(provider)

        monkeypatch.setattr(reconcile, "match_orders", match_orders)
        monkeypatch.setattr(ListingChild, "start", start)


def test_rows_read_while_the_listings_come_in_make_the_report_read_as_matched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger, provider = build(tmp_path, SPECS, balances=BALANCES)
    spy = Spy(monkeypatch)
    try:
        ahead = report(ledger, provider, tmp_path / "ahead")
        monkeypatch.setattr(reports, "READ_AHEAD_MAX_ROWS", 0)
        matched = report(ledger, provider, tmp_path / "matched")
    finally:
        ledger.close()
    assert spy.ahead == [len(SPECS), None]
    assert ahead == matched
    assert "MISMATCH" in ahead[2], "a ledger the listings disagree with"


def test_a_report_asked_for_codes_makes_its_own_listing_gets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """codes.xlsx asks the provider again after the listing: one process paces the key."""
    ledger, provider = build(tmp_path, SPECS, balances=BALANCES)
    spy = Spy(monkeypatch)
    try:
        reports.write_batch_report(ledger, "nightly", provider, tmp_path / "a")
        reports.write_batch_report(ledger, "nightly", provider, tmp_path / "b", reveal_codes=True)
    finally:
        ledger.close()
    assert spy.children == [provider]
