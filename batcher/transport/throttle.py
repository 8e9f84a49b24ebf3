"""Client-side rate limiting: one limiter per API key, shared by submits and polls.

The limiter starts from the provider profile's rate and then learns from the
rate-limit headers of every response:

- `RateLimit-Limit/Remaining/Reset` (reset = seconds until the window resets) or
  the `X-RateLimit-*` family (where reset may be an epoch timestamp);
- `Retry-After` (seconds or an HTTP date), honoured exactly: never sooner.

While a window is known, the remaining budget is spread evenly over the time
left in it, keeping a small reserve for requests already in flight, so a long
run stays near the limit without crossing it. A provider that sends no
remaining headers (GIFQ) is paced by the configured rate alone. After a 429 the
pace is halved for a while (15 s past the Retry-After), and halved again on a
further 429, down to a quarter.

Every request goes through `acquire()` and then exactly one of `observe()`
(a response came back) or `release()` (no response: transport error).
The clock and the sleeper are injectable so tests run on fake time.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from pydantic import SecretStr

Clock = Callable[[], float]
Sleeper = Callable[[float], None]

#: A reset value above this is an epoch timestamp, not a number of seconds.
EPOCH_THRESHOLD = 1e9
#: Two reset instants closer than this belong to the same window (resets are whole seconds).
_SAME_WINDOW_TOLERANCE = 1.0
_MAX_PENALTY_FACTOR = 2.0  # after 429s, at most half the learned pace


@dataclass(frozen=True)
class RateLimitInfo:
    """What one response said about the rate limit. Durations are seconds from now."""

    limit: int | None = None
    remaining: int | None = None
    reset_after: float | None = None
    retry_after: float | None = None


def _lowercase(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def _parse_int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(float(value.split(",")[0].strip()))
    except ValueError:
        return None


def _parse_seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def parse_reset(value: str | None, *, now_epoch: float) -> float | None:
    """Seconds until the window resets. A value above 1e9 is an epoch timestamp."""
    seconds = _parse_seconds(value)
    if seconds is None:
        return None
    if seconds > EPOCH_THRESHOLD:
        return max(0.0, seconds - now_epoch)
    return seconds


def parse_retry_after(value: str | None, *, now_epoch: float) -> float | None:
    """`Retry-After` as seconds from now: either delta-seconds or an HTTP date."""
    if value is None or not value.strip():
        return None
    seconds = _parse_seconds(value)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now_epoch)


def parse_rate_limit_headers(headers: Mapping[str, str], *, now_epoch: float) -> RateLimitInfo:
    """Read the IETF `RateLimit-*` headers, falling back to the `X-RateLimit-*` family."""
    lowered = _lowercase(headers)

    def pick(suffix: str) -> str | None:
        return lowered.get(f"ratelimit-{suffix}", lowered.get(f"x-ratelimit-{suffix}"))

    return RateLimitInfo(
        limit=_parse_int(pick("limit")),
        remaining=_parse_int(pick("remaining")),
        reset_after=parse_reset(pick("reset"), now_epoch=now_epoch),
        retry_after=parse_retry_after(lowered.get("retry-after"), now_epoch=now_epoch),
    )


@dataclass(frozen=True)
class ThrottleStats:
    """What the limiter did, so a run can report its achieved request rate."""

    requests: int
    throttled: int  # 429 responses received
    waited_seconds: float
    first_request_at: float | None
    last_request_at: float | None
    limit: int | None  # the provider's advertised limit per window, when it sends one

    @property
    def achieved_rate(self) -> float | None:
        """Requests per second between the first and the last request."""
        if self.requests < 2 or self.first_request_at is None or self.last_request_at is None:
            return None
        span = self.last_request_at - self.first_request_at
        return (self.requests - 1) / span if span > 0 else None


class RateLimiter:
    """A thread-safe pacer for one API key.

    `rate_per_second` is where pacing starts (the profile's default) and what it
    falls back to when no window is known; `max_rate` is a hard cap that header
    learning never exceeds.
    """

    def __init__(
        self,
        rate_per_second: float,
        *,
        max_rate: float | None = None,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        sleep: Sleeper = time.sleep,
        reserve_requests: int = 1,
        reset_margin: float = 0.1,
        penalty_seconds: float = 5.0,
        default_retry_after: float = 1.0,
    ) -> None:
        if rate_per_second <= 0:
            raise ValueError("rate_per_second must be positive")
        if max_rate is not None and max_rate <= 0:
            raise ValueError("max_rate must be positive")
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._reserve = reserve_requests  # requests kept back for ones already in flight
        self._reset_margin = reset_margin  # resets come in whole seconds; don't arrive early
        self._penalty_seconds = penalty_seconds
        self._default_retry_after = default_retry_after
        self._lock = threading.Lock()

        self._min_interval = 1.0 / max_rate if max_rate else 0.0
        self._base_interval = max(1.0 / rate_per_second, self._min_interval)

        self._next_slot = 0.0  # no request may start before this
        self._last_start = 0.0
        self._blocked_until = 0.0  # hard stop from Retry-After or an exhausted window
        self._generation = 0  # bumped on every hard stop, to re-queue sleeping callers
        self._outstanding = 0  # acquired, no response yet
        self._window_reset_at: float | None = None
        self._window_remaining: int | None = None  # our estimate, counting outstanding requests
        self._limit: int | None = None
        self._longest_reset = 0.0  # the longest reset seen approximates the window length
        self._penalty_factor = 1.0
        self._penalty_until = 0.0

        self._requests = 0
        self._throttled = 0
        self._waited = 0.0
        self._first_at: float | None = None
        self._last_at: float | None = None

    # ------------------------------------------------------------------ public

    def acquire(self) -> float:
        """Block until the next request may start. Returns the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                slot = self._reserve_slot(now)
                generation = self._generation
            if slot > now:
                self._sleep(slot - now)
                waited += slot - now
            with self._lock:
                if generation == self._generation or slot >= self._blocked_until:
                    self._record_start(slot, waited)
                    return waited
                # A 429 or an exhausted window stopped traffic while we slept: queue again.
                self._outstanding -= 1

    def observe(self, status_code: int, headers: Mapping[str, str]) -> RateLimitInfo:
        """Learn from a response to a request that went through `acquire()`."""
        info = parse_rate_limit_headers(headers, now_epoch=self._wall_clock())
        with self._lock:
            now = self._clock()
            self._outstanding = max(0, self._outstanding - 1)
            if info.limit is not None:
                self._limit = info.limit
            self._learn_advertised_rate(info)
            if info.remaining is not None and info.reset_after is not None:
                self._learn_window(now, info.remaining, info.reset_after)
            if status_code == 429:
                self._on_too_many_requests(now, info)
            elif info.retry_after is not None and status_code >= 500:
                self._block_until(now + info.retry_after)
        return info

    def release(self) -> None:
        """The request got no response (transport error): stop counting it as in flight."""
        with self._lock:
            self._outstanding = max(0, self._outstanding - 1)

    def cap(self, max_rate: float) -> None:
        """Tighten the hard cap (a second user of the same key asked for less)."""
        if max_rate <= 0:
            raise ValueError("max_rate must be positive")
        with self._lock:
            self._min_interval = max(self._min_interval, 1.0 / max_rate)
            self._base_interval = max(self._base_interval, self._min_interval)

    def stats(self) -> ThrottleStats:
        with self._lock:
            return ThrottleStats(
                requests=self._requests,
                throttled=self._throttled,
                waited_seconds=self._waited,
                first_request_at=self._first_at,
                last_request_at=self._last_at,
                limit=self._limit,
            )

    # ----------------------------------------------------------------- pacing

    def _reserve_slot(self, now: float) -> float:
        """Claim the earliest allowed start time and push the next one back."""
        start = max(now, self._next_slot, self._blocked_until)
        if start >= self._penalty_until:
            self._penalty_factor = 1.0
        self._next_slot = start + self._interval_after(start)
        self._outstanding += 1
        if self._window_remaining is not None and self._window_reset_at is not None:
            if start < self._window_reset_at:
                self._window_remaining -= 1
            else:  # that window is over; the next response describes the new one
                self._window_remaining = None
                self._window_reset_at = None
        return start

    def _interval_after(self, start: float) -> float:
        """How long after a request starting at `start` the next one may start."""
        interval = self._base_interval
        if self._window_reset_at is not None and self._window_remaining is not None:
            time_left = self._window_reset_at - start
            # The request starting now is not yet counted in _window_remaining.
            budget = self._window_remaining - 1 - self._reserve
            if time_left > 0:
                if budget <= 0:
                    return time_left + self._reset_margin
                interval = time_left / budget
        return max(interval, self._min_interval) * self._penalty_factor

    def _learn_advertised_rate(self, info: RateLimitInfo) -> None:
        """Between windows, pace at the advertised limit / window rather than the
        profile's guess: a 20-per-second key should not crawl at 2 per second."""
        if info.reset_after is not None:
            self._longest_reset = max(self._longest_reset, info.reset_after)
        if self._limit and self._longest_reset > 0:
            self._base_interval = max(self._longest_reset / self._limit, self._min_interval)

    def _learn_window(self, now: float, remaining: int, reset_after: float) -> None:
        reset_at = now + reset_after
        # Requests still in flight may not be counted in this response's figure yet.
        estimate = remaining - self._outstanding
        same_window = (
            self._window_reset_at is not None
            and abs(reset_at - self._window_reset_at) < _SAME_WINDOW_TOLERANCE
        )
        if same_window and self._window_remaining is not None:
            # Responses can arrive out of order, and a reset in whole seconds is rounded
            # up: within one window, the lowest figures are the truest.
            assert self._window_reset_at is not None
            self._window_remaining = min(self._window_remaining, estimate)
            self._window_reset_at = min(self._window_reset_at, reset_at)
        else:
            self._window_remaining = estimate
            self._window_reset_at = reset_at
        # Re-pace from the last start, so a tighter budget applies to the very next request.
        self._next_slot = max(self._next_slot, self._last_start + self._interval_after(now))
        if remaining <= 0:
            self._block_until(reset_at + self._reset_margin)

    def _on_too_many_requests(self, now: float, info: RateLimitInfo) -> None:
        self._throttled += 1
        if info.retry_after is not None:
            wait = info.retry_after  # exactly as told: never sooner
        elif info.reset_after is not None:
            wait = info.reset_after + self._reset_margin
        else:
            wait = max(self._default_retry_after, self._base_interval)
        until = now + wait
        self._block_until(until)
        # Back off harder: halve the pace for a while, and again on every further 429.
        self._penalty_factor = min(self._penalty_factor * 2.0, _MAX_PENALTY_FACTOR)
        self._penalty_until = max(self._penalty_until, until + self._penalty_seconds)

    def _block_until(self, until: float) -> None:
        if until > self._blocked_until:
            self._blocked_until = until
            self._next_slot = max(self._next_slot, until)
            self._generation += 1

    def _record_start(self, slot: float, waited: float) -> None:
        now = self._clock()
        self._last_start = slot
        self._requests += 1
        self._waited += waited
        if self._first_at is None:
            self._first_at = now
        self._last_at = now


# ---------------------------------------------------------------------------
# One limiter per API key, process-wide.

_registry: dict[str, RateLimiter] = {}
_registry_lock = threading.Lock()


def key_fingerprint(api_key: str | SecretStr) -> str:
    """A short, non-reversible name for a key: the registry never holds the key itself."""
    raw = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:16]


def limiter_for(
    api_key: str | SecretStr, *, rate_per_second: float, max_rate: float | None = None
) -> RateLimiter:
    """The shared limiter of this key, created on first use."""
    fingerprint = key_fingerprint(api_key)
    with _registry_lock:
        limiter = _registry.get(fingerprint)
        if limiter is None:
            limiter = RateLimiter(rate_per_second, max_rate=max_rate)
            _registry[fingerprint] = limiter
        elif max_rate is not None:
            limiter.cap(max_rate)
        return limiter


def forget_limiters() -> None:
    """Drop every shared limiter (tests start each case from a clean slate)."""
    with _registry_lock:
        _registry.clear()
