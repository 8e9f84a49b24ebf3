"""Fault injection: each switch, at startup and at runtime, never breaking idempotency."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from decimal import Decimal

import httpx
import pytest
from sandbox_kit import assert_retry_after_respected
from ugiftme_kit import Api, item

from batcher.sandbox.server import SandboxControlError, SandboxHandle


def test_fault_500_comes_before_anything_and_is_not_stored(
    make_ugiftme_sandbox: Callable[..., SandboxHandle], api_for: Callable[..., Api]
) -> None:
    sandbox = make_ugiftme_sandbox(async_mode=False, fault_500=1.0)
    api = api_for(sandbox)
    reply = api.post("/orders", item(), key="retry-me")
    assert reply.status == 500 and reply.body == {"error": "Internal Server Error"}
    assert reply.headers["RateLimit-Remaining"] == "119"
    assert sandbox.control("GET", "/orders")["total"] == 0
    sandbox.control("PATCH", "/faults", json={"500": 0})
    assert api.post("/orders", item(), key="retry-me").status == 201


def test_429_burst_refuses_the_next_requests_with_a_correct_retry_after(
    make_ugiftme_sandbox: Callable[..., SandboxHandle], api_for: Callable[..., Api]
) -> None:
    # A burst longer than a loaded machine takes for the calls inside it (at 0.5 s, a
    # CI-class run's follow-up came after the burst had ended).
    burst = 2.5
    sandbox = make_ugiftme_sandbox(fault_429=1.0, burst_seconds=burst, seed=5)
    api = api_for(sandbox)
    started = time.monotonic()
    first = api.get("/auth")
    answered = time.monotonic()
    assert first.status == 429 and first.body == {"error": "Too many requests"}
    assert first.headers["Retry-After"] == "3" and "RateLimit-Reset" in first.headers
    sandbox.control("PATCH", "/faults", json={"429": 0})
    follow_up = api.get("/auth")  # the burst goes on even with the rate back at 0
    waited = time.monotonic() - started
    # the seconds left of the burst, rounded up: what a client must wait
    left = follow_up.headers["Retry-After"]
    assert follow_up.status == 429 and left in {"1", "2", "3"}
    assert int(left) >= math.ceil(burst - waited)
    # from the first answer, not from before the call: the burst began while the
    # sandbox handled it, which a loaded machine can put later than `started`
    time.sleep(max(0.0, answered + burst + 0.05 - time.monotonic()))
    assert api.get("/auth").status == 200
    stats = sandbox.control("GET", "/stats")
    assert stats["tooManyRequests"] == {api.api_key: 2} and stats["tooManyRequestsTotal"] == 2
    assert [e["retryAfter"] for e in stats["log"]] == [3, int(left), None]


def test_a_polite_client_never_comes_back_before_retry_after(
    make_ugiftme_sandbox: Callable[..., SandboxHandle], api_for: Callable[..., Api]
) -> None:
    sandbox = make_ugiftme_sandbox(rate_limit=5, rate_window_seconds=1)
    api = api_for(sandbox)
    for _ in range(8):
        reply = api.get("/products", limit=1)
        if reply.status == 429:
            time.sleep(int(reply.headers["Retry-After"]))
    log = sandbox.control("GET", "/stats")["log"]
    assert any(e["status"] == 429 for e in log)
    assert_retry_after_respected(log)


def test_latency_fault_delays_the_answer(
    make_ugiftme_sandbox: Callable[..., SandboxHandle], api_for: Callable[..., Api]
) -> None:
    # 2 s: without the fault a call must take less, which a loaded machine's pauses
    # (unlike 0.2 s) do not reach
    sandbox = make_ugiftme_sandbox(fault_latency=1.0, latency_ms=2000)
    api = api_for(sandbox)
    start = time.monotonic()
    assert api.get("/auth").status == 200
    assert time.monotonic() - start >= 2.0
    sandbox.control("PATCH", "/faults", json={"latency": 0})
    start = time.monotonic()
    api.get("/auth")
    assert time.monotonic() - start < 2.0


@pytest.mark.parametrize("async_mode", [False, True], ids=["sync", "async"])
def test_drop_commits_then_cuts_the_connection(
    make_ugiftme_sandbox: Callable[..., SandboxHandle],
    api_for: Callable[..., Api],
    async_mode: bool,
) -> None:
    sandbox = make_ugiftme_sandbox(async_mode=async_mode, fault_drop=1.0)
    api = api_for(sandbox)
    body = {"orders": [item(email="a@x.io"), item(email="b@x.io")]}
    with pytest.raises(httpx.RemoteProtocolError):
        api.post("/orders/bulk", body, key="dropped")
    if async_mode:
        requests = sandbox.control("GET", "/order-requests")["orderRequests"]
        assert len(requests) == 1 and requests[0]["idempotencyKey"] == "dropped"
        api.wait_for_request(requests[0]["orderRequestId"], {"succeeded"})
    committed = sandbox.control("GET", "/orders")["orders"]
    assert len(committed) == 2 and {o["idempotencyKey"] for o in committed} == {"dropped"}
    replay = api.post("/orders/bulk", body, key="dropped")  # the drop never hits a replay
    assert replay.status == (202 if async_mode else 201)
    if async_mode:
        assert replay.body["orderRequestId"] == requests[0]["orderRequestId"]
    else:
        assert [o["_id"] for o in replay.body["orders"]] == [o["_id"] for o in committed]
    assert sandbox.control("GET", "/orders")["total"] == 2
    log = sandbox.control("GET", "/stats")["log"]
    assert [e["fault"] for e in log] == ["drop", None] + [None] * (len(log) - 2)


def test_reject_item_fault(
    make_ugiftme_sandbox: Callable[..., SandboxHandle], api_for: Callable[..., Api]
) -> None:
    sandbox = make_ugiftme_sandbox(async_mode=False, fault_reject_item=0.5, seed=2)
    api = api_for(sandbox)
    body = {"orders": [item(email=f"{i}@x.io") for i in range(20)]}
    result = api.post("/orders/bulk", body).body
    rejected = result["rejectedOrders"]
    assert 0 < len(rejected) < 20 and len(result["orders"]) + len(rejected) == 20
    assert rejected[0] == {"productCode": "AMAZON_UK_STD", "reason": "Out of stock"}
    spent = len(result["orders"]) * Decimal("9.75")
    assert api.wallet("GBP")["balance"] == Decimal("10000.00") - spent


def test_reject_item_fault_in_async_mode_releases_the_rejected_hold(
    make_ugiftme_sandbox: Callable[..., SandboxHandle], api_for: Callable[..., Api]
) -> None:
    api = api_for(make_ugiftme_sandbox(fault_reject_item=1.0))
    request_id = api.post("/orders/bulk", {"orders": [item()]}).body["orderRequestId"]
    done = api.wait_for_request(request_id, {"succeeded", "failed"})
    assert (
        done["result"]["orders"] == []
        and done["result"]["rejectedOrders"][0]["reason"] == "Out of stock"
    )
    wallet = api.wallet("GBP")
    assert wallet["balance"] == wallet["availableBalance"] == 10000


def test_async_fail_releases_the_hold(
    make_ugiftme_sandbox: Callable[..., SandboxHandle], api_for: Callable[..., Api]
) -> None:
    sandbox = make_ugiftme_sandbox(fault_async_fail=1.0, async_delay_seconds=0.2)
    api = api_for(sandbox)
    body = {"orders": [item(), item(email="b@x.io")]}
    request_id = api.post("/orders/bulk", body).body["orderRequestId"]
    assert api.wallet("GBP")["availableBalance"] == Decimal("10000.00") - 2 * Decimal("9.75")
    done = api.wait_for_request(request_id, {"succeeded", "failed"})
    assert done["status"] == "failed" and done["error"].startswith("Upstream supplier error")
    assert "result" not in done
    wallet = api.wallet("GBP")
    assert wallet["balance"] == wallet["availableBalance"] == 10000
    assert sandbox.control("GET", "/orders")["total"] == 0


def test_faults_are_settable_and_readable_at_runtime(ugiftme_sandbox: SandboxHandle) -> None:
    faults = ugiftme_sandbox.control(
        "PATCH", "/faults", json={"500": 0.25, "drop": 0.1, "latencyMs": 50, "seed": 42}
    )
    assert faults["500"] == Decimal("0.25") and faults["drop"] == Decimal("0.1")
    assert faults["latencyMs"] == 50 and faults["seed"] == 42
    with pytest.raises(SandboxControlError) as refused:
        ugiftme_sandbox.control("PATCH", "/faults", json={"500": 2})
    assert refused.value.status_code == 400
    assert ugiftme_sandbox.control("GET", "/faults")["500"] == Decimal("0.25")


def test_controls_are_exempt_from_limits_and_faults(
    make_ugiftme_sandbox: Callable[..., SandboxHandle],
) -> None:
    sandbox = make_ugiftme_sandbox(rate_limit=1, fault_500=1.0, fault_429=1.0)
    for _ in range(5):
        assert sandbox.control("GET", "/health") == {"ok": True, "provider": "ugiftme"}
    assert sandbox.control("GET", "/stats")["requests"] == {}
