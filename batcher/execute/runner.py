"""The submit/poll loop over the ledger.

Order of work in a run (docs/architecture.md):
1. chunks whose outcome is unknown are resolved first, with the same key and bytes;
2. accepted order requests are polled (exponential backoff with jitter, capped);
3. planned chunks are submitted, each committed as `sending` before it leaves.

Every request goes through the provider's shared rate limiter. While there is still
something to submit, polls use at most a quarter of the requests (`POLLS_PER_SUBMIT`),
each no sooner than a second after it fell due (`POLL_WAITS_FOR_SENDS`).

One durable commit per group of chunks. A chunk's `sending` is committed before
its request leaves, always: planned chunks are committed `sending` a group at a
time (`SEND_GROUP_CHUNKS`, one commit), then sent one after another. A chunk of the
group whose request never left when the run stops is planned again
(`_unmark_unsent`); after a crash it is `unknown` like any chunk in flight, and
the next run asks the provider and resends the same key and bytes. The answers
that are safe to lose in a crash wait in memory (`_defer`) and are committed with
the next write, which is usually the next group's `sending` (`Ledger.grouped`), or
before the loop sleeps or ends: an accepted order request (lost, the chunk is
still `sending`, so the next run asks the provider and resends the same key and
bytes, which it deduplicates) and a settled chunk (lost, the chunk is still
accepted or sending, and is asked again). Any other write (unknown, failed, out of
funds) first commits what waits.

On a SQLite ledger without webhooks the next group's commit, with the answers
waiting when it starts, runs on a thread of its own while this group is sent
(`_mark_ahead`, `_AheadCommit`); a chunk leaves only once its own group's commit is
done, and every other use of the ledger waits for it (`_LedgerAfterCommit`).
"""

from __future__ import annotations

import dataclasses
import heapq
import random
import re
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol, cast

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from batcher.core.collector import collector_paused
from batcher.core.keys import match_key
from batcher.execute.events import Retry, emit
from batcher.execute.funds import Need, funds_need
from batcher.execute.plan import PlanRow, plan_chunks
from batcher.execute.webhook_feed import EventFeed
from batcher.ledger.store import (
    HELD_ELSEWHERE,
    ChunkRecord,
    Ledger,
    OrderClaimed,
    RowOutcome,
    SheetRow,
    parse_ts,
)
from batcher.providers.base import (
    IncompleteResult,
    ItemResult,
    OrderItem,
    OutcomeUnknown,
    PollResult,
    Provider,
    SubmitResult,
)

_RETRYABLE_CODES = {
    "insufficient_funds",
    "server_error",
    "upstream_error",
    "request_failed",
    "out_of_stock",
    "rate_limited",
    "timeout",
    "stock_exhausted",
}
_RETRYABLE_WORDS = re.compile(
    r"insufficient|out of stock|stock|upstream|temporar|try again|timeout|unavailable|supplier",
    re.IGNORECASE,
)


def failure_kind(code: str | None, message: str | None) -> str:
    """'retryable' failures are retried by the next run with a new attempt; 'permanent'
    ones only with --retry-failed or when the row changes in the sheet."""
    if code and code in _RETRYABLE_CODES:
        return "retryable"
    if message and _RETRYABLE_WORDS.search(message):
        return "retryable"
    return "permanent"


def voucher_last4(code: str | None) -> str | None:
    """Enough to tell codes apart in a report, never enough to redeem one."""
    if not code:
        return None
    tail = re.sub(r"[^0-9A-Za-z]", "", code)[-4:]
    return tail or None


@dataclass(frozen=True)
class RunOptions:
    chunk_size: int | None = None  # None: the provider's submit limit
    retry_failed: bool = False
    #: --release-held: the sheet rows to release, or None for every held row
    release_held: frozenset[int] | None = frozenset()
    deadline_seconds: float | None = None
    max_send_attempts: int = 8  # per unknown chunk per run, then the run stops (exit 3)
    initial_poll_delay: float = 1.0
    max_poll_delay: float = 30.0
    #: consecutive failed polls before a chunk is handed back to unknown-resolution
    max_poll_failures: int = 6


@dataclass(frozen=True)
class PlanSummary:
    rows_total: int
    rows_to_send: int
    new_chunks: int
    unknown_chunks: int
    accepted_chunks: int
    cost_by_currency: dict[str, Decimal]
    face_by_currency: dict[str, Decimal]
    rows_by_state: dict[str, int]


@dataclass
class RunStats:
    submits: int = 0
    polls: int = 0
    settled_by_event: int = 0  # order requests settled from a webhook event, not a poll
    unknown_outcomes: int = 0
    lookups: int = 0
    blocked_currencies: dict[str, str] = field(default_factory=dict)
    stopped: str | None = None  # deadline | interrupted | provider_unavailable
    submit_started: float | None = None
    submit_finished: float | None = None
    started: float = 0.0
    finished: float = 0.0
    #: what recovery from the provider did this run (summary.json `recovery`), or None
    recovery: dict[str, int | str] | None = None

    @property
    def submit_seconds(self) -> float:
        if self.submit_started is None or self.submit_finished is None:
            return 0.0
        return max(0.0, self.submit_finished - self.submit_started)


class RunListener(Protocol):
    def message(self, text: str) -> None: ...
    def advance(self, rows_settled: int) -> None: ...


class SilentListener:
    def message(self, text: str) -> None:
        pass

    def advance(self, rows_settled: int) -> None:
        pass


#: pending rows planned at once (`Runner._plan_pending`): memory is bounded by this
PLAN_PAGE_ROWS = 50_000
#: rows whose order items a run keeps from planning for its sends and polls
KEEP_ITEMS_ROWS = 50_000
#: At most this many planned chunks are committed `sending` in one durable commit
#: before they are sent one after another: a commit costs 10-30 ms on a busy disk, a
#: chunk's request 5-10 ms (20,000 UGiftMe rows: 8 took 29 commits, 32 takes 12, 0.5 s
#: less). More means more chunks to ask the provider about after a crash (each is
#: resent with its key and bytes, or found by key). Groups start at one chunk and double while sends go back to back; a
#: send that waits (the rate limit, a slow provider) starts again from one, so the
#: answers of a group's first chunks do not sit in memory while its last ones wait.
SEND_GROUP_CHUNKS = 32
#: While chunks remain to be sent, polls may use at most this many requests per submit:
#: the submit phase ends sooner, and the polls it leaves fill the time the last chunks
#: spend at the provider instead of a sleep (20,000 UGiftMe rows: 1.0 let the run sleep
#: ~1.5 s at its end). Every chunk is still polled; the rate limit paces both alike.
POLLS_PER_SUBMIT = 0.25
#: While chunks remain to be sent, a poll that falls due waits up to this long for them:
#: a send takes milliseconds and starts the provider's work on its chunk, while a poll
#: of a provider still busy with the chunks before may take a tenth of a second (20,000
#: UGiftMe rows: when first polls fell due before the last sends, the last ten chunks
#: were sent 1.3 s late, behind polls of a sandbox busy creating the orders, and the
#: run ended that much later). Sends that take longer (a paced submit phase) still let
#: the polls have their share, each at most this late.
POLL_WAITS_FOR_SENDS = 1.0
#: Polled answers waiting in memory (`_defer`) are committed on the other thread
#: (`_AheadCommit`) once there are this many, while the next polls go on, rather than
#: all at the end of the run.
FLUSH_AHEAD_WRITES = 16
#: A first poll that finds its request still pending this long after it was accepted
#: moves the first polls still to come to at least this many times as long after their
#: own chunk's acceptance: a provider falling behind (a backlog) falls further behind
#: while they wait, and a first poll that finds its request pending costs a request and
#: a back-off that may outlast the run's other polls.
PENDING_MARGIN = 1.25
#: The first polls still to come are timed again when the learned delay has moved by
#: more than this share since they were last timed.
_RETIME_SHARE = 0.1
#: A wait at least this long commits the deferred writes first; shorter ones (polls
#: falling due a few milliseconds apart) leave them for the next commit.
_COMMIT_BEFORE_WAITING = 0.25


class _Stopped(Exception):
    pass


class PlanSource(Protocol):
    """What planning reads of a row to send: a `RowRecord`, or the ledger's lighter
    `PlanningRow` of the same row (the same values)."""

    @property
    def row_key(self) -> str: ...
    @property
    def source_row(self) -> int: ...
    @property
    def currency(self) -> str: ...
    @property
    def face_value(self) -> Decimal: ...
    @property
    def est_cost(self) -> Decimal | None: ...
    @property
    def attempt(self) -> int: ...
    @property
    def retry_group(self) -> str: ...
    @property
    def fields(self) -> dict[str, str]: ...


def order_item(row: PlanSource) -> OrderItem:
    f = row.fields
    return OrderItem(
        row_key=row.row_key,
        product_code=f.get("product_code", ""),
        merchant=f.get("merchant", ""),
        currency=row.currency,
        amount=row.face_value,
        recipient_email=f.get("recipient_email", ""),
        recipient_name=f.get("recipient_name", ""),
        message=f.get("message", ""),
        country=f.get("country", ""),
        payment_currency=f.get("payment_currency", ""),
    )


class _AheadCommit:
    """At most one ledger transaction running on a thread of its own (`Runner._mark_ahead`)."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self, work: Callable[[], None]) -> None:
        self.join()

        def run() -> None:
            try:
                work()
            except BaseException as exc:  # raised on the runner's thread by `join`
                self._error = exc

        self._thread = threading.Thread(target=run, name="batcher-mark-ahead", daemon=True)
        self._thread.start()

    @property
    def idle(self) -> bool:
        """No transaction is running (one that ended may wait to be joined)."""
        return self._thread is None or not self._thread.is_alive()

    def raise_if_failed(self) -> None:
        """Raise what an ended transaction raised, without waiting for a running one:
        the runner checks before each request, so a failed commit (a claimed order, a
        full disk) stops the run before the rest of the group is sent."""
        if self._thread is not None and self.idle:
            self.join()

    def join(self) -> None:
        """Wait for the transaction (a no-op on its own thread); raise what it raised."""
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return
        thread.join()
        self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error


class _LedgerAfterCommit:
    """The runner's ledger while `_AheadCommit` may be using it: every use waits for that
    transaction first, so one thread at a time uses the connection. A poll's count is
    kept in memory until the chunk's next transition (under a lock) and waits for none."""

    def __init__(self, ledger: Ledger, ahead: _AheadCommit) -> None:
        self._ledger = ledger
        self._ahead = ahead

    def __getattr__(self, name: str) -> Any:
        if name != "count_poll":
            self._ahead.join()
        return getattr(self._ledger, name)


class Runner:
    def __init__(
        self,
        provider: Provider,
        ledger: Ledger,
        batch: str,
        account_id: str,
        options: RunOptions,
        *,
        listener: RunListener | None = None,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
        rng: random.Random | None = None,
        events: EventFeed | None = None,
    ) -> None:
        self.provider = provider
        self.ledger = ledger
        self.batch = batch
        self.account_id = account_id
        self.options = options
        self.listener = listener or SilentListener()
        self.stop = stop or threading.Event()
        self.clock = clock
        # Tests pass a fake clock's sleep; by default a stop request cuts the wait short.
        self._wait = sleep or self.stop.wait
        self.rng = rng or random.Random()
        self.stats = RunStats()
        self._deadline: float | None = None
        self._learned_poll_delay = options.initial_poll_delay
        # Chunks accepted this run whose first poll has not come yet (no webhooks): when
        # each was accepted and its jitter, so the poll moves when the learned delay does
        # (`_retime_first_polls`); and the delay they were last timed with.
        self._first_polls: dict[str, tuple[float, float]] = {}
        self._timed_with = options.initial_poll_delay
        self._poll_failures: dict[str, int] = {}
        self._poll_due: dict[str, float] = {}
        self.events = events
        self._request_of: dict[str, str] = {}  # accepted chunk key -> order request id
        # Items of the chunks this run planned: a row's content cannot change while the
        # run holds the batch lock, so sends and polls need not read the rows again.
        self._planned_items: dict[str, list[OrderItem]] = {}
        self._kept_item_rows = 0
        # Accepted chunks being polled, as the ledger holds them (or will, once the
        # deferred writes are committed): polls need not read them back.
        self._accepted: dict[str, ChunkRecord] = {}
        # Ledger writes safe to lose in a crash, committed with the next write.
        self._deferred: list[Callable[[], None]] = []
        # Planned chunks committed `sending` whose request has not left yet, as they
        # were before (`_unmark_unsent` restores them when the run stops first).
        self._marked: dict[str, ChunkRecord] = {}
        self._group_size = 1  # of the next group (`SEND_GROUP_CHUNKS`)
        # The next group's `sending` commit, on a thread of its own while this group's
        # requests go on (`_mark_ahead`), and the keys it was given, none sent yet.
        self._ahead = _AheadCommit()
        self._ahead_keys: set[str] = set()

    # ------------------------------------------------------------------ planning

    def prepare(
        self,
        sheet_rows: Iterable[SheetRow] | None,
        hold: Callable[[Iterable[Need]], Collection[str]] | None = None,
        recovery: Callable[[Runner], object] | None = None,
    ) -> PlanSummary:
        """Bring the ledger in line with the sheet and plan what this run will send.

        `recovery` runs after the sheet is synced and before anything is planned: it
        asks the provider about rows the ledger cannot vouch for (execute/recovery.py).
        `hold(rows)` names rows to leave pending, unplanned, this run (the funds rule in
        `execute/funds.py` holds rows their wallet cannot pay for); it sees every row
        this run would send, kept plans included.

        The cyclic garbage collector is paused meanwhile (`collector_paused`): syncing
        and planning a sheet make a few objects per row, none in a reference cycle,
        and the collector's passes over all the process holds found nothing to free
        (20,000 rows: about a tenth of a second of the time before the first request).
        """
        with collector_paused():
            return self._prepare(sheet_rows, hold, recovery)

    def _prepare(
        self,
        sheet_rows: Iterable[SheetRow] | None,
        hold: Callable[[Iterable[Need]], Collection[str]] | None,
        recovery: Callable[[Runner], object] | None,
    ) -> PlanSummary:
        recovered = self.ledger.recover_after_crash(self.batch)
        if recovered:
            self.listener.message(
                f"{recovered} chunk(s) were in flight when a run died; resolving first"
            )
        if undone := self.ledger.undo_unconfirmed_release(self.batch):
            self.listener.message(
                f"{undone} row(s) released by a run that was never confirmed are held again"
            )
        if sheet_rows is not None:  # None: the sheet the ledger already holds, unchanged
            self.ledger.sync_rows(self.batch, sheet_rows, retry_failed=self.options.retry_failed)
        self.ledger.release_retryable(self.batch)
        # Planned chunks that still hold exactly their rows keep their composition and
        # key; only rows not planned before form new chunks.
        self.ledger.discard_unsent_plans(self.batch, stale_only=True)
        self.ledger.clear_reference_holds(self.batch)
        self._release_held()
        if recovery is not None:
            recovery(self)
        for _ in range(3):  # a held reference removes rows once; the rest are planned again
            _saved, held = self._plan_pending(hold)
            if not held:
                break
            self.listener.message(
                f"{len(held)} row(s) held: their reference is planned, in flight or ordered "
                "in another batch of this account"
            )
        pending = self.ledger.amounts(self.batch, "planned")
        cost: dict[str, Decimal] = {}
        face: dict[str, Decimal] = {}
        for currency, face_value, est_cost in pending:
            face[currency] = face.get(currency, Decimal(0)) + face_value
            cost[currency] = cost.get(currency, Decimal(0)) + (est_cost or face_value)
        by_state = self.ledger.count_by_state(self.batch)
        return PlanSummary(
            rows_total=sum(by_state.values()),
            rows_to_send=len(pending),
            new_chunks=self.ledger.chunk_count(self.batch, "planned"),
            unknown_chunks=self.ledger.chunk_count(self.batch, "unknown"),
            accepted_chunks=self.ledger.chunk_count(self.batch, "accepted"),
            cost_by_currency=cost,
            face_by_currency=face,
            rows_by_state=by_state,
        )

    def _release_held(self) -> None:
        """The operator's decision to order held rows after all (`--release-held`)."""
        wanted = self.options.release_held
        if wanted is not None and not wanted:
            return
        released = self.ledger.release_held(self.batch, wanted, keep=HELD_ELSEWHERE)
        missing = sorted(set(wanted or ()) - set(released))
        if released:
            self.listener.message(
                f"releasing {len(released)} held row(s) on request (sheet rows "
                f"{', '.join(map(str, released))}); they are ordered once this run is"
                " confirmed"
            )
        if missing:
            self.listener.message(
                f"--release-held: sheet row(s) {', '.join(map(str, missing))} are not held "
                "as possible duplicates; nothing to release there"
            )

    def confirmed(self) -> None:
        """The plan was confirmed: rows `--release-held` released are released for good."""
        self.ledger.confirm_release(self.batch)

    def declined(self) -> None:
        """The plan was declined or refused: rows `--release-held` released are held again."""
        self.ledger.undo_unconfirmed_release(self.batch)

    def _plan_pending(
        self, hold: Callable[[Iterable[Need]], Collection[str]] | None = None
    ) -> tuple[int, set[str]]:
        """Chunk the pending rows that are not held; returns (chunks saved, rows held).

        The pending rows are read and planned a page at a time, in row-key order, so
        memory is bounded by the page: a batch of up to `PLAN_PAGE_ROWS` pending rows is
        one page and is chunked exactly as a whole, a larger one page by page (still
        deterministic in the set of pending rows)."""
        keys = self.ledger.row_keys(self.batch, "pending", by="row_key")
        # One page of pending rows read for the funds rule is kept for planning too,
        # rather than read a second time (20,000 rows: about half a second). More rows
        # than a page: the funds rule reads only the columns it needs.
        kept: list[PlanSource] | None = [] if len(keys) <= PLAN_PAGE_ROWS else None
        held_for_funds: Collection[str] = ()
        if hold is not None:
            states = ("planned", "pending")
            needs = (
                (
                    funds_need(*line)
                    for s in states
                    for line in self.ledger.cost_lines(self.batch, s)
                )
                if kept is None
                else (row_need(r) for r in self._rows_of(states, keep=kept))
            )
            held_for_funds = set(hold(needs))
        chunk_size = min(
            self.options.chunk_size or self.provider.submit_limit, self.provider.submit_limit
        )
        read_all = kept is not None and len(kept) == len(keys)  # `hold` read every one
        if held_for_funds:
            keys = [k for k in keys if k not in held_for_funds]
        pages: Iterable[Sequence[PlanSource]]
        if kept is not None and read_all:
            by_key = {r.row_key: r for r in kept}
            pages = [[by_key[k] for k in keys]] if keys else []
        else:
            pages = self.ledger.rows_in_pages(self.batch, keys, page=PLAN_PAGE_ROWS)
        saved, held = 0, set()
        for page in pages:
            page_saved, page_held = self._plan_page(page, chunk_size)
            saved += page_saved
            held |= page_held
        self.ledger.forget_decoded_fields()  # the sync's rows not planned are not kept
        return saved, held

    def _rows_of(
        self, states: Sequence[str], *, keep: list[PlanSource] | None = None
    ) -> Iterator[PlanSource]:
        """The batch's rows in `states` (in the sheet), state by state in sheet order,
        read a page at a time (only what the funds rule and planning use); the pending
        ones are also added to `keep` when given."""
        for state in states:
            if keep is not None and state == "pending":
                # No more than a plan page of them (`_plan_pending`): one statement.
                page = self.ledger.planning_rows_in_state(self.batch, state)
                keep.extend(page)
                yield from page
                continue
            keys = self.ledger.row_keys(self.batch, state)
            for page in self.ledger.planning_rows_in_pages(self.batch, keys):
                yield from page

    def _plan_page(self, pending: Sequence[PlanSource], chunk_size: int) -> tuple[int, set[str]]:
        """Chunk, encode and save one page of pending rows."""
        planned = plan_chunks(
            (
                PlanRow(
                    row_key=r.row_key,
                    currency=r.currency,
                    attempt=r.attempt,
                    retry_group=r.retry_group,
                    match_fields=match_key(
                        r.fields.get("product_code", ""),
                        r.face_value,
                        r.fields.get("recipient_email", ""),
                        r.fields.get("recipient_name", ""),
                    ),
                )
                for r in pending
            ),
            provider=self.provider.name,
            account=self.account_id,
            batch=self.batch,
            chunk_size=chunk_size,
        )
        by_key = {r.row_key: r for r in pending}

        def payloads() -> list[bytes]:
            """The chunks' payloads, made while the ledger writes their rows (`save_plan`)."""
            made = []
            for chunk in planned:
                items = [order_item(by_key[k]) for k in chunk.row_keys]
                if self._kept_item_rows < KEEP_ITEMS_ROWS:
                    # The first chunks' items stay for their sends and polls; later chunks
                    # read theirs back from the ledger, so memory does not grow with the
                    # batch.
                    self._planned_items[chunk.key] = items
                    self._kept_item_rows += len(items)
                made.append(self.provider.encode(chunk.key, items))
            return made

        records = [(c.key, c.currency, c.attempt, c.row_keys, None) for c in planned]
        held = self.ledger.save_plan(self.batch, records, payloads=payloads)
        return len(records), held

    # ------------------------------------------------------------------ execution

    def execute(self) -> RunStats:
        self.confirmed()  # to execute is to go ahead: a --release-held now stands
        self.stats.started = self.clock()
        if self.options.deadline_seconds is not None:
            self._deadline = self.stats.started + self.options.deadline_seconds
        ledger = self.ledger
        if self.events is None and ledger.backend == "sqlite":
            # From here on the next group's `sending` may be committed on another thread
            # (`_mark_ahead`): every other use of the ledger waits for it first.
            self.ledger = cast(Ledger, _LedgerAfterCommit(ledger, self._ahead))
        try:
            try:
                self._resolve_unknown()
                self._submit_and_poll()
                self._ahead.join()
            except _Stopped:
                pass
            finally:
                try:
                    with suppress(_Stopped):
                        self._ahead.join()
                finally:
                    self._unmark_unsent()
        finally:
            self.ledger = ledger
        with suppress(_Stopped):  # a claimed order among them stops the run, as ever
            self._commit_deferred()
        self.stats.finished = self.clock()
        if self.stats.submit_started is not None and self.stats.submit_finished is None:
            self.stats.submit_finished = self.stats.finished
        return self.stats

    def _check_stop(self) -> None:
        if self.stop.is_set():
            self.stats.stopped = self.stats.stopped or "interrupted"
            raise _Stopped
        if self._deadline is not None and self.clock() >= self._deadline:
            self.stats.stopped = self.stats.stopped or "deadline"
            raise _Stopped

    # ------------------------------------------------------------------ commits

    def _defer(self, write: Callable[[], None]) -> None:
        """A ledger write whose loss in a crash is safe: committed with the next one."""
        self._deferred.append(write)

    @contextmanager
    def _committing(self, writes: list[Callable[[], None]] | None = None) -> Iterator[None]:
        """The writes in the block, with every deferred one before them (or `writes`,
        taken from them), in one commit."""
        with self.ledger.grouped():
            waiting = self._deferred if writes is None else writes
            while waiting:
                waiting.pop(0)()
            yield

    def _commit_deferred(self) -> None:
        if self._deferred:
            with self._committing():
                pass

    def _sleep(self, seconds: float) -> None:
        """Sleep, but wake for a stop request or the deadline."""
        if self._deadline is not None:
            seconds = min(seconds, max(0.0, self._deadline - self.clock()))
        if seconds > 0:
            self._wait(seconds)
        self._check_stop()

    def _paying_currency(self, chunk: ChunkRecord) -> str:
        """The wallet a chunk draws on: its payment currency when cross-currency."""
        first = self.ledger.rows_by_key(self.batch, chunk.row_keys[:1])[chunk.row_keys[0]]
        return first.fields.get("payment_currency") or chunk.currency

    def _is_blocked(self, chunk: ChunkRecord) -> bool:
        blocked = self.stats.blocked_currencies
        return bool(blocked) and self._paying_currency(chunk) in blocked

    def _resolve_unknown(self) -> None:
        for chunk in self.ledger.chunks(self.batch, ["unknown"]):
            self._check_stop()
            if self._is_blocked(chunk):
                continue
            self._send(chunk)

    def _submit_and_poll(self) -> None:
        self._commit_deferred()  # chunks resolved just now are accepted in what is read next
        queue = self.ledger.chunk_keys(self.batch, ["planned"])
        queue.reverse()  # pop() from the end keeps planned order
        polls: list[tuple[float, str]] = []
        delays: dict[str, float] = {}
        accepted_at: dict[str, float] = {}
        now = self.clock()
        for chunk in self.ledger.chunks(self.batch, ["accepted"]):
            self._accepted[chunk.chunk_key] = chunk
            if chunk.request_id:
                self._request_of[chunk.chunk_key] = chunk.request_id
            heapq.heappush(polls, (now, chunk.chunk_key))
            delays[chunk.chunk_key] = self.options.initial_poll_delay
            accepted_at[chunk.chunk_key] = now

        while queue or polls:
            self._check_stop()
            self._ahead.raise_if_failed()
            if self.events is not None and polls:
                self._commit_deferred()  # it reads the chunks' states
                self._settle_from_events(polls, accepted_at)
                if not (queue or polls):
                    break
            now = self.clock()
            poll_due = bool(polls) and polls[0][0] <= now
            # While there is still something to submit, polls take a small share, and only
            # once they have waited a little for the sends (`POLL_WAITS_FOR_SENDS`).
            poll_allowed = poll_due and (
                not queue
                or (
                    self.stats.polls < self.stats.submits * POLLS_PER_SUBMIT
                    and now - polls[0][0] >= POLL_WAITS_FOR_SENDS
                )
            )
            if poll_allowed:
                _, key = heapq.heappop(polls)
                self._poll_one(key, polls, delays, accepted_at)
                if len(self._deferred) >= FLUSH_AHEAD_WRITES:
                    self._flush_ahead()  # the settled chunks, while the next polls go on
                continue
            if queue:
                key = queue.pop()
                if key in self._ahead_keys:
                    self._ahead_keys = set()  # the group marked ahead is being sent now
                if key not in self._marked:
                    self._ahead.join()  # its group may be being committed just now
                if key not in self._marked:
                    found: ChunkRecord | None
                    try:
                        found = self.ledger.chunk(key)
                    except KeyError:
                        found = None  # discarded unsent after its currency ran out of funds
                    if found is None or found.state != "planned" or self._is_blocked(found):
                        if not queue:
                            self._sends_over()  # the last one is skipped: the sends are over
                        continue
                    self._mark_group(found, queue)
                chunk = self._marked[key]
                if self.stats.submit_started is None:
                    self.stats.submit_started = self.clock()
                result = self._send(chunk)
                if isinstance(self.ledger, _LedgerAfterCommit):
                    # the group's first answer is in: the next group's commit carries it
                    ahead = bool(queue) and not self._ahead_keys and self._mark_ahead(queue)
                    if not ahead and self._group_size == 1:
                        # sends wait (`_send`): their answers do not wait in memory
                        self._flush_ahead()
                if not queue:
                    self._sends_over()
                if result is not None and result.kind == "accepted":
                    delay = self._first_poll_delay
                    delays[key] = delay
                    accepted_at[key] = self.clock()
                    if self.events is not None:  # webhooks: first polls as they always were
                        if result.request_id:
                            self._request_of[key] = result.request_id
                            delays[key] = self.events.first_poll_delay(delay)
                        self._schedule(polls, key, delays[key])
                    else:
                        self._schedule_first(polls, key, accepted_at[key], delay)
                continue
            wait = polls[0][0] - now
            if self.events is not None:
                wait = min(wait, self.events.check_interval)
            if wait >= _COMMIT_BEFORE_WAITING:  # nothing waits in memory while the run idles
                self._commit_deferred()
            self._sleep(wait)

    def _sends_over(self) -> None:
        """Every planned chunk was sent or skipped: the run's end may start reading."""
        if self.stats.submit_started is not None:
            self.stats.submit_finished = self.clock()
        emit(self.listener, "sends_done")

    def _mark_group(self, first: ChunkRecord, queue: list[str]) -> None:
        """Commit `first` and the next planned chunks of `queue` (popped from its end)
        `sending`, in one durable commit with the writes that wait."""
        size = self._grow_group()
        self._mark_chunks(list(reversed(queue[max(0, len(queue) - (size - 1)) :])), first=first)

    def _grow_group(self) -> int:
        """The size of the group being marked; the next one doubles, up to the cap."""
        size, self._group_size = self._group_size, min(SEND_GROUP_CHUNKS, 2 * self._group_size)
        return size

    def _mark_ahead(self, queue: list[str]) -> bool:
        """Commit the next group `sending` on another thread while this group's requests
        (and polls) go on: a commit costs more than a request. A chunk's request still
        waits for its own group's commit (`_submit_and_poll` joins before it sends a
        chunk not yet marked), and every other use of the ledger waits for it too."""
        keys: list[str] = []
        for key in reversed(queue):
            if key not in self._marked:
                keys.append(key)
                if len(keys) == self._group_size:
                    break
        if not keys:
            return False
        self._grow_group()
        self._ahead_keys = set(keys)
        self._commit_on_thread(keys)
        return True

    def _flush_ahead(self) -> None:
        """Commit the writes that wait on the other thread, if it is free and may be used."""
        if self._deferred and self._ahead.idle and isinstance(self.ledger, _LedgerAfterCommit):
            self._commit_on_thread(())

    def _commit_on_thread(self, keys: Sequence[str]) -> None:
        """`keys` marked `sending` with the writes waiting now, on the other thread; what
        is deferred later goes in a later commit."""
        writes, self._deferred = self._deferred, []
        self._ahead.start(lambda: self._mark_chunks(keys, writes=writes))

    def _mark_chunks(
        self,
        keys: Sequence[str],
        first: ChunkRecord | None = None,
        writes: list[Callable[[], None]] | None = None,
    ) -> None:
        """Commit `first` and the planned chunks of `keys` `sending`, in one durable
        commit with the writes that wait (or `writes`, taken from them)."""
        group = [] if first is None else [first]
        for key in keys:
            if key in self._marked:
                continue
            try:
                chunk = self.ledger.chunk(key)
            except KeyError:
                continue
            if chunk.state == "planned" and not self._is_blocked(chunk):
                group.append(chunk)
        if not group and not writes:
            return
        with self._committing(writes):
            for chunk in group:
                self.ledger.mark_sending(self.batch, chunk.chunk_key)
        for chunk in group:
            self._marked[chunk.chunk_key] = chunk

    def _unmark_unsent(self) -> None:
        """Chunks committed `sending` whose request never left are planned again, as
        they were: nothing of theirs reached the provider."""
        self._ahead.join()
        self._ahead_keys = set()
        if self._marked:
            unsent = list(self._marked.values())
            with self._committing():
                self.ledger.unmark_sending(self.batch, unsent)
            self._marked.clear()

    def _schedule(self, polls: list[tuple[float, str]], key: str, delay: float) -> None:
        due = self.clock() + self._jitter(delay)
        self._poll_due[key] = due
        heapq.heappush(polls, (due, key))

    def _jitter(self, delay: float) -> float:
        return delay * self.rng.uniform(0.9, 1.1)

    @property
    def _first_poll_delay(self) -> float:
        """How long after its acceptance a chunk's first poll comes: the delay learned so
        far, never less than the run's initial one."""
        return max(self._learned_poll_delay, self.options.initial_poll_delay)

    def _schedule_first(
        self, polls: list[tuple[float, str]], key: str, accepted: float, delay: float
    ) -> None:
        """A chunk's first poll, `delay` after it was accepted and up to a fifth more
        (jitter); it keeps its jitter when the learned delay moves it
        (`_retime_first_polls`). Never before the delay: that is the provider's pace as
        learned so far, so a poll sooner would expect to find the request pending, and
        its back-off would come late."""
        factor = self.rng.uniform(1.0, 1.2)
        self._first_polls[key] = (accepted, factor)
        due = accepted + delay * factor
        self._poll_due[key] = due
        heapq.heappush(polls, (due, key))

    def _retime_first_polls(self, polls: list[tuple[float, str]], delays: dict[str, float]) -> None:
        """Move the first polls still to come to the learned delay after their chunk was
        accepted: every chunk sent before the first answer came back was timed with what
        was known then (20,000 UGiftMe rows: all 200 are sent before the first poll)."""
        delay = self._first_poll_delay
        self._timed_with = delay
        if not self._first_polls:
            return
        first = self._first_polls
        entries = []
        for due, key in polls:
            timing = first.get(key)
            if timing is not None:
                due = timing[0] + delay * timing[1]
                self._poll_due[key] = due
                delays[key] = delay
            entries.append((due, key))
        polls[:] = entries
        heapq.heapify(polls)

    def _learn(self, polls: list[tuple[float, str]], delays: dict[str, float]) -> None:
        """The learned delay moved: the first polls to come move with it once it has
        moved by more than `_RETIME_SHARE` of what they were timed with (so a run does
        not re-time them all for every answer)."""
        delay = self._first_poll_delay
        if abs(delay - self._timed_with) > _RETIME_SHARE * self._timed_with:
            self._retime_first_polls(polls, delays)

    # ------------------------------------------------------------------ sending

    def _items(self, chunk: ChunkRecord) -> list[OrderItem]:
        planned = self._planned_items.get(chunk.chunk_key)
        if planned is not None and [i.row_key for i in planned] == chunk.row_keys:
            return planned  # planned by this run from the rows as the ledger holds them
        rows = self.ledger.rows_by_key(self.batch, chunk.row_keys)
        return [order_item(rows[k]) for k in chunk.row_keys]

    def _send(self, chunk: ChunkRecord) -> SubmitResult | None:
        """Send a chunk until the provider gives a definite answer, then record it.

        Resends carry the same key and the exact stored bytes. Returns None when
        no definite answer came (the chunk stays `unknown` for the next run).
        A chunk of a group (`_mark_group`) is committed `sending` for its first attempt
        already.
        """
        items = self._items(chunk)
        if chunk.state == "unknown":
            try:
                self.stats.lookups += 1
                found = self.provider.lookup(
                    chunk.chunk_key,
                    items,
                    sent_after=parse_ts(chunk.first_sent_at),
                    claimed=self.ledger.claimed_request_ids(self.batch, chunk.chunk_key),
                )
            except OutcomeUnknown:
                found = None
            if found is not None:
                self._apply_submit(chunk, found)
                emit(self.listener, "submitted", len(chunk.row_keys))
                return found

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            hinted = exc.retry_after if isinstance(exc, OutcomeUnknown) else None
            backoff = min(30.0, 0.5 * 2 ** (state.attempt_number - 1)) * self.rng.uniform(0.5, 1.0)
            delay = max(backoff, hinted or 0.0)
            # Said out loud so a provider outage is not minutes of silence in the log;
            # tenacity asks for a wait after the last attempt too, which is no retry.
            if state.attempt_number < self.options.max_send_attempts:
                reason = exc.reason if isinstance(exc, OutcomeUnknown) else "no answer"
                emit(self.listener, "retrying", Retry(chunk.chunk_key, state.attempt_number,
                     self.options.max_send_attempts, reason, delay))  # fmt: skip
            return delay

        retrying = Retrying(
            retry=retry_if_exception_type(OutcomeUnknown),
            stop=stop_after_attempt(self.options.max_send_attempts),
            wait=wait,
            sleep=self._sleep,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    self._check_stop()
                    if self._marked.pop(chunk.chunk_key, None) is None:
                        with self._committing():  # durably sending before the request leaves
                            self.ledger.mark_sending(self.batch, chunk.chunk_key)
                    self.stats.submits += 1
                    submitted_at = self.clock()
                    try:
                        result = self.provider.submit(chunk.chunk_key, chunk.payload, items)
                        if self.clock() - submitted_at >= _COMMIT_BEFORE_WAITING:
                            self._group_size = 1
                    except IncompleteResult as exc:
                        self._settle_items(chunk, exc.items, "succeeded")
                        return None
                    except OutcomeUnknown as exc:
                        self.stats.unknown_outcomes += 1
                        with self._committing():
                            self.ledger.mark_unknown(self.batch, chunk.chunk_key, exc.reason)
                        raise
        except OutcomeUnknown as exc:
            self.listener.message(
                f"chunk {chunk.chunk_key}: no definite answer after "
                f"{self.options.max_send_attempts} tries ({exc.reason}); stopping, rerun to resolve"
            )
            self.stats.stopped = "provider_unavailable"
            raise _Stopped from None
        self._apply_submit(chunk, result)
        emit(self.listener, "submitted", len(chunk.row_keys))
        return result

    def _apply_submit(self, chunk: ChunkRecord, result: SubmitResult) -> None:
        key = chunk.chunk_key
        if result.kind == "accepted":
            request_id = result.request_id
            if not request_id:
                raise RuntimeError("provider accepted a chunk without an order request id")
            self._accepted[key] = dataclasses.replace(
                chunk, state="accepted", request_id=request_id
            )
            self._defer(lambda: self._record_accepted(key, request_id))
        elif result.kind == "completed":
            self._settle_items(chunk, result.items, "succeeded")
        elif result.kind == "insufficient_funds":
            self._block_currency(chunk, result)
        else:  # rejected: a definite 4xx; nothing was created
            self._fail_chunk(
                chunk,
                result.error_code or "rejected",
                result.error_message,
                provider_request_id=result.provider_request_id,
            )

    def _record_accepted(self, key: str, request_id: str) -> None:
        try:
            self.ledger.mark_accepted(self.batch, key, request_id)
        except OrderClaimed as exc:
            # Never let one provider order answer for two chunks: the chunk stays
            # unknown and the run stops for a person to look.
            self._accepted.pop(key, None)
            self.ledger.mark_unknown(self.batch, key, str(exc))
            self.listener.message(f"chunk {key}: {exc}; stopping, nothing was guessed")
            self.stats.stopped = "order_claimed_twice"
            raise _Stopped from None

    def _fail_chunk(
        self,
        chunk: ChunkRecord,
        code: str,
        message: str,
        *,
        provider_request_id: str | None = None,
        provider_status: str = "",
    ) -> None:
        """A definite failure of the whole chunk: every row fails with the same reason."""
        kind = failure_kind(code, message)
        outcomes = [
            RowOutcome(
                row_key=k,
                state="failed",
                failure_kind=kind,
                error_code=code,
                error_message=message,
                provider_request_id=provider_request_id,
                provider_status=provider_status or None,
            )
            for k in chunk.row_keys
        ]
        with self._committing():
            self.ledger.settle_chunk(
                self.batch, chunk.chunk_key, "failed", outcomes, error_code=code,
                error_message=message,
            )  # fmt: skip
        self.listener.advance(len(outcomes))

    def _block_currency(self, chunk: ChunkRecord, result: SubmitResult) -> None:
        """A 402 stops every further send in its currency; the rows wait for a top-up."""
        currency = result.currency or self._paying_currency(chunk)
        message = "insufficient funds"
        if result.required is not None and result.available is not None:
            message = (
                f"insufficient funds in the {currency} wallet: needed {result.required}, "
                f"available {result.available}"
            )
        outcomes = [
            RowOutcome(
                row_key=k,
                state="pending",
                failure_kind="retryable",
                error_code="insufficient_funds",
                error_message=message,
                release=True,
            )
            for k in chunk.row_keys
        ]
        with self._committing():
            self.ledger.settle_chunk(
                self.batch,
                chunk.chunk_key,
                "failed",
                outcomes,
                error_code="insufficient_funds",
                error_message=message,
            )
        self._unmark_unsent()  # planned again, so the currency's are discarded below
        waiting = [
            c.chunk_key
            for c in self.ledger.chunks(self.batch, ["planned"])
            if self._paying_currency(c) == currency
        ]
        self.ledger.discard_unsent_plans(self.batch, chunk_keys=waiting)
        self.ledger.mark_pending_reason(self.batch, currency, "insufficient_funds", message)
        self.stats.blocked_currencies[currency] = message
        self.listener.message(f"{message}; no more {currency} orders this run")

    # ------------------------------------------------------------------ polling

    def _poll_one(
        self,
        key: str,
        polls: list[tuple[float, str]],
        delays: dict[str, float],
        accepted_at: dict[str, float],
    ) -> None:
        chunk = self._accepted.get(key) or self.ledger.chunk(key)
        assert chunk.request_id is not None
        first = self._first_polls.pop(key, None)
        self.stats.polls += 1
        self.ledger.count_poll(key)
        polled_at = self.clock()
        try:
            result: PollResult = self.provider.poll(chunk.request_id, self._items(chunk))
        except IncompleteResult as exc:
            # The provider answered but did not account for every row: record what is
            # certain; the chunk stays unknown and is resent with the same key next run.
            self._settle_items(chunk, exc.items, "succeeded")
            return
        except OutcomeUnknown as exc:
            failures = self._poll_failures.get(key, 0) + 1
            self._poll_failures[key] = failures
            if failures >= self.options.max_poll_failures:
                # e.g. the provider no longer knows the request: resolve it next run by
                # resending the same key and bytes, which the provider deduplicates.
                self._accepted.pop(key, None)
                with self._committing():
                    self.ledger.mark_unknown(self.batch, key, f"polling failed: {exc.reason}")
                self.listener.message(
                    f"chunk {key}: polling failed {failures} times ({exc.reason})"
                )
                return
            result = PollResult(kind="pending")
        else:
            self._poll_failures.pop(key, None)
            if result.news_for_others and self.stats.submit_finished is not None:
                # all sent, and the others' answers are in the client's memory: ask at once
                now = self.clock()
                polls[:] = [(min(due, now), other) for due, other in polls]
                heapq.heapify(polls)
        if result.kind == "pending":
            if first is not None and not result.from_cache and result.ask_again_in is None:
                # Still not done this long after it was accepted: the provider is slower
                # than learned (a backlog grows), so the first polls to come wait a margin
                # more than that after their own chunk's acceptance (`PENDING_MARGIN`).
                # Unlike a completed poll, a late one tells as much as an early one.
                floor = (polled_at - first[0]) * PENDING_MARGIN
                if floor > self._learned_poll_delay:
                    self._learned_poll_delay = min(self.options.max_poll_delay, floor)
                    self._learn(polls, delays)
            # Back off from the provider, not from the client's own memory: a "pending"
            # read from what the client already held (GIFQ's order board) cost no request.
            previous = delays.get(key, 1.0)
            delay = (
                previous if result.from_cache else min(self.options.max_poll_delay, previous * 2)
            )
            delays[key] = delay
            soonest = delay if result.ask_again_in is None else min(delay, result.ask_again_in)
            self._schedule(polls, key, soonest)
            return
        # Learn how long the provider takes, so the next first poll lands after
        # completion. A first poll that finds its request done proves it took at most
        # that long: less than learned is learned (a moving average, and the first polls
        # to come move with it); more says nothing (it may have been done long before: a
        # poll that waited its turn behind others, or its jitter, would teach the run a
        # slower provider than it has). A slower one is learned from pending answers.
        if first is not None:
            elapsed = polled_at - first[0]
            if elapsed < self._learned_poll_delay:
                self._learned_poll_delay = 0.7 * self._learned_poll_delay + 0.3 * elapsed
                self._learn(polls, delays)
        elif self.events is not None and polled_at - self._poll_due.get(key, polled_at) < 0.5:
            # with webhooks, the fallback polls of requests whose event did not come
            # (only from polls that ran on time: a deferred poll overstates it)
            elapsed = polled_at - accepted_at.get(key, polled_at)
            self._learned_poll_delay = min(
                self.options.max_poll_delay, 0.7 * self._learned_poll_delay + 0.3 * elapsed
            )
        self._settle_polled(chunk, result)

    def _settle_polled(self, chunk: ChunkRecord, result: PollResult) -> None:
        """A terminal poll answer or webhook event: both settle the chunk alike."""
        if result.kind == "completed":
            self._settle_items(chunk, result.items, "succeeded")
            return
        self._fail_chunk(
            chunk,
            result.error_code or "request_failed",
            result.error_message,
            provider_status=result.provider_status,
        )

    def _settle_from_events(
        self, polls: list[tuple[float, str]], accepted_at: dict[str, float]
    ) -> None:
        """Settle every awaited order request whose terminal event has arrived, and
        drop its pending poll."""
        assert self.events is not None
        waiting = {self._request_of[k]: k for _, k in polls if k in self._request_of}
        arrived = self.events.arrived(waiting)
        settled: set[str] = set()
        for request_id, payload in arrived.items():
            key = waiting[request_id]
            chunk = self.ledger.chunk(key)
            if chunk.state != "accepted":
                settled.add(key)
                continue
            try:
                result = self.events.result(payload, self._items(chunk))
            except IncompleteResult as exc:
                self._settle_items(chunk, exc.items, "succeeded")
                settled.add(key)
                continue
            except OutcomeUnknown as exc:
                self.events.ignore(request_id)
                self.listener.message(f"chunk {key}: unreadable event ({exc.reason}); polling")
                continue
            if result.kind == "pending":
                self.events.ignore(request_id)
                continue
            elapsed = self.clock() - accepted_at.get(key, self.clock())
            self._learned_poll_delay = min(
                self.options.max_poll_delay, 0.7 * self._learned_poll_delay + 0.3 * elapsed
            )
            self.stats.settled_by_event += 1
            self._settle_polled(chunk, result)
            settled.add(key)
        if settled:
            polls[:] = [entry for entry in polls if entry[1] not in settled]
            heapq.heapify(polls)

    def _settle_items(self, chunk: ChunkRecord, items: Sequence[ItemResult], state: str) -> None:
        by_key: Mapping[str, ItemResult] = {i.row_key: i for i in items}
        outcomes: list[RowOutcome] = []
        for row_key in chunk.row_keys:
            item = by_key.get(row_key)
            if item is None or item.status == "pending":
                # Never guess: a row the provider did not answer for stays unresolved.
                outcomes.append(
                    RowOutcome(
                        row_key=row_key,
                        state="unknown",
                        error_code="no_result",
                        error_message="the provider's result did not account for this row",
                    )
                )
            elif item.status == "succeeded":
                outcomes.append(
                    RowOutcome(
                        row_key=row_key,
                        state="succeeded",
                        order_id=item.order_id,
                        transaction_id=item.transaction_id,
                        cost=item.cost,
                        cost_currency=item.cost_currency,
                        voucher_last4=voucher_last4(item.voucher_code),
                        provider_status=item.provider_status,
                    )
                )
            else:
                outcomes.append(
                    RowOutcome(
                        row_key=row_key,
                        state="failed",
                        failure_kind=failure_kind(item.error_code, item.error_message),
                        error_code=item.error_code or "item_rejected",
                        error_message=item.error_message,
                        provider_request_id=item.request_id,
                        provider_status=item.provider_status,
                    )
                )
        if any(out.state == "unknown" for out in outcomes):
            # An answer that does not account for every row leaves the chunk unknown:
            # the next run resends the same key and bytes, which the provider
            # deduplicates, and settles the rest from that full answer.
            state = "unknown"
        self._accepted.pop(chunk.chunk_key, None)
        key, settled = chunk.chunk_key, sum(1 for out in outcomes if out.state != "unknown")

        def record() -> None:
            self.ledger.settle_chunk(self.batch, key, state, outcomes)
            self.listener.advance(settled)

        self._defer(record)


def row_need(r: PlanSource) -> Need:
    """A whole ledger row's claim on its paying wallet (as `funds_need` makes it)."""
    paying = r.fields.get("payment_currency")
    return funds_need(r.source_row, r.row_key, r.currency, r.face_value, r.est_cost, paying)
