"""Idempotency-Key: replay, payload mismatch, in-flight 409, expiry, what is stored."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from decimal import Decimal

from ugiftme_kit import Api, Reply, item

from batcher.sandbox.server import SandboxHandle


def test_sync_replay_returns_the_same_status_and_bytes(
    ugiftme_sandbox: SandboxHandle, sync_api: Api
) -> None:
    first = sync_api.post("/orders", item(), key="order-1")
    # Same JSON value, different bytes: key order, spacing and 10 vs 10.00.
    raw = (
        b'{ "recipientName": "Ann Example", "giftMessage": "Thank you!", "valuePurchased": 10,'
        b' "recipientEmail": "ann@example.com", "currency": "GBP", "merchant": "Amazon UK",'
        b' "productCode": "AMAZON_UK_STD" }'
    )
    again = sync_api.client.post(
        "/orders",
        content=raw,
        headers={"Idempotency-Key": "order-1", "Content-Type": "application/json"},
    )
    assert first.status == again.status_code == 201
    assert again.content == first.raw
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["X-Business-Orders-Async"] == "false"
    orders = sync_api.sandbox.control("GET", "/orders")["orders"]
    assert len(orders) == 1 and orders[0]["idempotencyKey"] == "order-1"


def test_async_replay_returns_the_same_order_request(api: Api) -> None:
    body = {"orders": [item(email="a@x.io"), item(email="b@x.io")]}
    first = api.post("/orders/bulk", body, key="bulk-1")
    api.wait_for_request(first.body["orderRequestId"], {"succeeded"})
    again = api.post("/orders/bulk", body, key="bulk-1")
    assert first.status == again.status == 202
    assert (
        again.body
        == first.body
        == {"orderRequestId": first.body["orderRequestId"], "status": "queued"}
    )
    assert api.sandbox.control("GET", "/order-requests")["total"] == 1
    assert api.sandbox.control("GET", "/orders")["total"] == 2


def test_different_payload_with_the_same_key_is_400(sync_api: Api) -> None:
    assert sync_api.post("/orders", item(), key="k").status == 201
    other = sync_api.post("/orders", item(value="20"), key="k")
    assert other.status == 400
    assert other.body == {"error": "Idempotency key reused with a different payload"}
    # The route is part of the payload identity.
    bulk = sync_api.post("/orders/bulk", {"orders": [item()]}, key="k")
    assert bulk.status == 400
    assert sync_api.get("/orders").body["total"] == 1


def test_concurrent_request_with_the_same_key_gets_409(
    make_ugiftme_sandbox: Callable[..., SandboxHandle], api_for: Callable[..., Api]
) -> None:
    sandbox = make_ugiftme_sandbox(async_mode=False, fault_latency=1.0, latency_ms=2000)
    first_api, second_api = api_for(sandbox), api_for(sandbox)
    results: dict[str, Reply] = {}

    def slow_first() -> None:
        results["first"] = first_api.post("/orders", item(), key="busy")

    worker = threading.Thread(target=slow_first)
    worker.start()
    # The second goes once the first holds the key, sleeping inside the window (a fixed
    # 0.15 s sleep could lose the race either way on a loaded machine).
    deadline = time.monotonic() + 10
    while "busy" not in sandbox.app_state.idempotency.in_flight_keys():
        assert time.monotonic() < deadline, "the first request never reached the sandbox"
        time.sleep(0.01)
    sandbox.control("PATCH", "/faults", json={"latency": 0})
    second = second_api.post("/orders", item(), key="busy")
    worker.join()
    assert second.status == 409
    assert second.body == {"error": "Request with this Idempotency-Key is in progress"}
    assert results["first"].status == 201
    replay = second_api.post("/orders", item(), key="busy")
    assert replay.status == 201 and replay.raw == results["first"].raw
    assert sandbox.control("GET", "/orders")["total"] == 1


def test_keys_expire_after_the_ttl(
    make_ugiftme_sandbox: Callable[..., SandboxHandle], api_for: Callable[..., Api]
) -> None:
    # A long TTL while the replay is checked (a loaded machine can take longer than a
    # short one between two requests), then a short one: the current TTL applies.
    sandbox = make_ugiftme_sandbox(async_mode=False, idempotency_ttl_seconds=3600)
    api = api_for(sandbox)
    first = api.post("/orders", item(), key="short")
    assert api.post("/orders", item(), key="short").raw == first.raw
    sandbox.control("PATCH", "/config", json={"idempotencyTtlSeconds": 0.3})
    time.sleep(0.35)
    fresh = api.post("/orders", item(), key="short")
    assert fresh.status == 201 and fresh.body["_id"] != first.body["_id"]
    assert sandbox.control("GET", "/orders")["total"] == 2
    # The TTL can be changed at runtime.
    sandbox.control("PATCH", "/config", json={"idempotencyTtlSeconds": 3600})
    assert sandbox.control("GET", "/config")["idempotencyTtlSeconds"] == 3600


def test_402_and_400_answers_are_stored_for_replay(
    make_ugiftme_sandbox: Callable[..., SandboxHandle], api_for: Callable[..., Api]
) -> None:
    sandbox = make_ugiftme_sandbox(async_mode=False, funding={"GBP": "5.00"})
    api = api_for(sandbox)
    refused = api.post("/orders", item(), key="poor")
    assert refused.status == 402
    sandbox.control("POST", "/wallets/GBP/fund", json={"amount": "100"})
    replay = api.post("/orders", item(), key="poor")
    assert replay.status == 402 and replay.raw == refused.raw  # Stripe-like: the answer stands
    assert api.post("/orders", item(), key="poor-attempt-2").status == 201
    invalid = api.post("/orders", item("NOPE"), key="bad")
    assert invalid.status == 400 and api.post("/orders", item("NOPE"), key="bad").raw == invalid.raw


def test_error_replay_can_be_switched_off(
    make_ugiftme_sandbox: Callable[..., SandboxHandle], api_for: Callable[..., Api]
) -> None:
    sandbox = make_ugiftme_sandbox(
        async_mode=False, funding={"GBP": "5.00"}, idempotency_replay_errors=False
    )
    api = api_for(sandbox)
    assert api.post("/orders", item(), key="poor").status == 402
    sandbox.control("POST", "/wallets/GBP/fund", json={"amount": "100"})
    assert api.post("/orders", item(), key="poor").status == 201


def test_idempotency_key_length_is_checked(sync_api: Api) -> None:
    assert sync_api.post("/orders", item(), key="k" * 255).status == 201
    too_long = sync_api.post("/orders", item(email="b@x.io"), key="k" * 256)
    assert too_long.status == 400 and too_long.body["error"] == "Invalid Idempotency-Key"


def test_a_replay_does_not_charge_twice(sync_api: Api) -> None:
    for _ in range(3):
        sync_api.post("/orders/bulk", {"orders": [item(), item(email="b@x.io")]}, key="twice")
    assert sync_api.wallet("GBP")["balance"] == Decimal("10000.00") - 2 * Decimal("9.75")
