"""GIFQ: the 10 req/s limit (Retry-After only) and each fault switch, never breaking
idempotency."""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal

import httpx
import pytest
from gifq_kit import ROOMY_RATE_LIMIT, GifqApi, payout_body
from sandbox_kit import assert_retry_after_respected

from batcher.sandbox.server import SandboxControlError, SandboxHandle

TOO_MANY = {"message": "Too many requests. Try again later.", "status": "error"}


def _ratelimit_headers(headers: httpx.Headers) -> list[str]:
    return [name for name in headers if "ratelimit" in name.lower() or "remaining" in name.lower()]


# -- rate limit -------------------------------------------------------------------


def test_ten_requests_per_second_per_token_then_429_with_retry_after_only(
    make_gifq_sandbox: Callable[..., SandboxHandle], gifq_api_for: Callable[..., GifqApi]
) -> None:
    sandbox = make_gifq_sandbox(api_keys=("a", "b"))  # the real 10 / 1 s
    a, b = gifq_api_for(sandbox, "a"), gifq_api_for(sandbox, "b")
    replies = [a.get("/balances") for _ in range(13)]
    assert [r.status for r in replies] == [200] * 10 + [429] * 3
    refused = replies[10]
    assert refused.body == TOO_MANY and refused.headers["Retry-After"] == "1"
    for reply in replies:
        assert _ratelimit_headers(reply.headers) == []
    assert "Retry-After" not in replies[0].headers
    assert b.get("/balances").status == 200  # each token has its own window
    time.sleep(1.0)
    assert a.get("/balances").status == 200
    stats = sandbox.control("GET", "/stats")
    assert stats["tooManyRequests"] == {"a": 3} and stats["requests"] == {"a": 14, "b": 1}
    assert [e["retryAfter"] for e in stats["log"] if e["status"] == 429] == [1, 1, 1]


def test_a_polite_client_never_comes_back_before_retry_after(
    make_gifq_sandbox: Callable[..., SandboxHandle], gifq_api_for: Callable[..., GifqApi]
) -> None:
    sandbox = make_gifq_sandbox()
    api = gifq_api_for(sandbox)
    for n in range(14):
        reply = api.order(f"polite-{n}")
        if reply.status == 429:
            time.sleep(int(reply.headers["Retry-After"]))
    log = sandbox.control("GET", "/stats")["log"]
    assert any(e["status"] == 429 for e in log)
    assert_retry_after_respected(log)


def test_unauthenticated_calls_are_limited_per_address(
    make_gifq_sandbox: Callable[..., SandboxHandle],
) -> None:
    # A minute's window and one client: three calls in a 1 s window, each building its
    # own client (~0.1 s of CPU), overran it on a loaded machine.
    sandbox = make_gifq_sandbox(rate_limit=2, rate_window_seconds=60)
    with httpx.Client(trust_env=False) as client:
        statuses = [client.get(sandbox.base_url + "/balances").status_code for _ in range(3)]
    assert statuses == [401, 401, 429]


def test_the_log_keeps_the_query_so_page_sizes_can_be_checked(gifq_api: GifqApi) -> None:
    gifq_api.get("/products", page=2, limit=20)
    entry = gifq_api.sandbox.control("GET", "/stats")["log"][-1]
    assert entry["path"] == "/api/products" and entry["query"] == "page=2&limit=20"


# -- faults -----------------------------------------------------------------------


def test_fault_500_comes_before_anything(
    make_gifq_sandbox: Callable[..., SandboxHandle], gifq_api_for: Callable[..., GifqApi]
) -> None:
    sandbox = make_gifq_sandbox(rate_limit=ROOMY_RATE_LIMIT, fault_500=1.0)
    api = gifq_api_for(sandbox)
    reply = api.order("r")
    assert reply.status == 500 and reply.body == {
        "message": "Internal Server Error",
        "status": "error",
    }
    assert api.post("/payout-orders", payout_body(), key="k").status == 500
    assert sandbox.control("GET", "/orders")["total"] == 0
    sandbox.control("PATCH", "/faults", json={"500": 0})
    assert api.order("r").status == 201
    assert api.post("/payout-orders", payout_body(), key="k").status == 202  # 500 not stored


BURST = 2.5  # seconds: a 429 burst's length in the burst tests


def test_429_burst_sends_retry_after_only(
    make_gifq_sandbox: Callable[..., SandboxHandle], gifq_api_for: Callable[..., GifqApi]
) -> None:
    # A burst longer than a loaded machine takes for the calls inside it (at 0.5 s, a
    # CI-class run's follow-up came after the burst had ended).
    sandbox = make_gifq_sandbox(
        rate_limit=ROOMY_RATE_LIMIT, fault_429=1.0, burst_seconds=BURST, seed=5
    )
    api = gifq_api_for(sandbox)
    first = api.get("/balances")
    answered = time.monotonic()  # the burst began while the sandbox handled the call
    assert first.status == 429 and first.body == TOO_MANY
    assert first.headers["Retry-After"] == "3" and _ratelimit_headers(first.headers) == []
    sandbox.control("PATCH", "/faults", json={"429": 0})
    assert api.get("/balances").status == 429  # the burst goes on
    time.sleep(max(0.0, answered + BURST + 0.05 - time.monotonic()))
    assert api.get("/balances").status == 200
    log = sandbox.control("GET", "/stats")["log"]
    assert [(e["status"], e["fault"]) for e in log] == [(429, "429"), (429, "429"), (200, None)]


def test_latency_fault_delays_the_answer(
    make_gifq_sandbox: Callable[..., SandboxHandle], gifq_api_for: Callable[..., GifqApi]
) -> None:
    sandbox = make_gifq_sandbox(rate_limit=ROOMY_RATE_LIMIT, fault_latency=1.0, latency_ms=200)
    api = gifq_api_for(sandbox)
    for call in (lambda: api.get("/balances"), lambda: api.order("slow")):
        start = time.monotonic()
        assert call().status in {200, 201}
        assert time.monotonic() - start >= 0.2


def test_drop_commits_an_order_then_cuts_the_connection(
    make_gifq_sandbox: Callable[..., SandboxHandle], gifq_api_for: Callable[..., GifqApi]
) -> None:
    sandbox = make_gifq_sandbox(rate_limit=ROOMY_RATE_LIMIT, fault_drop=1.0)
    api = gifq_api_for(sandbox)
    with pytest.raises(httpx.RemoteProtocolError):
        api.order("dropped")
    committed = sandbox.control("GET", "/orders")["orders"]
    assert [o["reference"] for o in committed] == ["dropped"]
    retry = api.order("dropped")  # the drop never hits a known reference
    assert retry.status == 200 and retry.body["id"] == committed[0]["id"]
    assert sandbox.control("GET", "/orders")["total"] == 1
    assert api.balance("GBP") == Decimal("4975.62")
    log = sandbox.control("GET", "/stats")["log"]
    assert [e["fault"] for e in log[:2]] == ["drop", None]


def test_drop_commits_a_payout_order_and_the_key_recovers_it(
    make_gifq_sandbox: Callable[..., SandboxHandle], gifq_api_for: Callable[..., GifqApi]
) -> None:
    sandbox = make_gifq_sandbox(rate_limit=ROOMY_RATE_LIMIT, fault_drop=1.0)
    api = gifq_api_for(sandbox)
    with pytest.raises(httpx.RemoteProtocolError):
        api.post("/payout-orders", payout_body(2), key="po")
    committed = sandbox.control("GET", "/payout-orders")["payoutOrders"]
    assert len(committed) == 1 and committed[0]["idempotencyKey"] == "po"
    replay = api.post("/payout-orders", payout_body(2), key="po")
    assert replay.status == 202 and replay.body["id"] == committed[0]["id"]
    assert sandbox.control("GET", "/payout-orders")["total"] == 1
    assert api.balance("GBP") == Decimal("4980.00")


def test_reject_item_refuses_a_valid_order_as_out_of_stock(
    make_gifq_sandbox: Callable[..., SandboxHandle], gifq_api_for: Callable[..., GifqApi]
) -> None:
    sandbox = make_gifq_sandbox(rate_limit=ROOMY_RATE_LIMIT, fault_reject_item=1.0)
    api = gifq_api_for(sandbox)
    reply = api.order("r")
    assert reply.status == 422 and reply.body["message"].startswith("Out of stock")
    assert reply.body["request_id"] == reply.headers["X-Request-Id"]
    assert api.balance("GBP") == Decimal("5000.00")
    assert sandbox.control("GET", "/orders")["total"] == 0


def test_async_fail_ends_the_order_failed_and_refunds_it(
    make_gifq_sandbox: Callable[..., SandboxHandle], gifq_api_for: Callable[..., GifqApi]
) -> None:
    sandbox = make_gifq_sandbox(rate_limit=ROOMY_RATE_LIMIT, fault_async_fail=1.0)
    api = gifq_api_for(sandbox)
    created = api.order("doomed")
    assert created.status == 201 and created.body["status"] == "pending"
    assert api.balance("GBP") == Decimal("4975.62")
    failed = api.wait_order(created.body["id"])
    assert failed["status"] == "failed" and "redemption" not in failed
    assert failed["failure_reason"] == "Upstream supplier error: the order could not be fulfilled"
    assert api.balance("GBP") == Decimal("5000.00")
    refund = api.get("/transactions").body[0]
    assert (refund["type"], refund["amount"], refund["order_id"]) == (
        "refund",
        "24.38",
        created.body["id"],
    )


def test_the_seed_replays_the_same_faults(
    make_gifq_sandbox: Callable[..., SandboxHandle], gifq_api_for: Callable[..., GifqApi]
) -> None:
    outcomes = []
    for _ in range(2):
        sandbox = make_gifq_sandbox(
            rate_limit=ROOMY_RATE_LIMIT, async_delay_seconds=0.0, fault_async_fail=0.5, seed=11
        )
        api = gifq_api_for(sandbox)
        ids = [api.order(f"s{n}").body["id"] for n in range(12)]
        outcomes.append([api.wait_order(i)["status"] for i in ids])
    assert outcomes[0] == outcomes[1] and set(outcomes[0]) == {"completed", "failed"}


def test_faults_are_settable_and_readable_at_runtime(gifq: SandboxHandle) -> None:
    faults = gifq.control(
        "PATCH", "/faults", json={"500": 0.25, "payout_fail": 0.5, "latencyMs": 50, "seed": 3}
    )
    assert faults["500"] == Decimal("0.25") and faults["payout_fail"] == Decimal("0.5")
    assert faults["latencyMs"] == 50 and faults["seed"] == 3
    with pytest.raises(SandboxControlError) as refused:
        gifq.control("PATCH", "/faults", json={"drop": 2})
    assert refused.value.status_code == 400
    assert gifq.control("GET", "/faults")["drop"] == 0


def test_controls_are_exempt_from_limits_and_faults(
    make_gifq_sandbox: Callable[..., SandboxHandle],
) -> None:
    sandbox = make_gifq_sandbox(rate_limit=1, fault_500=1.0, fault_429=1.0, fault_latency=1.0)
    for _ in range(5):
        assert sandbox.control("GET", "/health") == {"ok": True, "provider": "gifq"}
    assert sandbox.control("GET", "/stats")["requests"] == {}
