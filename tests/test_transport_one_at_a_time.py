"""Writes and `one_at_a_time` GETs of one ApiClient never overlap, whatever thread
sends them: the runner's polls run on threads of their own while it submits, and a
429's Retry-After must hold for every request that leaves after it."""

from __future__ import annotations

import threading
import time

import httpx

from batcher.transport.http import ApiClient
from batcher.transport.throttle import RateLimiter


def _client(handler: httpx.MockTransport) -> ApiClient:
    return ApiClient(
        "http://127.0.0.1:1/api",
        auth_headers={"X-API-Key": "k"},
        limiter=RateLimiter(1000),
        transport=handler,
    )


def _overlaps(one_at_a_time: bool) -> int:
    """How many requests reached the server while another was still being answered."""
    inside = 0
    overlaps = 0
    lock = threading.Lock()
    post_arrived = threading.Event()

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal inside, overlaps
        with lock:
            inside += 1
            overlaps += inside > 1
        if request.method == "POST":
            post_arrived.set()
            time.sleep(0.3)  # a slow submit: the poll thread tries to send meanwhile
        with lock:
            inside -= 1
        return httpx.Response(200, json={"ok": True})

    client = _client(httpx.MockTransport(answer))
    poster = threading.Thread(target=lambda: client.post("/orders/bulk", content=b"{}"))
    poster.start()
    assert post_arrived.wait(5)
    client.get("/orders/order-requests/r1", one_at_a_time=one_at_a_time)
    poster.join(5)
    client.close()
    return overlaps


def test_a_one_at_a_time_get_waits_for_the_write_in_flight() -> None:
    assert _overlaps(one_at_a_time=True) == 0


def test_other_gets_may_overlap_a_write() -> None:  # listings fetch pages side by side
    assert _overlaps(one_at_a_time=False) == 1


def test_writes_may_still_overlap_one_another() -> None:
    """Two runs racing one key from one client still both reach the provider (its 409)."""
    inside = overlaps = 0
    lock = threading.Lock()
    first_arrived = threading.Event()

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal inside, overlaps
        with lock:
            inside += 1
            overlaps += inside > 1
        if not first_arrived.is_set():
            first_arrived.set()
            time.sleep(0.3)
        with lock:
            inside -= 1
        return httpx.Response(200, json={"ok": True})

    client = _client(httpx.MockTransport(answer))
    poster = threading.Thread(target=lambda: client.post("/orders/bulk", content=b"{}"))
    poster.start()
    assert first_arrived.wait(5)
    client.post("/orders/bulk", content=b"{}")
    poster.join(5)
    client.close()
    assert overlaps == 1
