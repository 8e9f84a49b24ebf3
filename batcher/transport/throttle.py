"""Client-side rate limiting: one limiter per API key, shared by submits and polls.

The limiter starts from the provider profile's rate and then learns from the
rate-limit headers of every response:

- `RateLimit-Limit/Remaining/Reset` (reset = seconds until the window resets) or
  the `X-RateLimit-*` family (where reset may be an epoch timestamp);
- `Retry-After` (seconds or an HTTP date), honoured exactly: never sooner.

Policy. While the provider advertises a window, its remaining budget is spent
back to back (as fast as `max_rate` allows) down to twice a safety margin; the
next margin's worth is spread evenly over the time left to the reset; the last
margin (2% of the limit, at least one request, never the whole limit) is left
for anyone else using the key (a `batcher status` during a run, say), and
nothing more is sent until the reset (or until the own log shows one of our
requests has left a sliding window, below). The limiter does not know how much work
is queued; this never idles while real budget is left, and the spread tail
costs at most one window at the very end:

    remaining
    limit ┤█                                       █
          │ █  burst: back to back                  █
          │  █                                       █
 2×margin ┤···█ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ █
          │      █      spread      █                 ...
   margin ┤·····························█ (kept back)
        0 ┼──────────────────────────────────────┬──────────> time
                                               reset (+0.1 s): next window

A spent window may end before its reset by the limiter's own log. A sliding
window frees a slot when the request in it leaves, and its reset (time until the
oldest leaves, in whole seconds, rounded up) can be up to a second late each
time; waiting for it used as little as 83% of the budget. So the limiter logs its
recent requests (sent, answered), and while the window is spent the next request
may leave once the `share`-th newest of ours was answered more than a window
length (the longest reset seen) plus 20 ms ago: `share` is the limit less the
margin less the other users' requests the latest answer counted. A request
reaches the server before its answer leaves it, so then at most `share` of ours
are in any window of that length holding the next one: a sliding window, one
opened by a first request or one aligned to the clock. The resume is never more
than the reset's rounding (1 s) before the advertised reset, nor sooner than
`max_rate` allows; there is none during a 429's slow-down, nor for limits above
the log's 10,000 requests.

Each answer is held against the log: a sliding window's count (limit less
remaining) holds the answered request and every request of ours answered before
it was sent and sent less than a window before the answer. More is other users'
(lowering `share`); fewer shows a window that resets as a whole, where the count
says nothing of others and the reset is the truth: the log rule is off from then
on, and only the reset (+0.1 s) ends a spent window, as above.

    sliding, limit 113 per 5 s: each burst is mirrored one window (+20 ms) after
    the answers to the last, 110 of 113 per window (the margin kept back)

    sent  ███  ·  ·  ·   ███  ·  ·  ·   ███ ...
          0 s             5.02 s        10.04 s

The remaining figure is our estimate: the provider's latest figure minus the
requests still in flight, lowered by every request we start, and within one
window only ever lowered by the answers (they can arrive out of order; a reset
in whole seconds is rounded up, so the earliest reset seen is the truest). An
answer naming an earlier window is stale and ignored. Once the reset has
passed, the window is forgotten until an answer describes the next one.

Without an advertised window (GIFQ sends only `Retry-After`; or the window just
closed), requests are paced at the configured rate, or at the advertised limit /
window length once a window has been seen, unless the provider documents its
window (`DocumentedWindow`: GIFQ's 10 requests per second). Then the limiter
keeps a log of its last `limit` requests and sends back to back until the log
is full; request n + limit leaves only `seconds` (plus a 2 ms margin) after the
*answer* to request n came back. A request reaches the server before its answer
leaves it, so any `seconds`-long stretch of the server's clock holds at most
`limit` of our requests, whatever the window's phase, the round trips or a late
start: a fixed window opened by its first request, clock-aligned windows and a
sliding window all see at most `limit`. With requests one after another that is
`limit` per (`seconds` + one round trip), the documented rate less a round trip:

    requests  1 2 3 … 10 |          | 11 12 … 20 |          | 21 …
              ──────────────────────────────────────────────────────> time
                 ↑ answer to 1      ↑ answer to 1 + 1 s: 11 may leave

An answer that has not come back yet holds its slot: while any request is in
flight, none of the in-flight ones is taken as answered (answers may arrive out
of order), so a full log waits until they all are. `max_rate` (`--max-rate`)
caps every mode. After a 429 nothing is sent before its `Retry-After` (or the
window's reset); then, for 5 s past it, bursting stops and the pace is halved
(halved once, however many 429s follow).

Nothing is reserved ahead: each `acquire()` decides from what is known at that
moment, so an answer that arrives between two requests (the first window of a
run, for one) applies to the very next request.

Every request goes through `acquire()` and then exactly one of `observe()`
(a response came back) or `release()` (no response: transport error).
The clock and the sleeper are injectable so tests run on fake time.

Shared budgets. Processes that use one key (two runs, two machines) each have
their own limiter, and none of them sees the others' requests until the
provider's answers show them, too late at the end of a window. With a
`SharedPace` (a PostgreSQL ledger gives one: `ledger/rate_slots.py`), every
request also takes the next slot of one schedule per key, kept by the
database on its own clock, before it leaves: slots are `interval` apart
whatever process takes them, so together the processes never exceed one
key's rate. The interval is the advertised window divided by the limit less
the margin (98% of the limit at 600/60), or the configured pace while no
window is known; a 429's slow-down stretches it too. The local policy above
still applies on top. The key is named by a SHA-256 fingerprint of the key and
the provider's base URL, never by the key.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Protocol

from batcher.core.secrets import Secret

Clock = Callable[[], float]
Sleeper = Callable[[float], None]

#: A reset value above this is an epoch timestamp, not a number of seconds.
EPOCH_THRESHOLD = 1e9
#: Two reset instants closer than this belong to the same window (resets are whole seconds).
_SAME_WINDOW_TOLERANCE = 1.0
_MAX_PENALTY_FACTOR = 2.0  # after 429s, at most half the learned pace
#: Share of the advertised limit kept back from bursting (spent spread out instead).
MARGIN_FRACTION = 0.02
#: Float slack when comparing a woken sleeper's clock with its start time.
_EPSILON = 1e-9
#: Slack after a documented window. The window's bound is causal (a request reaches
#: the server between its start and its answer, both on our clock), so the slack
#: only covers the server's clock running fast against ours (parts per million over
#: a window) and timestamps it keeps in whole milliseconds (up to 1 ms at each end).
#: Servers counting on clocks of their own that disagree by a few ms are covered by
#: the way back of the answer the wait starts from (a request was counted at least
#: that long before its answer came). Timers that fire early need none: `acquire`
#: decides again on waking.
DOCUMENTED_WINDOW_MARGIN = 0.002
#: Slack after the own log's estimate of an advertised window's length (the longest
#: reset seen, in whole seconds: a guess, unlike a documented window).
OWN_LOG_MARGIN = 0.02
#: How often a full documented-window log looks again for answers still in flight.
_IN_FLIGHT_RECHECK = 0.005
#: Requests kept in the own log; an advertised limit above this turns the log rule off.
SENT_LOG_CAPACITY = 10_000


@dataclass(frozen=True)
class DocumentedWindow:
    """A provider's documented limit: at most `limit` requests in `seconds`."""

    limit: int
    seconds: float

    def __post_init__(self) -> None:
        if self.limit < 1 or self.seconds <= 0:
            raise ValueError("a documented window needs at least 1 request per positive window")


class SharedPace(Protocol):
    """One request schedule per key, shared with every process that uses the key."""

    def reserve(self, key: str, interval: float) -> float:
        """Take the next slot of `key`'s schedule, `interval` seconds after the slot
        before it (or now, if that has passed): the seconds until it (<= 0: now)."""
        ...


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

    `rate_per_second` is the pace when no window is known (the profile's
    default, until an advertised limit replaces it); `max_rate` is a hard cap
    that no mode exceeds.
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
        margin_fraction: float = MARGIN_FRACTION,
        reset_margin: float = 0.1,
        penalty_seconds: float = 5.0,
        default_retry_after: float = 1.0,
        documented_window: DocumentedWindow | None = None,
        shared: tuple[SharedPace, str] | None = None,
    ) -> None:
        if rate_per_second <= 0:
            raise ValueError("rate_per_second must be positive")
        if max_rate is not None and max_rate <= 0:
            raise ValueError("max_rate must be positive")
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._reserve = max(1, reserve_requests)  # the margin is never below this
        self._margin_fraction = margin_fraction
        self._reset_margin = reset_margin  # a reset may be rounded; don't arrive early
        self._penalty_seconds = penalty_seconds
        self._default_retry_after = default_retry_after
        self._lock = threading.Lock()
        self._shared = shared  # (schedule, key fingerprint): other processes on this key

        self._min_interval = 1.0 / max_rate if max_rate else 0.0
        self._base_interval = max(1.0 / rate_per_second, self._min_interval)

        self._last_start: float | None = None
        self._blocked_until = 0.0  # hard stop from Retry-After or an exhausted window
        self._outstanding = 0  # acquired, no response yet
        self._window_reset_at: float | None = None
        self._window_remaining: int | None = None  # our estimate, counting outstanding requests
        self._limit: int | None = None
        self._longest_reset = 0.0  # the longest reset seen approximates the window length
        self._penalty_factor = 1.0
        self._penalty_until = 0.0
        self._documented = documented_window
        # The last `limit` requests under a documented window: [started, answered or None].
        self._log: deque[list[float | None]] = deque(
            maxlen=documented_window.limit if documented_window else 1
        )
        # Our recent requests under an advertised window, oldest first: [started,
        # answered or None]. Answer times never decrease along it (see `_answered`).
        self._sent: deque[list[float | None]] = deque(maxlen=SENT_LOG_CAPACITY)
        self._sent_in_flight = 0  # the newest entries of `_sent` not yet answered
        self._others_in_window = 0  # others' requests in the window, at the latest answer
        self._not_sliding = False  # an answer showed the window resets as a whole

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
                start = self._earliest_start(now)
                if start <= now + _EPSILON:
                    self._record_start(now, waited)
                    shared, interval = self._shared, self._shared_interval()
                    break
            # Decide again on waking: an answer or a 429 may have arrived meanwhile.
            self._sleep(start - now)
            waited += start - now
        if shared is not None:
            pace, key = shared
            wait = pace.reserve(key, interval)
            if wait > 0:  # the slot is later: other processes took the ones before it
                self._sleep(wait)
                waited += wait
                with self._lock:
                    self._waited += wait
        return waited

    def observe(self, status_code: int, headers: Mapping[str, str]) -> RateLimitInfo:
        """Learn from a response to a request that went through `acquire()`."""
        info = parse_rate_limit_headers(headers, now_epoch=self._wall_clock())
        with self._lock:
            now = self._clock()
            if info.limit is not None:
                self._limit = info.limit
            self._learn_advertised_rate(info)
            if info.remaining is not None and info.reset_after is not None and status_code != 429:
                # Before this answer is logged: the requests answered so far all
                # arrived before the one it answers.
                self._compare_with_own_log(now, info.remaining)
            self._answered(now)
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
            self._answered(self._clock())

    def share(self, pace: SharedPace, key: str) -> None:
        """From now on, also take a slot of `key`'s shared schedule before each request."""
        with self._lock:
            self._shared = (pace, key)

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

    def _earliest_start(self, now: float) -> float:
        """When the next request may start, from what is known right now."""
        if self._window_reset_at is not None and now >= self._window_reset_at:
            self._forget_window()  # the next answer describes the new window
        if now >= self._penalty_until:
            self._penalty_factor = 1.0
        earliest = max(self._blocked_until, self._documented_slot(now))
        remaining, reset_at = self._window_remaining, self._window_reset_at
        if remaining is None or reset_at is None:
            spendable = None
        else:
            spendable = remaining - self._margin()
            if spendable <= 0:
                resume = reset_at + self._reset_margin
                own = self._own_log_slot(now)
                if own is not None and own < resume:
                    assert self._last_start is not None  # the log holds a request
                    # No window's oldest request leaves more than the reset's
                    # rounding before the reset: a short length guess cannot
                    # bring a request forward by more than that.
                    resume = max(
                        own,
                        reset_at - _SAME_WINDOW_TOLERANCE,
                        self._last_start + self._min_interval,
                    )
                return max(earliest, resume)
        if self._last_start is None:
            return earliest
        return max(earliest, self._last_start + self._gap(spendable, reset_at))

    def _gap(self, spendable: int | None, reset_at: float | None) -> float:
        """The least time between the last start and the next one."""
        if spendable is None or reset_at is None:
            if self._documented is not None and self._penalty_factor == 1.0:
                gap = 0.0  # the documented window's log paces (`_documented_slot`)
            else:
                gap = self._base_interval  # no window: the configured or advertised pace
        else:
            assert self._last_start is not None
            # Spread what is left evenly, the last one before the reset.
            spread = (reset_at - self._last_start) / (spendable + 1)
            if self._penalty_factor > 1.0:
                gap = max(self._base_interval, spread)  # just after a 429: no bursts
            elif spendable > self._margin():
                gap = 0.0  # budget to spare: back to back
            else:
                gap = spread
        return max(gap, self._min_interval) * self._penalty_factor

    def _documented_slot(self, now: float) -> float:
        """The earliest start the documented window allows: request n + limit leaves
        `seconds` after the answer to request n."""
        if self._documented is None or len(self._log) < self._documented.limit:
            return 0.0
        answered = self._log[0][1]
        if answered is None:  # still in flight: look again shortly
            return now + _IN_FLIGHT_RECHECK
        return answered + self._documented.seconds + DOCUMENTED_WINDOW_MARGIN

    def _own_log_slot(self, now: float) -> float | None:
        """When the own log lets the next request go into an exhausted sliding window:
        once at most `share - 1` of our requests can still be in a window ending then
        (`share`: the limit less the margin and the others' requests). None: the log
        cannot tell (no sliding window, a 429's slow-down, or an unknown length)."""
        limit, length = self._limit, self._longest_reset
        if self._not_sliding or self._penalty_factor > 1.0 or limit is None or length <= 0:
            return None
        if limit > SENT_LOG_CAPACITY:
            return None
        share = limit - self._margin() - self._others_in_window
        if share < 1:
            return None
        if len(self._sent) < share:
            return now  # every request we ever sent fits in the share
        answered = self._sent[-share][1]
        if answered is None:  # still in flight: look again shortly
            return now + _IN_FLIGHT_RECHECK
        # It reached the server before its answer left; it leaves the window
        # `length` after that at the latest. So do all before it (logged in order).
        return answered + length + OWN_LOG_MARGIN

    def _compare_with_own_log(self, now: float, remaining: int) -> None:
        """Hold an answer's count (limit - remaining) against the own log. Under a
        sliding window the count includes the answered request and every request of
        ours answered before it was sent and sent less than a window before this
        answer. Fewer shows a window that resets as a whole
        (fixed), where only the reset is the truth. More is other users' share."""
        limit, length = self._limit, self._longest_reset
        if self._not_sliding or limit is None or length <= 0 or limit > SENT_LOG_CAPACITY:
            return
        answered = max(0, len(self._sent) - self._sent_in_flight)  # in flight: the newest
        recent = answered - _first_started_after(self._sent, now - length, answered)
        counted = limit - remaining
        if counted < recent + 1:
            self._not_sliding = True
            self._others_in_window = 0
        else:
            self._others_in_window = counted - recent - 1

    def _answered(self, now: float) -> None:
        """A request came back (or failed). Answers may come out of order, so the log
        takes its in-flight requests as answered only once none is left in flight."""
        self._outstanding = max(0, self._outstanding - 1)
        if self._outstanding == 0:
            for entry in self._log:
                if entry[1] is None:
                    entry[1] = now
            # Only the newest entries are unanswered: stamp those, not the whole log.
            for index in range(1, min(self._sent_in_flight, len(self._sent)) + 1):
                self._sent[-index][1] = now
            self._sent_in_flight = 0

    def _shared_interval(self) -> float:
        """The least time between two requests of all processes on this key together."""
        if self._limit and self._longest_reset > 0:
            # Evenly spaced, any window holds at most limit - margin + 1 of them.
            budget = max(1, self._limit - self._margin())
            interval = max(self._longest_reset / budget, self._min_interval)
        else:
            interval = self._base_interval
        return interval * self._penalty_factor

    def _margin(self) -> int:
        """Requests per window left to anyone else using the key (never the whole limit)."""
        if self._limit is None:
            return self._reserve
        kept = max(self._reserve, math.ceil(self._limit * self._margin_fraction))
        return min(kept, self._limit - 1)

    def _learn_advertised_rate(self, info: RateLimitInfo) -> None:
        """Without a window, pace at the advertised limit / window rather than the
        profile's guess: a 20-per-second key should not crawl at 2 per second."""
        if info.reset_after is not None:
            self._longest_reset = max(self._longest_reset, info.reset_after)
        if self._limit and self._longest_reset > 0:
            self._base_interval = max(self._longest_reset / self._limit, self._min_interval)

    def _learn_window(self, now: float, remaining: int, reset_after: float) -> None:
        reset_at = now + reset_after
        if self._window_reset_at is not None and now >= self._window_reset_at:
            self._forget_window()
        # Requests still in flight may not be counted in this response's figure yet.
        estimate = remaining - self._outstanding
        known = self._window_reset_at
        if known is not None and reset_at < known - _SAME_WINDOW_TOLERANCE:
            return  # an answer from an earlier window, overtaken by a later one
        if (
            known is not None
            and self._window_remaining is not None
            and reset_at < known + _SAME_WINDOW_TOLERANCE
        ):
            # Same window: out-of-order answers and rounded-up resets only ever
            # make a figure too high, so the lowest of each is the truest.
            self._window_remaining = min(self._window_remaining, estimate)
            self._window_reset_at = min(known, reset_at)
        else:
            self._window_remaining = estimate
            self._window_reset_at = reset_at

    def _forget_window(self) -> None:
        self._window_remaining = None
        self._window_reset_at = None

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
        self._blocked_until = max(self._blocked_until, until)

    def _record_start(self, now: float, waited: float) -> None:
        self._last_start = now
        self._outstanding += 1
        if self._documented is not None:
            self._log.append([now, None])
        if self._limit is None or self._limit <= SENT_LOG_CAPACITY:
            self._sent.append([now, None])
            self._sent_in_flight += 1
        if self._window_remaining is not None:
            self._window_remaining -= 1
        self._requests += 1
        self._waited += waited
        if self._first_at is None:
            self._first_at = now
        self._last_at = now


def _first_started_after(log: deque[list[float | None]], moment: float, end: int) -> int:
    """The index of the first of `log[:end]` started after `moment` (`end` if none):
    start times only grow along the log, so a binary search finds it."""
    low, high = 0, end
    while low < high:
        middle = (low + high) // 2
        started = log[middle][0]
        assert started is not None
        if started > moment:
            high = middle
        else:
            low = middle + 1
    return low


# ---------------------------------------------------------------------------
# One limiter per API key, process-wide.

_registry: dict[str, RateLimiter] = {}
_registry_lock = threading.Lock()


def key_fingerprint(api_key: str | Secret) -> str:
    """A short, non-reversible name for a key: the registry never holds the key itself."""
    raw = api_key if isinstance(api_key, str) else api_key.get_secret_value()
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:16]


def shared_key_fingerprint(api_key: str | Secret, base_url: str) -> str:
    """The name of a key's shared schedule: SHA-256 of the provider's base URL and the
    key (one key at two providers, or at a sandbox and the real one, is two budgets)."""
    raw = api_key if isinstance(api_key, str) else api_key.get_secret_value()
    return hashlib.sha256(f"{base_url.rstrip('/')}\n{raw}".encode()).hexdigest()


def limiter_for(
    api_key: str | Secret,
    *,
    rate_per_second: float,
    max_rate: float | None = None,
    documented_window: DocumentedWindow | None = None,
    shared: SharedPace | None = None,
    base_url: str = "",
) -> RateLimiter:
    """The shared limiter of this key, created on first use; with `shared`, it also
    keeps to the schedule every process on this key (at `base_url`) shares."""
    fingerprint = key_fingerprint(api_key)
    with _registry_lock:
        limiter = _registry.get(fingerprint)
        if limiter is None:
            limiter = RateLimiter(
                rate_per_second, max_rate=max_rate, documented_window=documented_window
            )
            _registry[fingerprint] = limiter
        elif max_rate is not None:
            limiter.cap(max_rate)
        if shared is not None:
            limiter.share(shared, shared_key_fingerprint(api_key, base_url))
        return limiter


def forget_limiters() -> None:
    """Drop every shared limiter (tests start each case from a clean slate)."""
    with _registry_lock:
        _registry.clear()
