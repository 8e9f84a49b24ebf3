"""The webhook receiver in process: signatures, refusals, deduplication, redaction,
and one parser for events and polls."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import sqlite3
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from starlette.testclient import TestClient

from batcher.config import PROFILES, ProviderSettings
from batcher.ledger.events import WebhookEvents
from batcher.ledger.store import Ledger
from batcher.providers.base import OrderItem
from batcher.providers.ugiftme import UGiftMeProvider
from batcher.providers.ugiftme_webhooks import read_event
from batcher.receiver.app import PATH, ReceiverConfig, create_receiver
from batcher.receiver.verify import verified
from batcher.transport.http import canonical_json

SECRET = "whsec_" + "ab" * 24
API_KEY = "0f9e8d7c-6b5a-4321-8765-0123456789ab"
VOUCHER = "GIFT-ABCD-EFGH-WXYZ"


def sign(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def order(email: str = "a@example.com", amount: str = "25.00") -> dict[str, Any]:
    return {
        "_id": "65f1c0ffee0000000000c001",
        "productCode": "AMAZON_UK_STD",
        "currency": "GBP",
        "valuePurchased": Decimal(amount),
        "status": "active",
        "transactionId": "txn_1",
        "merchant": {"name": "Amazon", "voucherCode": VOUCHER, "redemptionUrl": "https://r/x"},
        "giftOrder": {"recipientEmail": email, "recipientName": "A", "message": ""},
    }


def succeeded(request_id: str = "65f1c0ffee0000000000beef") -> dict[str, Any]:
    return {
        "event": "order.succeeded",
        "orderRequestId": request_id,
        "status": "succeeded",
        "type": "bulk",
        "result": {"orders": [order()], "rejectedOrders": [], "summary": {}},
        "timestamp": "2026-01-01T00:00:00.000Z",
    }


@pytest.fixture
def store(tmp_path: Path) -> WebhookEvents:
    events = WebhookEvents.open(tmp_path)
    yield events
    events.close()


@pytest.fixture
def client(store: WebhookEvents) -> TestClient:
    config = ReceiverConfig(
        "ugiftme", (SecretStr(SECRET),), read_event, scrub=(SECRET, API_KEY), max_body_bytes=64_000
    )
    return TestClient(create_receiver(config, store))


def post(client: TestClient, body: bytes, signature: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json", "X-Webhook-Event": "order.succeeded"}
    if signature is not None:
        headers["X-Webhook-Signature"] = signature
    return client.post(PATH, content=body, headers=headers)


def rows(store: WebhookEvents) -> list[sqlite3.Row]:
    db = sqlite3.connect(store.path)
    db.row_factory = sqlite3.Row
    try:
        return list(db.execute("SELECT * FROM webhook_events ORDER BY id"))
    finally:
        db.close()


def test_a_signed_event_is_recorded_once_however_often_it_arrives(
    client: TestClient, store: WebhookEvents
) -> None:
    body = canonical_json(succeeded())
    first = post(client, body, sign(body))
    again = post(client, body, sign(body))
    assert (first.status_code, first.json()["duplicate"]) == (200, False)
    assert (again.status_code, again.json()["duplicate"]) == (200, True)
    [row] = rows(store)
    assert (row["verdict"], row["event"], row["request_id"]) == (
        "accepted",
        "order.succeeded",
        "65f1c0ffee0000000000beef",
    )
    assert json.loads(row["order_ids"]) == ["65f1c0ffee0000000000c001"]
    assert row["deliveries"] == 2 and row["received_at"]
    assert store.terminal_payloads(["65f1c0ffee0000000000beef"])


def test_an_unsigned_delivery_is_refused_and_recorded(
    client: TestClient, store: WebhookEvents
) -> None:
    body = canonical_json(succeeded())
    assert post(client, body, None).status_code == 401
    [row] = rows(store)
    assert (row["verdict"], row["reason"], row["payload"]) == ("rejected", "unsigned", None)
    assert not store.terminal_payloads(["65f1c0ffee0000000000beef"])


def test_a_delivery_signed_with_another_secret_is_refused(
    client: TestClient, store: WebhookEvents
) -> None:
    body = canonical_json(succeeded())
    assert post(client, body, sign(body, "whsec_" + "cd" * 24)).status_code == 401
    assert post(client, body, "not-hex").status_code == 401
    assert [r["reason"] for r in rows(store)] == ["bad signature", "bad signature"]


def test_a_genuine_signature_over_a_changed_body_is_refused(
    client: TestClient, store: WebhookEvents
) -> None:
    original = canonical_json(succeeded())
    changed = canonical_json({**succeeded(), "status": "failed", "replayed": True})
    assert post(client, changed, sign(original)).status_code == 401
    assert [r["verdict"] for r in rows(store)] == ["rejected"]


def test_oversized_and_malformed_deliveries_are_refused(
    client: TestClient, store: WebhookEvents
) -> None:
    big = b'{"event":"order.succeeded","pad":"' + b"x" * 70_000 + b'"}'
    assert post(client, big, sign(big)).status_code == 413
    broken = b'{"event": "order.succeeded", '
    assert post(client, broken, sign(broken)).status_code == 400
    no_request = canonical_json({"event": "order.failed", "status": "failed"})
    assert post(client, no_request, sign(no_request)).status_code == 400
    reasons = [r["reason"] for r in rows(store)]
    assert reasons[0] == "body too large" and all(r.startswith("malformed") for r in reasons[1:])


def test_voucher_codes_are_cut_to_four_and_echoed_secrets_never_stored(
    client: TestClient, store: WebhookEvents
) -> None:
    failed = {
        "event": "order.failed",
        "orderRequestId": "65f1c0ffee0000000000f00d",
        "status": "failed",
        "error": f"upstream refused key {API_KEY}",
    }
    for payload in (succeeded(), failed):
        body = canonical_json(payload)
        assert post(client, body, sign(body)).status_code == 200
    stored = Path(store.path).read_bytes() + b"".join(
        p.read_bytes() for p in Path(store.path).parent.glob("*.sqlite-wal")
    )
    assert VOUCHER.encode() not in stored and b"https://r/x" not in stored
    assert API_KEY.encode() not in stored and SECRET.encode() not in stored
    payload = store.terminal_payloads(["65f1c0ffee0000000000beef"])["65f1c0ffee0000000000beef"]
    assert payload["result"]["orders"][0]["merchant"] == {"name": "Amazon", "voucherCode": "WXYZ"}


def test_a_delivery_waiting_on_a_busy_ledger_is_answered_503_and_kept_on_its_retry(
    store: WebhookEvents,
) -> None:
    """The write waits in a thread, not on the event loop: the health check answers
    while a delivery waits, the delivery gets a 503 (the provider retries), and the
    write lands once the ledger is free."""
    # 3 s: the health check must be answered while the delivery still waits, even on a
    # loaded machine
    config = ReceiverConfig(
        "ugiftme", (SecretStr(SECRET),), read_event, scrub=(SECRET,), ledger_wait_seconds=3.0
    )
    app = create_receiver(config, store)
    body = canonical_json(succeeded())
    headers = {"Content-Type": "application/json", "X-Webhook-Signature": sign(body)}
    forged = {**headers, "X-Webhook-Signature": sign(body, "whsec_" + "cd" * 24)}

    async def while_locked() -> tuple[httpx.Response, httpx.Response, bool]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://r") as client:
            delivery = asyncio.create_task(client.post(PATH, content=body, headers=headers))
            await asyncio.sleep(0.05)  # the delivery is waiting for the ledger now
            health = await client.get("/healthz")
            answered_first = not delivery.done()  # a blocked loop answers it only after
            refusal = await client.post(PATH, content=body, headers=forged)
            return await delivery, refusal, answered_first and health.status_code == 200

    holder = sqlite3.connect(store.path, isolation_level=None)  # a run's write transaction
    holder.execute("BEGIN IMMEDIATE")
    try:
        answer, refusal, health_answered_first = asyncio.run(while_locked())
        assert rows(store) == []  # nothing could be written while the lock was held
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert health_answered_first
    assert (answer.status_code, answer.json()["error"]) == (503, "ledger busy, retry")
    assert refusal.status_code == 401  # a refusal stands, recorded or not
    # the abandoned write lands once the lock is free; the provider's retry is a repeat
    deadline = time.monotonic() + 30
    while not rows(store) and time.monotonic() < deadline:
        time.sleep(0.02)
    with TestClient(app) as client:
        retried = post(client, body, sign(body))
    assert (retried.status_code, retried.json()["duplicate"]) == (200, True)
    # the refusal's record was still queued when its wait ended: dropped, not left to pile up
    [accepted] = rows(store)
    assert (accepted["verdict"], accepted["deliveries"]) == ("accepted", 2)


def test_on_postgresql_a_delivery_waiting_for_a_runs_write_lock_is_answered_503(
    pg_url: str,
) -> None:
    """The same on PostgreSQL, where a run's write transaction holds an advisory lock:
    the psycopg connection is used from the writer thread, and the write lands later."""
    import psycopg

    from batcher.ledger.backend import LEDGER_WRITE_LOCK
    from batcher.ledger.location import parse_ledger_url

    events = WebhookEvents(parse_ledger_url(pg_url))
    config = ReceiverConfig(
        "ugiftme", (SecretStr(SECRET),), read_event, scrub=(SECRET,), ledger_wait_seconds=0.5
    )
    app = create_receiver(config, events)
    body = canonical_json(succeeded())
    try:
        with psycopg.connect(pg_url, autocommit=True) as holder, TestClient(app) as client:
            holder.execute("BEGIN")
            holder.execute(f"SELECT pg_advisory_xact_lock({LEDGER_WRITE_LOCK})")
            answer = post(client, body, sign(body))
            holder.execute("ROLLBACK")
        assert (answer.status_code, answer.json()["error"]) == (503, "ledger busy, retry")
        deadline = time.monotonic() + 30
        while not events.listing() and time.monotonic() < deadline:
            time.sleep(0.02)
        [kept] = events.listing()
        assert (kept.verdict, kept.request_id) == ("accepted", "65f1c0ffee0000000000beef")
    finally:
        app.state.ledger_writer.close()
        events.close()


def test_verification_accepts_any_current_secret_during_rotation() -> None:
    body = b'{"event":"wallet.updated"}'
    old, new = SecretStr(SECRET), SecretStr("whsec_" + "ef" * 24)
    assert verified((old, new), body, sign(body, new.get_secret_value()))
    assert not verified((old,), body, sign(body, new.get_secret_value()))
    assert not verified((old, new), body, None)


def test_an_event_and_a_poll_give_the_same_result() -> None:
    """The runner settles events with the poll parser: one answer, one result."""
    request = succeeded()
    poll_body = {k: v for k, v in request.items() if k != "event"}

    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=canonical_json(poll_body))

    settings = ProviderSettings(
        "ugiftme", "https://api.example.test/api/v1/business", SecretStr(API_KEY),
        PROFILES["ugiftme"],
    )  # fmt: skip
    provider = UGiftMeProvider(settings, transport=httpx.MockTransport(handler))
    provider._discounts = {}  # no catalog round trip
    item = OrderItem(
        row_key="r1", product_code="AMAZON_UK_STD", merchant="Amazon", currency="GBP",
        amount=Decimal("25.00"), recipient_email="a@example.com", recipient_name="A",
    )  # fmt: skip
    event = json.loads(read_event(canonical_json(request)).payload, parse_float=Decimal)
    from_event = provider.order_request_result(event, [item])
    from_poll = provider.poll(request["orderRequestId"], [item])
    provider.close()
    assert from_event.kind == from_poll.kind == "completed"
    strip = [(i.row_key, i.status, i.order_id, i.cost) for i in from_event.items]
    assert strip == [(i.row_key, i.status, i.order_id, i.cost) for i in from_poll.items]
    # the event's copy of the code is already cut to its last 4
    assert from_event.items[0].voucher_code == "WXYZ"


def test_an_event_for_a_request_no_batch_sent_is_kept_as_an_orphan(
    client: TestClient, store: WebhookEvents, tmp_path: Path
) -> None:
    for request_id in ("65f1c0ffee0000000000a001", "65f1c0ffee0000000000a002"):
        body = canonical_json(succeeded(request_id))
        assert post(client, body, sign(body)).status_code == 200
    assert store.orphan_count() == 2
    ledger = Ledger.open(tmp_path)  # a batch that sent the first request
    try:
        ledger.ensure_batch(
            "b", provider="ugiftme", account_id="a", source_path="s.csv", source_sha256="0" * 64
        )
        ledger.save_plan("b", [("k1", "GBP", 1, ["r1"], b"{}")])
        ledger.mark_sending("b", "k1")
        ledger.mark_accepted("b", "k1", "65f1c0ffee0000000000a001")
    finally:
        ledger.close()
    assert [e.request_id for e in store.orphans()] == ["65f1c0ffee0000000000a002"]
    assert store.orphan_count() == 1
