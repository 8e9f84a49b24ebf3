"""GIFQ payouts: campaigns, payout orders (atomic, <= 1,000 recipients, Idempotency-Key),
the queued -> processing -> completed|failed worker and per-recipient payouts."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from gifq_kit import ROOMY_RATE_LIMIT, GifqApi, payout_body

from batcher.sandbox.jsonio import decode_json
from batcher.sandbox.server import SandboxHandle


def test_campaigns_and_their_catalog(gifq_api: GifqApi) -> None:
    campaigns = gifq_api.get("/campaigns")
    assert campaigns.headers["total-count"] == str(len(campaigns.body))
    statuses = {c["id"]: c["status"] for c in campaigns.body}
    assert statuses == {101: "active", 102: "active", 103: "paused", 104: "draft", 105: "archived"}
    first = campaigns.body[0]
    assert set(first) >= {"id", "title", "status", "brands"}
    catalog = gifq_api.get("/campaigns/101/catalog", limit=20)
    assert [b["brand"] for b in catalog.body] == sorted(first["brands"])
    assert catalog.body[0]["products"] and catalog.headers["total-pages"] == "1"
    assert gifq_api.get("/campaigns/999/catalog").status == 404


def test_payout_order_runs_to_completed_with_one_sent_payout_per_recipient(
    gifq_api: GifqApi,
) -> None:
    accepted = gifq_api.post("/payout-orders", payout_body(3))
    assert accepted.status == 202
    assert set(accepted.body) == {"id", "status"} and accepted.body["status"] == "queued"
    assert gifq_api.balance("GBP") == Decimal("4970.00")  # charged at once
    order_id = accepted.body["id"]
    seen = {gifq_api.get(f"/payout-orders/{order_id}").body["status"]}
    done = gifq_api.wait_payout_order(order_id)
    seen.add(gifq_api.get(f"/payout-orders/{order_id}").body["status"])
    assert seen <= {"queued", "processing", "completed"}
    assert done["status"] == "completed" and done["recipient_count"] == 3
    assert done["total_amount"] == "30.00" and done["wallet_currency"] == "GBP"
    assert done["campaign_id"] == 101 and "fx_fee" not in done
    payouts = gifq_api.get("/payouts", payout_order_id=order_id).body
    assert [p["email"] for p in payouts] == [f"r{n}@payout.example" for n in range(3)]
    assert {(p["status"], p["amount"], p["currency"]) for p in payouts} == {
        ("sent", "10.00", "GBP")
    }
    assert all(p["payout_order_id"] == order_id for p in payouts)
    listed = gifq_api.get("/payout-orders").body
    assert listed[0]["id"] == order_id and listed[0]["status"] == "completed"
    payout_tx = gifq_api.get("/transactions").body[0]
    assert payout_tx["type"] == "payout" and payout_tx["amount"] == "-30.00"
    assert payout_tx["payout_order_id"] == order_id


def test_payout_order_passes_through_processing(
    make_gifq_sandbox: Callable[..., SandboxHandle], gifq_api_for: Callable[..., GifqApi]
) -> None:
    api = gifq_api_for(make_gifq_sandbox(rate_limit=ROOMY_RATE_LIMIT, async_delay_seconds=0.3))
    order_id = api.post("/payout-orders", payout_body(1)).body["id"]
    assert api.get(f"/payout-orders/{order_id}").body["status"] == "queued"
    assert api.wait_for(f"/payout-orders/{order_id}", {"processing"})["status"] == "processing"
    assert api.get("/payouts", payout_order_id=order_id).body == []
    assert api.wait_payout_order(order_id)["status"] == "completed"


def test_cross_currency_recipients_pay_an_fx_fee(gifq_api: GifqApi) -> None:
    body = payout_body(1, wallet_currency="USD")
    body["recipients"].append({"email": "eu@x.io", "amount": "10.00", "currency": "EUR"})
    body["recipients"].append({"email": "us@x.io", "amount": "10.00", "currency": "USD"})
    order_id = gifq_api.post("/payout-orders", body).body["id"]
    order = gifq_api.get(f"/payout-orders/{order_id}").body
    # 10 GBP x 1.27 = 12.70, 10 EUR x 1.085 = 10.85 (10.85), 10 USD; fee 1% of 23.55 = 0.2355
    assert order["total_amount"] == "33.55"
    assert order["fx_fee"] == {
        "rates": {"EUR": "1.085", "GBP": "1.27"},
        "fee_percentage": "1.00",
        "fee_amount": "0.24",
        "total_charged": "33.79",
        "currency": "USD",
    }
    assert gifq_api.balance("USD") == Decimal("4966.21")


def test_at_most_1000_recipients(gifq: SandboxHandle, gifq_api: GifqApi) -> None:
    gifq.control("POST", "/balances/GBP/fund", json={"amount": "20000"})
    too_many = gifq_api.post("/payout-orders", payout_body(1001, amount="1.00"))
    assert too_many.status == 422 and too_many.body["request_id"]
    assert too_many.body["message"] == "A payout order may hold at most 1000 recipients; got 1001"
    full = gifq_api.post("/payout-orders", payout_body(1000, amount="1.00"))
    assert full.status == 202
    done = gifq_api.wait_payout_order(full.body["id"])
    assert done["recipient_count"] == 1000 and done["total_amount"] == "1000.00"
    assert len(gifq_api.all_pages("/payouts", payout_order_id=full.body["id"])) == 1000


def test_short_funds_refuse_atomically(gifq: SandboxHandle, gifq_api: GifqApi) -> None:
    gifq.control("PUT", "/balances/GBP", json={"amount": "29.99"})
    reply = gifq_api.post("/payout-orders", payout_body(3))
    assert reply.status == 422 and reply.body["request_id"] == reply.headers["X-Request-Id"]
    assert reply.body["message"].startswith("Insufficient balance: 30.00 GBP required")
    assert gifq_api.balance("GBP") == Decimal("29.99")
    assert gifq.control("GET", "/payout-orders")["total"] == 0
    assert gifq.control("GET", "/payouts")["total"] == 0
    assert gifq_api.get("/payout-orders").body == []


@pytest.mark.parametrize("campaign_id", [103, 104, 105])
def test_campaign_must_be_active(gifq: SandboxHandle, gifq_api: GifqApi, campaign_id: int) -> None:
    reply = gifq_api.post("/payout-orders", payout_body(campaign_id=campaign_id))
    assert reply.status == 422 and "payout orders need an active campaign" in reply.body["message"]
    assert gifq_api.balance("GBP") == Decimal("5000.00")
    gifq.control("PATCH", f"/campaigns/{campaign_id}", json={"status": "active"})
    assert gifq_api.post("/payout-orders", payout_body(campaign_id=campaign_id)).status == 202


def test_campaign_controls(gifq: SandboxHandle, gifq_api: GifqApi) -> None:
    created = gifq.control("POST", "/campaigns", json={"title": "Pilot", "brands": ["amazon"]})
    assert created["id"] == 106 and created["status"] == "active"
    paused = gifq.control("PATCH", "/campaigns/101", json={"status": "paused"})
    assert paused["status"] == "paused"
    assert gifq_api.post("/payout-orders", payout_body()).status == 422
    assert gifq_api.post("/payout-orders", payout_body(campaign_id=106)).status == 202
    statuses = {c["id"]: c["status"] for c in gifq_api.get("/campaigns").body}
    assert statuses[101] == "paused" and statuses[106] == "active"


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"campaign_id": 999}, "Campaign 999 not found"),
        ({"recipients": []}, "recipients must be a non-empty array"),
        ({"expires_in_days": 0}, "expires_in_days"),
        ({"wallet_currency": "pounds"}, "wallet_currency"),
        ({"callback_url": "ftp://x"}, "callback_url"),
        (
            {"recipients": [{"email": "nope", "amount": 1, "currency": "GBP"}]},
            "recipients[0].email",
        ),
        ({"recipients": [{"email": "a@b.io", "amount": "0", "currency": "GBP"}]}, "positive"),
        ({"recipients": [{"email": "a@b.io", "amount": 1, "currency": "JPY"}]}, "No exchange rate"),
    ],
)
def test_bad_payout_orders_are_422(
    gifq_api: GifqApi, change: dict[str, Any], fragment: str
) -> None:
    reply = gifq_api.post("/payout-orders", {**payout_body(), **change})
    assert reply.status == 422 and fragment in reply.body["message"], reply.body
    assert gifq_api.balance("GBP") == Decimal("5000.00")


# -- Idempotency-Key ----------------------------------------------------------------


def test_idempotency_key_replays_the_accepted_answer(
    gifq: SandboxHandle, gifq_api: GifqApi
) -> None:
    first = gifq_api.post("/payout-orders", payout_body(2), key="po-1")
    again = gifq_api.post("/payout-orders", payout_body(2), key="po-1")
    assert (first.status, again.status) == (202, 202)
    assert again.raw == first.raw and again.headers["Idempotent-Replayed"] == "true"
    assert gifq.control("GET", "/payout-orders")["total"] == 1
    assert gifq_api.balance("GBP") == Decimal("4980.00")
    other = gifq_api.post("/payout-orders", payout_body(3), key="po-1")
    assert other.status == 422
    assert other.body["message"] == "Idempotency-Key already used with a different payload"
    assert gifq_api.post("/payout-orders", payout_body(2)).status == 202  # no key: a new order
    assert gifq.control("GET", "/payout-orders")["total"] == 2


def test_idempotency_key_replays_a_422_and_is_per_token(
    make_gifq_sandbox: Callable[..., SandboxHandle], gifq_api_for: Callable[..., GifqApi]
) -> None:
    sandbox = make_gifq_sandbox(api_keys=("a", "b"), rate_limit=ROOMY_RATE_LIMIT)
    a, b = gifq_api_for(sandbox, "a"), gifq_api_for(sandbox, "b")
    sandbox.control("PUT", "/balances/GBP", json={"amount": 0}, api_key="a")
    refused = a.post("/payout-orders", payout_body(), key="k")
    sandbox.control("PUT", "/balances/GBP", json={"amount": 100}, api_key="a")
    replayed = a.post("/payout-orders", payout_body(), key="k")
    assert refused.status == replayed.status == 422 and replayed.raw == refused.raw
    assert b.post("/payout-orders", payout_body(), key="k").status == 202


def test_idempotency_key_in_flight_is_409(
    make_gifq_sandbox: Callable[..., SandboxHandle], gifq_api_for: Callable[..., GifqApi]
) -> None:
    sandbox = make_gifq_sandbox(
        rate_limit=ROOMY_RATE_LIMIT, fault_latency=1.0, latency_ms=2000, seed=1
    )  # 2 s: room for the racer to arrive while the key is held, on a loaded machine
    api, racer = gifq_api_for(sandbox), gifq_api_for(sandbox)
    answers: list[int] = []
    slow = threading.Thread(
        target=lambda: answers.append(api.post("/payout-orders", payout_body(), key="k").status)
    )
    slow.start()
    # The racer goes once the slow request holds the key (a fixed sleep lost the race
    # on a loaded machine: the racer's request arrived first and got the 202).
    deadline = time.monotonic() + 10
    while "k" not in sandbox.app_state.idempotency.in_flight_keys():
        assert time.monotonic() < deadline, "the slow request never reached the sandbox"
        time.sleep(0.01)
    sandbox.control("PATCH", "/faults", json={"latency": 0})
    second = racer.post("/payout-orders", payout_body(), key="k")
    slow.join()
    assert second.status == 409 and second.body["status"] == "error"
    assert answers == [202]
    assert racer.post("/payout-orders", payout_body(), key="k").status == 202  # now a replay
    assert sandbox.control("GET", "/payout-orders")["total"] == 1


def test_idempotency_keys_expire_after_the_ttl(
    make_gifq_sandbox: Callable[..., SandboxHandle], gifq_api_for: Callable[..., GifqApi]
) -> None:
    sandbox = make_gifq_sandbox(rate_limit=ROOMY_RATE_LIMIT, idempotency_ttl_seconds=0.2)
    api = gifq_api_for(sandbox)
    first = api.post("/payout-orders", payout_body(), key="short")
    time.sleep(0.25)
    second = api.post("/payout-orders", payout_body(), key="short")
    assert second.status == 202 and second.body["id"] != first.body["id"]


# -- failure, redemption, expiry, callbacks -------------------------------------------


def test_failed_payout_order_is_refunded_and_its_payouts_fail(
    make_gifq_sandbox: Callable[..., SandboxHandle], gifq_api_for: Callable[..., GifqApi]
) -> None:
    sandbox = make_gifq_sandbox(rate_limit=ROOMY_RATE_LIMIT, fault_payout_fail=1.0)
    api = gifq_api_for(sandbox)
    order_id = api.post("/payout-orders", payout_body(2)).body["id"]
    done = api.wait_payout_order(order_id)
    assert done["status"] == "failed" and done["failure_reason"]
    payouts = api.get("/payouts", payout_order_id=order_id).body
    assert [p["status"] for p in payouts] == ["failed", "failed"]
    assert api.balance("GBP") == Decimal("5000.00")
    refund = api.get("/transactions").body[0]
    assert refund["type"] == "refund" and refund["amount"] == "20.00"
    assert refund["payout_order_id"] == order_id


def test_payouts_are_redeemed_or_expire(
    make_gifq_sandbox: Callable[..., SandboxHandle], gifq_api_for: Callable[..., GifqApi]
) -> None:
    sandbox = make_gifq_sandbox(
        rate_limit=ROOMY_RATE_LIMIT, payout_redeem_rate=0.5, day_seconds=0.01, seed=7
    )
    api = gifq_api_for(sandbox)
    order_id = api.post("/payout-orders", payout_body(20)).body["id"]
    api.wait_payout_order(order_id)
    time.sleep(0.5)  # one delay to redeem, 30 days x 0.01 s to expire
    statuses = [p["status"] for p in api.all_pages("/payouts", payout_order_id=order_id)]
    assert set(statuses) == {"redeemed", "expired"}
    assert api.balance("GBP") == Decimal("4800.00")  # expiry refunds nothing


def test_payout_status_control(gifq: SandboxHandle, gifq_api: GifqApi) -> None:
    order_id = gifq_api.post("/payout-orders", payout_body(1)).body["id"]
    gifq_api.wait_payout_order(order_id)
    payout = gifq_api.get("/payouts").body[0]
    changed = gifq.control("PATCH", f"/payouts/{payout['id']}", json={"status": "redeemed"})
    assert changed["status"] == "redeemed"
    assert gifq_api.get("/payouts").body[0]["status"] == "redeemed"
    listed = gifq.control("GET", "/payouts")
    assert listed["total"] == 1 and listed["payouts"][0]["apiKey"] == gifq.api_key


def test_callback_url_gets_the_final_payout_order(gifq_api: GifqApi, gifq: SandboxHandle) -> None:
    received: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/done"
        order_id = gifq_api.post("/payout-orders", payout_body(callback_url=url)).body["id"]
        gifq_api.wait_payout_order(order_id)
        deadline = time.monotonic() + 5
        while not received and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        server.shutdown()
        server.server_close()
    payload = decode_json(received[0])
    assert payload["id"] == order_id and payload["status"] == "completed"
    deliveries = gifq.control("GET", "/callbacks")["callbacks"]
    assert deliveries[0]["statusCode"] == 204 and deliveries[0]["url"] == url
