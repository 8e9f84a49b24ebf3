"""Async mode: 202 + order request, queued -> processing -> succeeded|failed, holds."""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal

from ugiftme_kit import Api, item

from batcher.sandbox.server import SandboxHandle


def test_async_bulk_lifecycle_with_hold(
    make_ugiftme_sandbox: Callable[..., SandboxHandle], api_for: Callable[..., Api]
) -> None:
    sandbox = make_ugiftme_sandbox(async_delay_seconds=0.25)
    api = api_for(sandbox)
    orders = [item(email="a@x.io"), item("TESCO_UK", "20", "b@x.io"), item("NOPE", "5", "c@x.io")]
    accepted = api.post("/orders/bulk", {"orders": orders})
    assert accepted.status == 202
    assert accepted.headers["X-Business-Orders-Async"] == "true"
    request_id = accepted.body["orderRequestId"]
    assert accepted.body == {"orderRequestId": request_id, "status": "queued"}

    hold = Decimal("9.75") + Decimal("19.20")  # the unknown product holds nothing
    wallet = api.wallet("GBP")
    assert wallet["balance"] == Decimal("10000.00")
    assert wallet["availableBalance"] == Decimal("10000.00") - hold

    queued = api.get(f"/orders/order-requests/{request_id}").body
    assert queued["status"] == "queued" and queued["type"] == "bulk"
    assert "result" not in queued and "error" not in queued
    assert api.wait_for_request(request_id, {"processing"})["status"] == "processing"
    done = api.wait_for_request(request_id, {"succeeded", "failed"})
    assert done["status"] == "succeeded"
    result = done["result"]
    assert result["success"] is True and len(result["orders"]) == 2
    assert result["rejectedOrders"] == [{"productCode": "NOPE", "reason": "Product NOPE not found"}]
    assert result["summary"]["totalOrders"] == 2 and result["summary"]["currency"] == "GBP"

    wallet = api.wallet("GBP")
    assert wallet["balance"] == wallet["availableBalance"] == Decimal("10000.00") - hold
    listed = sandbox.control("GET", "/orders")["orders"]
    assert {o["orderRequestId"] for o in listed} == {request_id}


def test_async_single_order(api: Api) -> None:
    accepted = api.post("/orders", item("ZALANDO_EU", "50"))
    assert accepted.status == 202
    done = api.wait_for_request(accepted.body["orderRequestId"], {"succeeded", "failed"})
    assert done["type"] == "single" and done["status"] == "succeeded"
    assert (
        done["result"]["productCode"] == "ZALANDO_EU" and done["result"]["merchant"]["voucherCode"]
    )
    assert api.wallet("EUR")["balance"] == Decimal("10000.00") - Decimal("47.25")


def test_async_single_validation_fails_in_the_worker(api: Api) -> None:
    accepted = api.post("/orders", item("HMV_UK", "10"))
    assert accepted.status == 202
    done = api.wait_for_request(accepted.body["orderRequestId"], {"succeeded", "failed"})
    assert done["status"] == "failed" and done["error"] == "Product HMV_UK is not active"
    assert api.get("/orders").body["total"] == 0


def test_async_402_at_acceptance(
    make_ugiftme_sandbox: Callable[..., SandboxHandle], api_for: Callable[..., Api]
) -> None:
    sandbox = make_ugiftme_sandbox(funding={"GBP": "15.00"})
    api = api_for(sandbox)
    first = api.post("/orders", item())
    assert first.status == 202  # holds 9.75 of 15.00
    second = api.post("/orders", item(email="b@x.io"))
    assert second.status == 402
    assert second.body["available"] == Decimal("5.25") and second.body["required"] == Decimal(
        "9.75"
    )
    assert sandbox.control("GET", "/order-requests")["total"] == 1


def test_request_fails_when_the_wallet_was_drained_meanwhile(
    make_ugiftme_sandbox: Callable[..., SandboxHandle], api_for: Callable[..., Api]
) -> None:
    # Processed 2 s after it was accepted: time enough to drain the wallet before, even
    # on a loaded machine (at 0.2 s a CI-class run drained it after the order was made).
    sandbox = make_ugiftme_sandbox(async_delay_seconds=2.0, rate_limit=100_000)  # polled 2 s
    api = api_for(sandbox)
    accepted = api.post("/orders", item())
    sandbox.control("POST", "/wallets/GBP/drain")
    done = api.wait_for_request(accepted.body["orderRequestId"], {"succeeded", "failed"})
    assert done["status"] == "failed" and done["error"].startswith("Insufficient available balance")
    wallet = api.wallet("GBP")
    assert wallet["balance"] == wallet["availableBalance"] == Decimal("0.00")


def test_switching_modes_at_runtime(ugiftme_sandbox: SandboxHandle, api: Api) -> None:
    assert api.post("/orders", item()).status == 202
    ugiftme_sandbox.control("PUT", "/mode", json={"mode": "sync"})
    assert api.post("/orders", item(email="b@x.io")).status == 201
    ugiftme_sandbox.control("PATCH", "/config", json={"asyncMode": True, "asyncDelaySeconds": 0.01})
    accepted = api.post("/orders", item(email="c@x.io"))
    assert accepted.status == 202
    start = time.monotonic()
    api.wait_for_request(accepted.body["orderRequestId"], {"succeeded"})
    assert time.monotonic() - start < 1.0
