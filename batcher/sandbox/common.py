"""Provider-agnostic sandbox machinery, shared by every provider simulator.

Everything here is synchronous and free of `await` on purpose: uvicorn runs one
event loop, so a read-modify-write that never yields is atomic. The only async
pieces are the delayed-task scheduler and the connection-dropping response,
which touch no shared state while suspended.

- `FixedWindowRateLimiter`: one fixed window per bucket (an API key or an IP).
- `FaultInjector`: seeded fault rolls from one `random.Random`, plus 429 bursts.
- `DroppedResponse`: commits nothing itself; it starts a response and cuts it short,
  so the client sees a transport error after the server has committed.
- `RequestLog`: what every client did, with monotonic timestamps, for assertions.
- `DelayedTaskScheduler`: runs callbacks at due times from one asyncio task.
- `ReversedView`: newest-first paging over an oldest-first list without a copy.

Decimal-exact JSON lives in `batcher.sandbox.jsonio`, idempotency keys in
`batcher.sandbox.idempotency`.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import os
import random
import secrets
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar, overload

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

Clock = Callable[[], float]
T = TypeVar("T")

# ---------------------------------------------------------------------------
# Configuration inputs.


def money_input(raw: object) -> Decimal:
    """Decimal from Decimal, int or str (never float); finite or ValueError."""
    if isinstance(raw, float):
        raise TypeError("money must be given as Decimal, int or str, never float")
    if isinstance(raw, Decimal | int | str) and not isinstance(raw, bool):
        try:
            value = Decimal(str(raw).strip())
        except InvalidOperation:
            raise ValueError(f"{raw!r} is not an amount") from None
        if value.is_finite():
            return value
    raise ValueError(f"{raw!r} is not an amount")


def unique_api_keys(api_keys: str | Iterable[str]) -> tuple[str, ...]:
    """The configured keys, deduplicated in order; none given: one random UUID key."""
    if isinstance(api_keys, str):
        api_keys = (api_keys,)
    return tuple(dict.fromkeys(api_keys)) or (str(uuid.uuid4()),)


def merge_funding(
    defaults: Mapping[str, Decimal], given: Mapping[str, Decimal | int | str]
) -> dict[str, Decimal]:
    """Starting balances: the given ones (currency upper-cased) over the defaults."""
    return {**defaults, **{cur.upper(): money_input(amount) for cur, amount in given.items()}}


# ---------------------------------------------------------------------------
# Ids and timestamps.

_OBJECT_ID_COUNTER = itertools.count(secrets.randbelow(0xFFFFFF))
_OBJECT_ID_PROCESS = os.urandom(5)
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def object_id() -> str:
    """A 24-hex id shaped like a MongoDB ObjectId: time, process, counter."""
    seconds = int(time.time()).to_bytes(4, "big")
    counter = (next(_OBJECT_ID_COUNTER) & 0xFFFFFF).to_bytes(3, "big")
    return (seconds + _OBJECT_ID_PROCESS + counter).hex()


def ulid() -> str:
    """26 Crockford base32 characters: 48-bit milliseconds then 80 random bits."""
    number = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    chars = []
    for _ in range(26):
        number, digit = divmod(number, 32)
        chars.append(_CROCKFORD[digit])
    return "".join(reversed(chars))


def iso_now() -> str:
    return iso_timestamp(datetime.now(UTC))


def iso_timestamp(moment: datetime) -> str:
    """ISO-8601 UTC with milliseconds and a Z: 2025-01-15T09:30:00.123Z."""
    return (
        moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    )


# ---------------------------------------------------------------------------
# Rate limiting.


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int  # whole seconds until the window resets, rounded up

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
        }


@dataclass
class _Window:
    started: float
    count: int = 0


class FixedWindowRateLimiter:
    """A fixed window per bucket, opened by the first request after the last one closed.

    Every request counts, including refused ones, as in express-rate-limit.
    """

    def __init__(self, limit: int, window_seconds: float, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[str, _Window] = {}
        self.limit = limit
        self.window_seconds = window_seconds
        self.configure(limit, window_seconds)

    def configure(self, limit: int, window_seconds: float) -> None:
        if limit < 1 or window_seconds <= 0:
            raise ValueError("the rate limit needs at least 1 request per positive window")
        self.limit = limit
        self.window_seconds = window_seconds
        self._windows.clear()

    def hit(self, bucket: str) -> RateDecision:
        """Count one request in the bucket and say whether it is allowed."""
        now = self._clock()
        window = self._current_window(bucket, now)
        window.count += 1
        return self._decision(window, now)

    def peek(self, bucket: str) -> RateDecision:
        """The bucket's state without counting a request."""
        now = self._clock()
        return self._decision(self._current_window(bucket, now), now)

    def _current_window(self, bucket: str, now: float) -> _Window:
        window = self._windows.get(bucket)
        if window is None or now >= window.started + self.window_seconds:
            window = _Window(started=now)
            self._windows[bucket] = window
        return window

    def _decision(self, window: _Window, now: float) -> RateDecision:
        reset = max(1, math.ceil(window.started + self.window_seconds - now))
        return RateDecision(
            allowed=window.count <= self.limit,
            limit=self.limit,
            remaining=max(0, self.limit - window.count),
            reset_seconds=reset,
        )

    def reset(self) -> None:
        self._windows.clear()


# ---------------------------------------------------------------------------
# Fault injection.

FAULT_KINDS = ("500", "429", "latency", "drop", "reject_item", "async_fail")


@dataclass
class FaultSettings:
    """Probabilities in [0, 1] for each fault, plus the knobs that shape them."""

    rates: dict[str, float] = field(default_factory=lambda: dict.fromkeys(FAULT_KINDS, 0.0))
    latency_ms: int = 250
    burst_seconds: float = 1.0  # how long a 429 burst keeps refusing a key
    seed: int | None = None
    # Not a rate: while on, error texts repeat the caller's credential, as a careless
    # provider's might, so tests can prove the client scrubs provider text.
    echo_credentials: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "rates": {kind: Decimal(str(rate)) for kind, rate in self.rates.items()},
            "latencyMs": self.latency_ms,
            "burstSeconds": Decimal(str(self.burst_seconds)),
            "seed": self.seed,
            "echoCredentials": self.echo_credentials,
        }


def fault_settings_for(config: Any, kinds: Iterable[str]) -> FaultSettings:
    """FaultSettings from a sandbox config's `fault_<kind>` rates (each checked to lie
    in 0..1), `latency_ms`, `burst_seconds`, `seed` and `echo_credentials`."""
    rates = {kind: getattr(config, f"fault_{kind}") for kind in kinds}
    for kind, rate in rates.items():
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"fault rate for {kind!r} must be within 0..1")
    return FaultSettings(
        rates=rates,
        latency_ms=config.latency_ms,
        burst_seconds=config.burst_seconds,
        seed=config.seed,
        echo_credentials=config.echo_credentials,
    )


class FaultInjector:
    """Rolls every fault from a single seeded `random.Random`, so a run can be replayed.

    A zero rate never consumes randomness, so switching one fault on leaves the
    sequence of the others unchanged from run to run.
    """

    def __init__(self, settings: FaultSettings, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._bursts: dict[str, float] = {}  # bucket -> monotonic time the burst ends
        self.settings = settings
        self.counts: Counter[str] = Counter()
        self._rng = random.Random(settings.seed)

    def update(
        self,
        rates: Mapping[str, float] | None = None,
        *,
        latency_ms: int | None = None,
        burst_seconds: float | None = None,
        seed: int | None = None,
        reseed: bool = False,
        echo_credentials: bool | None = None,
    ) -> None:
        known = self.settings.rates  # a provider may add kinds of its own to its settings
        for kind, rate in (rates or {}).items():
            if kind not in known:
                raise ValueError(f"unknown fault {kind!r}; known: {', '.join(known)}")
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"fault rate for {kind!r} must be within 0..1")
            self.settings.rates[kind] = rate
        if latency_ms is not None:
            if latency_ms < 0:
                raise ValueError("latency must not be negative")
            self.settings.latency_ms = latency_ms
        if burst_seconds is not None:
            if burst_seconds <= 0:
                raise ValueError("the 429 burst must last a positive time")
            self.settings.burst_seconds = burst_seconds
        if reseed:
            self.settings.seed = seed
            self._rng = random.Random(seed)
        if echo_credentials is not None:
            self.settings.echo_credentials = echo_credentials

    def echo(self, text: str, credential: str) -> str:
        """`text` as a careless provider writes it while `echo_credentials` is on: with
        the caller's credential in it. Unchanged otherwise."""
        if not self.settings.echo_credentials:
            return text
        self.counts["echo_credentials"] += 1
        return f"{text} (request made with credential {credential})"

    def roll(self, kind: str) -> bool:
        rate = self.settings.rates.get(kind, 0.0)
        if rate <= 0.0:
            return False
        hit = rate >= 1.0 or self._rng.random() < rate
        if hit:
            self.counts[kind] += 1
        return hit

    def burst_retry_after(self, bucket: str) -> int | None:
        """Seconds a bucket must wait when it is inside a 429 burst (or a new one starts)."""
        now = self._clock()
        ends = self._bursts.get(bucket)
        if ends is not None and now < ends:
            self.counts["429_burst_followup"] += 1
            return max(1, math.ceil(ends - now))
        if self.roll("429"):
            ends = now + self.settings.burst_seconds
            self._bursts[bucket] = ends
            return max(1, math.ceil(ends - now))
        return None

    @property
    def latency_seconds(self) -> float:
        return self.settings.latency_ms / 1000.0

    def reset(self, settings: FaultSettings) -> None:
        self.settings = settings
        self._rng = random.Random(settings.seed)
        self._bursts.clear()
        self.counts.clear()


# ---------------------------------------------------------------------------
# Dropping a connection after the server committed.


class DroppedResponse(Response):
    """Starts a response, sends part of the body, then returns without finishing.

    The Content-Length promises more bytes than are sent, so the server closes
    the connection and the client sees a protocol error, although everything
    the request did has already been committed.
    """

    def __init__(self, body: bytes, status_code: int, headers: Mapping[str, str]) -> None:
        super().__init__(content=body, status_code=status_code, headers=dict(headers))
        self.headers["content-length"] = str(len(body) + 64)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        await send(
            {
                "type": "http.response.body",
                "body": self.body[: len(self.body) // 2],
                "more_body": True,
            }
        )
        # Returning here leaves the response incomplete; the server closes the socket.


DROPPED_CONNECTION_LOG_MESSAGE = "ASGI callable returned without completing response."


# ---------------------------------------------------------------------------
# Request log.


@dataclass(frozen=True)
class LoggedRequest:
    seq: int
    at: float  # monotonic seconds since the sandbox started
    bucket: str  # the API key, or "ip:<address>" for unauthenticated calls
    method: str
    path: str
    status: int
    retry_after: int | None
    fault: str | None
    query: str = ""  # the raw query string, e.g. "page=2&limit=20"

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "t": Decimal(f"{self.at:.6f}"),
            "apiKey": self.bucket,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "status": self.status,
            "retryAfter": self.retry_after,
            "fault": self.fault,
        }


class RequestLog:
    """A bounded log of API requests plus counters that never roll over."""

    def __init__(self, capacity: int = 200_000, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._origin = clock()
        self._entries: deque[LoggedRequest] = deque(maxlen=capacity)
        self._seq = itertools.count(1)
        self.requests_by_bucket: Counter[str] = Counter()
        self.too_many_by_bucket: Counter[str] = Counter()
        self.status_counts: Counter[int] = Counter()

    def record(
        self,
        bucket: str,
        method: str,
        path: str,
        status: int,
        retry_after: int | None,
        fault: str | None,
        query: str = "",
    ) -> None:
        at = self._clock() - self._origin
        self._entries.append(
            LoggedRequest(
                next(self._seq), at, bucket, method, path, status, retry_after, fault, query
            )
        )
        self.requests_by_bucket[bucket] += 1
        self.status_counts[status] += 1
        if status == 429:
            self.too_many_by_bucket[bucket] += 1

    def entries(self, since_seq: int = 0) -> list[LoggedRequest]:
        return [entry for entry in self._entries if entry.seq > since_seq]

    def clear(self) -> None:
        self._entries.clear()
        self.requests_by_bucket.clear()
        self.too_many_by_bucket.clear()
        self.status_counts.clear()


# ---------------------------------------------------------------------------
# Delayed work on the event loop.


@dataclass(order=True)
class _Scheduled:
    due: float
    seq: int
    callback: Callable[[], None] = field(compare=False)


class DelayedTaskScheduler:
    """Runs plain callbacks at monotonic due times from one asyncio task.

    Callbacks run on the event loop without awaiting, so each is atomic with
    respect to request handlers.
    """

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._heap: list[_Scheduled] = []
        self._seq = itertools.count()
        self._wake: asyncio.Event | None = None
        self.errors: list[str] = []

    def call_later(self, delay_seconds: float, callback: Callable[[], None]) -> None:
        heapq.heappush(
            self._heap,
            _Scheduled(self._clock() + max(0.0, delay_seconds), next(self._seq), callback),
        )
        if self._wake is not None:
            self._wake.set()

    def clear(self) -> None:
        self._heap.clear()

    def pending(self) -> int:
        return len(self._heap)

    async def run(self) -> None:
        self._wake = asyncio.Event()
        while True:
            self._run_due()
            timeout = self._heap[0].due - self._clock() if self._heap else None
            self._wake.clear()
            with contextlib.suppress(TimeoutError):  # a timeout just means work is due
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _run_due(self) -> None:
        now = self._clock()
        while self._heap and self._heap[0].due <= now:
            task = heapq.heappop(self._heap)
            try:
                task.callback()
            except Exception as exc:  # keep the worker alive; surface the bug in stats
                self.errors.append(f"{type(exc).__name__}: {exc}")


def parse_bool(raw: str | None) -> bool | None:
    """Query-string booleans: true/false/1/0, case-insensitive; None when absent."""
    if raw is None:
        return None
    lowered = raw.strip().lower()
    if lowered in {"true", "1", "yes"}:
        return True
    if lowered in {"false", "0", "no"}:
        return False
    raise ValueError(f"{raw!r} is not a boolean")


# ---------------------------------------------------------------------------
# Listing helpers.


class ReversedView(Sequence[T]):
    """A read-only newest-first view of an oldest-first list, without copying it.

    Listings page through it with `len` and one slice per page, so a page costs
    O(page size) instead of a reversed copy of the whole list. It reads the list
    live: take `len` and the slice in one synchronous stretch.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Sequence[T]) -> None:
        self._items = items

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> list[T]: ...

    def __getitem__(self, index: int | slice) -> T | list[T]:
        items = self._items
        positions = range(len(items) - 1, -1, -1)
        if isinstance(index, slice):
            return [items[i] for i in positions[index]]
        return items[positions[index]]
