"""Webhook deliveries: signed POSTs, the events the contract lists, retries on failure."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from decimal import Decimal

from ugiftme_kit import Api, Received, WebhookReceiver, item

from batcher.sandbox.jsonio import decode_json
from batcher.sandbox.server import SandboxHandle


def _verifies(secret: str, delivery: Received) -> bool:
    expected = hmac.new(secret.encode(), delivery.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, delivery.headers["X-Webhook-Signature"])


def _subscribe(api: Api, url: str, events: list[str]) -> str:
    reply = api.post("/webhooks", {"url": url, "events": events})
    assert reply.status == 201
    secret: str = reply.body["secret"]
    return secret


def test_order_lifecycle_events_are_signed(api: Api, webhook_receiver: WebhookReceiver) -> None:
    events = ["order.queued", "order.processing", "order.succeeded", "wallet.updated"]
    secret = _subscribe(api, webhook_receiver.url, events)
    request_id = api.post("/orders", item()).body["orderRequestId"]
    api.wait_for_request(request_id, {"succeeded"})
    received = webhook_receiver.wait_for(5)
    assert all(_verifies(secret, r) for r in received)
    assert not any(_verifies("whsec_wrong", r) for r in received)
    by_event: dict[str, list[dict]] = {}
    for delivery in received:
        payload = decode_json(delivery.body)
        assert payload["event"] == delivery.headers["X-Webhook-Event"]
        by_event.setdefault(payload["event"], []).append(payload)
    assert set(by_event) == set(events)
    queued = by_event["order.queued"][0]
    assert (queued["orderRequestId"], queued["type"], queued["orderCount"]) == (
        request_id,
        "single",
        1,
    )
    succeeded = by_event["order.succeeded"][0]
    assert succeeded["result"]["productCode"] == "AMAZON_UK_STD" and succeeded["timestamp"]
    sources = [w["source"] for w in by_event["wallet.updated"]]
    assert sources == ["hold", "purchase"]
    hold = by_event["wallet.updated"][0]
    assert hold["availableBalance"] == Decimal("9990.25") and hold["balance"] == Decimal("10000.00")


def test_failed_delivery_is_retried(
    make_ugiftme_sandbox: Callable[..., SandboxHandle],
    api_for: Callable[..., Api],
    webhook_receiver: WebhookReceiver,
) -> None:
    sandbox = make_ugiftme_sandbox(webhook_time_scale=0.001)  # 1 min -> 60 ms, 5 min -> 300 ms
    api = api_for(sandbox)
    secret = _subscribe(api, webhook_receiver.url, ["wallet.updated"])
    webhook_receiver.fail_first = 2
    sandbox.control("POST", "/wallets/USD/fund", json={"amount": "12.34"})
    received = webhook_receiver.wait_for(3)
    assert [r.status_sent for r in received] == [500, 500, 200]
    assert len({r.body for r in received}) == 1  # the same body every time
    assert all(_verifies(secret, r) for r in received)
    payload = decode_json(received[-1].body)
    assert payload["source"] == "funding" and payload["transaction"]["transactionValue"] == Decimal(
        "12.34"
    )
    deliveries = sandbox.control("GET", "/webhooks/deliveries")["deliveries"]
    assert len(deliveries) == 1 and deliveries[0]["delivered"] is True
    assert [a["statusCode"] for a in deliveries[0]["attempts"]] == [500, 500, 200]


def test_failed_order_event(
    make_ugiftme_sandbox: Callable[..., SandboxHandle],
    api_for: Callable[..., Api],
    webhook_receiver: WebhookReceiver,
) -> None:
    api = api_for(make_ugiftme_sandbox(fault_async_fail=1.0))
    _subscribe(api, webhook_receiver.url, ["order.failed"])
    request_id = api.post("/orders", item()).body["orderRequestId"]
    payload = decode_json(webhook_receiver.wait_for(1)[0].body)
    assert payload["orderRequestId"] == request_id and payload["status"] == "failed"
    assert payload["error"].startswith("Upstream supplier error")


def test_inactive_or_unsubscribed_hooks_get_nothing(
    ugiftme_sandbox: SandboxHandle, api: Api, webhook_receiver: WebhookReceiver
) -> None:
    _subscribe(api, webhook_receiver.url, ["order.succeeded"])
    ugiftme_sandbox.control("POST", "/wallets/GBP/fund", json={"amount": "1"})  # wallet.updated
    hook_id = api.get("/webhooks").body["webhooks"][0]["id"]
    api.send("PATCH", f"/webhooks/{hook_id}", {"isActive": False})
    api.wait_for_request(api.post("/orders", item()).body["orderRequestId"], {"succeeded"})
    assert webhook_receiver.wait_for(1, timeout=0.3) == []


def test_product_updated_event(
    ugiftme_sandbox: SandboxHandle, api: Api, webhook_receiver: WebhookReceiver
) -> None:
    _subscribe(api, webhook_receiver.url, ["product.updated"])
    ugiftme_sandbox.control("PATCH", "/products/TESCO_UK", json={"isActive": False})
    payload = decode_json(webhook_receiver.wait_for(1)[0].body)
    assert payload["productCode"] == "TESCO_UK" and payload["changes"] == ["isActive"]
    assert payload["product"]["isActive"] is False
    ugiftme_sandbox.control("PUT", "/mode", json={"mode": "sync"})
    assert api.post("/orders", item("TESCO_UK", "10")).body["error"] == "Product inactive"


def test_webhook_test_endpoint_posts_a_signed_sample(
    api: Api, webhook_receiver: WebhookReceiver
) -> None:
    secret = _subscribe(api, webhook_receiver.url, ["order.succeeded"])
    hook_id = api.get("/webhooks").body["webhooks"][0]["id"]
    reply = api.post("/webhooks/test", {"webhookId": hook_id})
    assert reply.status == 200
    assert reply.body["ok"] is True and reply.body["statusCode"] == 200
    assert reply.body["payload"]["event"] == "order.succeeded"
    assert _verifies(secret, webhook_receiver.wait_for(1)[0])
    webhook_receiver.fail_first = 1
    failed = api.post("/webhooks/test", {"webhookId": hook_id}).body
    assert failed["ok"] is False and failed["statusCode"] == 500 and failed["errorMessage"]
