"""The shared per-key request schedule (ledger/rate_slots.py) on a real PostgreSQL server.

Processes on one key each hold their own connection; here two threads with a
connection each stand in for them. Every slot they are handed, taken together,
must be at least the interval after the one before, however the reservations
interleave; another key's schedule is its own. The e2e tests
(tests/e2e/test_postgres_shared_rate.py) show what that buys at a provider.
"""

from __future__ import annotations

import itertools
import threading

from batcher.ledger.location import parse_ledger_url
from batcher.ledger.rate_slots import SharedRateSlots, shared_rate_slots

INTERVAL = 0.05
EACH = 40


def test_slots_on_one_key_are_an_interval_apart_across_connections(pg_url: str) -> None:
    location = parse_ledger_url(pg_url)
    granted: dict[str, list[tuple[float, float]]] = {"A": [], "B": []}
    start = threading.Barrier(3)
    guard = threading.Lock()

    def reserve(key: str, count: int) -> None:
        slots = SharedRateSlots(location)
        try:
            start.wait()
            for _ in range(count):
                slot = slots.reserve_slot(key, INTERVAL)
                with guard:
                    granted[key].append(slot)
        finally:
            slots.close()

    threads = [
        threading.Thread(target=reserve, args=("A", EACH)),
        threading.Thread(target=reserve, args=("A", EACH)),
        threading.Thread(target=reserve, args=("B", 3)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    times = sorted(at for at, _wait in granted["A"])
    assert len(times) == 2 * EACH
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert min(gaps) >= INTERVAL - 1e-6, f"two slots {min(gaps):.4f} s apart"
    # Reserved back to back, the schedule runs ahead of the clock: the last slot is
    # about 80 intervals out, and says so.
    assert max(wait for _at, wait in granted["A"]) > (2 * EACH - 10) * INTERVAL
    # Key B is not queued behind key A's 4 seconds of slots.
    first_b = min(at for at, _wait in granted["B"])
    assert first_b < times[-1] - 2.0
    b_times = sorted(at for at, _wait in granted["B"])
    assert b_times[1] - b_times[0] >= INTERVAL - 1e-6


def test_a_closed_schedule_hands_out_no_waits(pg_url: str) -> None:
    slots = shared_rate_slots(parse_ledger_url(pg_url))
    assert slots is not None
    slots.close()
    assert slots.reserve("A", 1.0) == 0.0
    assert shared_rate_slots(parse_ledger_url("sqlite:///tmp/x.db")) is None
