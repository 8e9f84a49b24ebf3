"""RateLimiter on fake time: pacing from headers, Retry-After, back-off, caps, stats."""

from __future__ import annotations

import itertools
import math
import threading
import time
from email.utils import formatdate

import pytest

from batcher.transport.throttle import (
    RateLimiter,
    forget_limiters,
    key_fingerprint,
    limiter_for,
    parse_rate_limit_headers,
    parse_reset,
    parse_retry_after,
)

EPOCH = 1_700_000_000.0  # wall-clock time at fake monotonic 0


class FakeTime:
    """A monotonic clock, a wall clock and a sleeper that only move when slept on."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return EPOCH + self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


def make_limiter(fake: FakeTime, rate: float, **kwargs: float) -> RateLimiter:
    return RateLimiter(rate, clock=fake.monotonic, wall_clock=fake.wall, sleep=fake.sleep, **kwargs)


def start_times(limiter: RateLimiter, fake: FakeTime, count: int) -> list[float]:
    times = []
    for _ in range(count):
        limiter.acquire()
        times.append(fake.now)
        limiter.observe(200, {})
    return times


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 6) for a, b in itertools.pairwise(times)]


# ---------------------------------------------------------------------------
# Header parsing


def test_reset_is_seconds_unless_it_looks_like_an_epoch() -> None:
    assert parse_reset("30", now_epoch=EPOCH) == 30
    assert parse_reset(str(int(EPOCH) + 30), now_epoch=EPOCH) == 30
    assert parse_reset(str(int(EPOCH) - 5), now_epoch=EPOCH) == 0  # already past
    assert parse_reset("soon", now_epoch=EPOCH) is None


def test_retry_after_as_seconds_or_http_date() -> None:
    assert parse_retry_after("7", now_epoch=EPOCH) == 7
    assert parse_retry_after(formatdate(EPOCH + 12, usegmt=True), now_epoch=EPOCH) == 12
    assert parse_retry_after(formatdate(EPOCH - 12, usegmt=True), now_epoch=EPOCH) == 0
    assert parse_retry_after("whenever", now_epoch=EPOCH) is None
    assert parse_retry_after(None, now_epoch=EPOCH) is None


def test_ietf_headers_win_over_the_x_family_and_names_are_case_insensitive() -> None:
    info = parse_rate_limit_headers(
        {"ratelimit-remaining": "5", "X-RateLimit-Remaining": "9", "X-RATELIMIT-LIMIT": "60"},
        now_epoch=EPOCH,
    )
    assert (info.remaining, info.limit) == (5, 60)


# ---------------------------------------------------------------------------
# Pacing


def test_without_headers_the_configured_rate_paces_requests(fake: FakeTime) -> None:
    limiter = make_limiter(fake, 10)  # GIFQ: 10 req/s and no remaining headers
    times = start_times(limiter, fake, 6)
    assert times[0] == 0
    assert gaps(times) == [0.1] * 5


def test_max_rate_caps_even_a_generous_window(fake: FakeTime) -> None:
    limiter = make_limiter(fake, 10, max_rate=2)
    times = []
    for _ in range(5):
        limiter.acquire()
        times.append(fake.now)
        limiter.observe(200, {"RateLimit-Remaining": "1000", "RateLimit-Reset": "60"})
    assert min(gaps(times)) >= 0.5


def test_headers_can_speed_pacing_up_beyond_the_default(fake: FakeTime) -> None:
    limiter = make_limiter(fake, 2)
    times = []
    for _ in range(10):
        limiter.acquire()
        times.append(fake.now)
        limiter.observe(200, {"RateLimit-Remaining": "1000", "RateLimit-Reset": "60"})
    assert max(gaps(times)[1:]) < 0.1  # 1000 per 60 s allows ~16/s, not the default 2/s


def test_remaining_zero_waits_until_the_window_resets(fake: FakeTime) -> None:
    limiter = make_limiter(fake, 10, reset_margin=0.1)
    limiter.acquire()
    limiter.observe(200, {"RateLimit-Remaining": "0", "RateLimit-Reset": "7"})
    limiter.acquire()
    assert fake.now == pytest.approx(7.1)


def test_in_flight_requests_count_against_the_remaining_budget(fake: FakeTime) -> None:
    limiter = make_limiter(fake, 100, reset_margin=0.1)
    for _ in range(3):  # three requests sent, no answers yet
        limiter.acquire()
    limiter.observe(200, {"RateLimit-Remaining": "4", "RateLimit-Reset": "10"})
    reset_at = fake.now + 10
    # 4 remaining less 2 still in flight: 2, one of them the kept-back margin. The
    # other is spread into the time left; then nothing until the reset.
    starts = start_times(limiter, fake, 2)
    assert starts[0] == pytest.approx(0.02 + (reset_at - 0.02) / 2)
    assert starts[1] == pytest.approx(reset_at + 0.1)


def test_the_budget_is_spent_back_to_back_down_to_the_margin(fake: FakeTime) -> None:
    """600 per 60 s, margin 12: 576 go at once, 12 are spread, 12 are left for others."""
    limiter = make_limiter(fake, 2)
    times = []
    for sent in range(1, 590):
        limiter.acquire()
        times.append(fake.now)
        headers = {"RateLimit-Limit": "600", "RateLimit-Remaining": str(600 - sent)}
        limiter.observe(200, {**headers, "RateLimit-Reset": str(math.ceil(60 - fake.now))})
    assert times[575] == 0.0
    assert 0 < times[576] < times[587] < 60
    assert gaps(times[575:588]) == pytest.approx([60 / 13] * 12)
    # Then 588 of ours are in the window: the next waits until the first has left
    # it by the own log (answered at 0: 60 s and the 20 ms margin), not for the
    # reset's extra 0.1 s.
    assert times[588] == pytest.approx(60.02)


def test_the_second_request_is_not_held_to_the_first_guess(fake: FakeTime) -> None:
    """The first answer of a run arrives before the second request: no 0.5 s default gap."""
    limiter = make_limiter(fake, 2)
    limiter.acquire()
    limiter.observe(
        200, {"RateLimit-Limit": "600", "RateLimit-Remaining": "599", "RateLimit-Reset": "60"}
    )
    assert limiter.acquire() == 0.0
    assert fake.now == 0.0


class FixedWindowServer:
    """A fake provider that counts requests per fixed window and answers 429 beyond the limit."""

    def __init__(self, fake: FakeTime, limit: int, window: float, *, epoch_reset: bool) -> None:
        self.fake, self.limit, self.window, self.epoch_reset = fake, limit, window, epoch_reset
        self.counts: dict[int, int] = {}
        self.rejected = 0

    def respond(self) -> tuple[int, dict[str, str]]:
        now = self.fake.now
        index = math.floor(now / self.window)
        self.counts[index] = self.counts.get(index, 0) + 1
        window_end = (index + 1) * self.window
        remaining = self.limit - self.counts[index]
        if self.epoch_reset:
            headers = {
                "X-RateLimit-Limit": str(self.limit),
                "X-RateLimit-Remaining": str(max(0, remaining)),
                "X-RateLimit-Reset": str(math.ceil(EPOCH + window_end)),
            }
        else:
            headers = {
                "RateLimit-Limit": str(self.limit),
                "RateLimit-Remaining": str(max(0, remaining)),
                "RateLimit-Reset": str(math.ceil(window_end - now)),
            }
        if remaining < 0:
            self.rejected += 1
            return 429, {**headers, "Retry-After": str(math.ceil(window_end - now))}
        return 200, headers


@pytest.mark.parametrize("epoch_reset", [False, True], ids=["RateLimit-*", "X-RateLimit-*"])
def test_a_long_run_stays_near_the_limit_without_crossing_it(
    fake: FakeTime, epoch_reset: bool
) -> None:
    server = FixedWindowServer(fake, limit=30, window=10.0, epoch_reset=epoch_reset)
    limiter = make_limiter(fake, 2)
    for _ in range(300):
        limiter.acquire()
        limiter.observe(*server.respond())
    assert server.rejected == 0
    achieved = limiter.stats().achieved_rate
    assert achieved is not None
    assert achieved >= 0.95 * 3.0  # the limit is 3/s
    # Bursting at window starts may beat 3/s between the first and the last request,
    # but each window gives up only its one kept-back request.
    assert set(server.counts.values()) == {29, 300 - 10 * 29}


def test_a_window_that_resets_as_a_whole_is_waited_out_to_its_reset(fake: FakeTime) -> None:
    """The own log brings the second window forward (the first request, answered at 0,
    has left the first window by 10.02 s). The second window's first answer counts
    fewer requests than ours of the last 10 s: the window resets as a whole, so from
    then on only its reset (+0.1 s) ends a spent window."""
    server = FixedWindowServer(fake, limit=30, window=10.0, epoch_reset=False)
    limiter = make_limiter(fake, 2)
    starts = start_times_against(server, limiter, fake, 90)
    assert server.rejected == 0
    first_of_window = [next(t for t in starts if t >= k * 10) for k in (1, 2, 3)]
    assert first_of_window == pytest.approx([10.02, 20.12, 30.22])


def start_times_against(
    server: FixedWindowServer, limiter: RateLimiter, fake: FakeTime, count: int
) -> list[float]:
    times = []
    for _ in range(count):
        limiter.acquire()
        times.append(fake.now)
        limiter.observe(*server.respond())
    return times


# ---------------------------------------------------------------------------
# 429 and Retry-After


def test_retry_after_seconds_is_honoured_exactly(fake: FakeTime) -> None:
    limiter = make_limiter(fake, 10)
    limiter.acquire()
    limiter.observe(429, {"Retry-After": "3"})
    waited = limiter.acquire()
    assert waited == pytest.approx(3.0)
    assert fake.now == pytest.approx(3.0)
    assert limiter.stats().throttled == 1


def test_retry_after_http_date_is_honoured_exactly(fake: FakeTime) -> None:
    limiter = make_limiter(fake, 10)
    limiter.acquire()
    limiter.observe(429, {"Retry-After": formatdate(EPOCH + 5, usegmt=True)})
    limiter.acquire()
    assert fake.now == pytest.approx(5.0)


def test_retry_after_on_a_503_is_honoured_too(fake: FakeTime) -> None:
    limiter = make_limiter(fake, 10)
    limiter.acquire()
    limiter.observe(503, {"Retry-After": "2"})
    limiter.acquire()
    assert fake.now == pytest.approx(2.0)


def test_a_429_without_any_hint_waits_a_default_second(fake: FakeTime) -> None:
    limiter = make_limiter(fake, 10, default_retry_after=1.0)
    limiter.acquire()
    limiter.observe(429, {})
    limiter.acquire()
    assert fake.now == pytest.approx(1.0)


def test_a_429_halves_the_pace_for_a_while(fake: FakeTime) -> None:
    limiter = make_limiter(fake, 10, penalty_seconds=30.0)
    limiter.acquire()
    limiter.observe(429, {"Retry-After": "1"})
    after_first = start_times(limiter, fake, 4)
    assert after_first[0] == pytest.approx(1.0)
    assert gaps(after_first) == [0.2] * 3

    limiter.acquire()
    limiter.observe(429, {"Retry-After": "1"})
    after_second = start_times(limiter, fake, 4)
    assert gaps(after_second) == [0.2] * 3  # never slower than half pace

    fake.now += 60  # the penalty expires
    assert gaps(start_times(limiter, fake, 4)) == [0.1] * 3


def test_a_sleeping_caller_is_requeued_when_a_429_arrives_meanwhile() -> None:
    limiter = RateLimiter(1000)
    limiter.acquire()
    # timed from before the 429: the wait runs from when it was seen, and a loaded
    # machine can pause between the two lines (it once measured 0.287 s from after)
    started = time.monotonic()
    limiter.observe(429, {"Retry-After": "0.3"})
    limiter.acquire()
    assert time.monotonic() - started >= 0.29


# ---------------------------------------------------------------------------
# Stats, threads, registry


def test_stats_count_requests_waits_and_rate(fake: FakeTime) -> None:
    limiter = make_limiter(fake, 4)
    start_times(limiter, fake, 5)
    stats = limiter.stats()
    assert stats.requests == 5
    assert stats.waited_seconds == pytest.approx(1.0)
    assert stats.achieved_rate == pytest.approx(4.0)
    assert stats.throttled == 0


def test_concurrent_callers_share_the_pace() -> None:
    limiter = RateLimiter(200)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(25):
                limiter.acquire()
                limiter.observe(200, {})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    elapsed = time.monotonic() - started
    assert not errors
    assert limiter.stats().requests == 100
    assert elapsed >= 99 / 200 * 0.95  # 100 requests at 200/s need ~0.5 s, threads or not


def test_one_limiter_per_key_registered_under_a_fingerprint() -> None:
    forget_limiters()
    key = "6f1c2d3e-aaaa-bbbb-cccc-1234567890ab"
    first = limiter_for(key, rate_per_second=2)
    assert limiter_for(key, rate_per_second=2) is first
    assert limiter_for("another-key", rate_per_second=2) is not first
    fingerprint = key_fingerprint(key)
    assert key not in fingerprint and len(fingerprint) == 16
    from batcher.transport import throttle

    assert all(key not in name for name in throttle._registry)
    forget_limiters()


def test_pace_between_windows_follows_the_advertised_limit(fake: FakeTime) -> None:
    """A key advertised at 20 per 1 s must not fall back to the profile's 2 per second."""
    limiter = make_limiter(fake, 2)
    limiter.acquire()
    limiter.observe(
        200, {"RateLimit-Limit": "20", "RateLimit-Remaining": "19", "RateLimit-Reset": "1"}
    )
    fake.now += 2  # that window is over; no fresh headers yet
    starts = start_times(limiter, fake, 3)
    assert max(gaps(starts)) <= 0.05 + 1e-9
