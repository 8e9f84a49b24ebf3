"""Hostile webhook deliveries, over real HTTP to a local receiver: duplicates, jitter
(out of order, seeded), the scaled retry schedule, a receiver that is down for a
while, and forged deliveries sent on demand."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from itertools import pairwise
from typing import Any

import pytest
from ugiftme_kit import Api, Received, WebhookReceiver, serve_receiver

from batcher.sandbox.jsonio import decode_json
from batcher.sandbox.server import SandboxControlError, SandboxHandle

OUTAGE = "receiver unreachable (sandbox outage)"
JITTER = 2.0  # seconds: the most a delivery waits in the jitter test
OUTAGE_SECONDS = 5  # how long the receiver is down in the outage test


def _verifies(secret: str, delivery: Received) -> bool:
    expected = hmac.new(secret.encode(), delivery.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, delivery.headers.get("X-Webhook-Signature", ""))


def _subscribe(api: Api, url: str) -> str:
    reply = api.post("/webhooks", {"url": url, "events": ["wallet.updated"]})
    assert reply.status == 201
    secret: str = reply.body["secret"]
    return secret


def _fund(sandbox: SandboxHandle, count: int) -> list[Decimal]:
    """One wallet.updated event per call, told apart by its amount (1, 2, 3, ...)."""
    amounts = [Decimal(n + 1) for n in range(count)]
    for amount in amounts:
        sandbox.control("POST", "/wallets/USD/fund", json={"amount": str(amount)})
    return amounts


def _amount(delivery: Received) -> Decimal:
    value: Decimal = decode_json(delivery.body)["transaction"]["transactionValue"]
    return value


def _deliveries(sandbox: SandboxHandle) -> list[dict[str, Any]]:
    deliveries: list[dict[str, Any]] = sandbox.control("GET", "/webhooks/deliveries")["deliveries"]
    return deliveries


def test_every_delivered_event_is_sent_twice_at_duplicate_rate_one(
    make_ugiftme_sandbox: Callable[..., SandboxHandle],
    api_for: Callable[..., Api],
    webhook_receiver: WebhookReceiver,
) -> None:
    sandbox = make_ugiftme_sandbox(webhook_duplicate_rate=1.0)
    secret = _subscribe(api_for(sandbox), webhook_receiver.url)
    _fund(sandbox, 3)
    received = webhook_receiver.wait_for(6)
    assert webhook_receiver.wait_for(7, timeout=0.3) == received  # no third copy
    assert sorted(Counter(r.body for r in received).values()) == [2, 2, 2]
    assert all(_verifies(secret, r) for r in received)  # a duplicate is genuine, signed
    for delivery in _deliveries(sandbox):
        assert [(a["statusCode"], a["duplicate"]) for a in delivery["attempts"]] == [
            (200, False),
            (200, True),
        ]


def test_jitter_delivers_out_of_order_and_the_seed_replays_it(
    make_ugiftme_sandbox: Callable[..., SandboxHandle],
    api_for: Callable[..., Api],
    webhook_receiver: WebhookReceiver,
) -> None:
    def run(seed: int) -> tuple[list[Decimal], list[Decimal]]:
        webhook_receiver.received.clear()
        # Jitter well above the spacing of the eight fund calls, even on a loaded machine:
        # at 0.4 s, calls a few tenths of a second apart (a CI run) kept their order.
        sandbox = make_ugiftme_sandbox(webhook_jitter_seconds=JITTER, seed=seed)
        _subscribe(api_for(sandbox), webhook_receiver.url)
        sent = _fund(sandbox, 8)
        arrived = [_amount(r) for r in webhook_receiver.wait_for(8)]
        assert sorted(arrived) == sent
        waits = [d["attempts"][0]["waitedSeconds"] for d in _deliveries(sandbox)]
        return arrived, waits

    arrived, waits = run(seed=7)
    assert arrived != sorted(arrived)  # emitted 1..8, received in another order
    assert all(Decimal(0) <= w <= Decimal(str(JITTER)) for w in waits) and len(set(waits)) == 8
    assert run(seed=7)[1] == waits  # same seed, same waits
    assert run(seed=8)[1] != waits


def test_retries_follow_the_scaled_schedule(
    make_ugiftme_sandbox: Callable[..., SandboxHandle],
    api_for: Callable[..., Api],
    webhook_receiver: WebhookReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sandbox = make_ugiftme_sandbox(webhook_time_scale=0.001)  # 1 min -> 60 ms, 5 min -> 0.3 s
    hostility = sandbox.control("GET", "/webhooks/hostility")
    assert hostility["retryDelaysSeconds"] == [
        Decimal(s) for s in ("0.06", "0.3", "0.9", "3.6", "14.4")
    ]
    # The delay each retry is scheduled with, as the dispatcher asks for it: exact,
    # where the receiver's clock on a loaded machine only says "not sooner".
    scheduler = sandbox.app_state.webhooks.scheduler
    schedule = scheduler.call_later
    asked: list[float] = []

    def recording_call_later(delay_seconds: float, callback: Callable[[], None]) -> None:
        asked.append(delay_seconds)
        schedule(delay_seconds, callback)

    monkeypatch.setattr(scheduler, "call_later", recording_call_later)
    _subscribe(api_for(sandbox), webhook_receiver.url)
    webhook_receiver.fail_first = 3
    _fund(sandbox, 1)
    received = webhook_receiver.wait_for(4, timeout=30.0)
    assert [r.status_sent for r in received] == [500, 500, 500, 200]
    # One retry per failure, each at its own step of the schedule (not the next one),
    # and none after the delivery succeeded.
    assert asked == pytest.approx([0.06, 0.3, 0.9])
    gaps = [later.at - earlier.at for earlier, later in pairwise(received)]
    # Never sent before its step of the schedule.
    for gap, scheduled in zip(gaps, (0.06, 0.3, 0.9), strict=True):
        assert gap >= scheduled * 0.9


def test_simulated_outage_keeps_retrying_past_the_schedule_until_it_ends(
    make_ugiftme_sandbox: Callable[..., SandboxHandle],
    api_for: Callable[..., Api],
    webhook_receiver: WebhookReceiver,
) -> None:
    # Retries after 6, 30, 90, 360 and 1,440 ms: the schedule is spent at ~1.9 s, some
    # 3 s before the outage ends (room for a loaded machine to fall behind).
    sandbox = make_ugiftme_sandbox(webhook_time_scale=0.0001)
    secret = _subscribe(api_for(sandbox), webhook_receiver.url)
    started = time.monotonic()  # before the outage starts: it ends no sooner than OUTAGE_SECONDS
    settings = sandbox.control(
        "PATCH", "/webhooks/hostility", json={"outageSeconds": OUTAGE_SECONDS}
    )
    assert Decimal(4) < settings["outageRemainingSeconds"] <= Decimal(OUTAGE_SECONDS)
    _fund(sandbox, 1)
    received = webhook_receiver.wait_for(1, timeout=30.0)
    # Down: nothing arrived before the outage was over (the first arrival is the only one).
    assert len(received) == 1 and received[0].at - started >= OUTAGE_SECONDS
    assert _verifies(secret, received[0])
    attempts = _deliveries(sandbox)[0]["attempts"]
    assert len(attempts) > 6  # one try and five retries were not the end of it
    assert all(OUTAGE in a["error"] for a in attempts[:-1])
    assert attempts[-1]["statusCode"] == 200


def test_a_receiver_that_is_down_gets_the_event_when_it_is_back(
    make_ugiftme_sandbox: Callable[..., SandboxHandle], api_for: Callable[..., Api]
) -> None:
    receiver = WebhookReceiver(url="")
    server = serve_receiver(receiver)
    port = server.server_address[1]
    server.shutdown()
    server.server_close()  # nothing listens on the port now
    sandbox = make_ugiftme_sandbox(webhook_time_scale=0.001)  # retries at 60 ms, 0.36 s, 1.26 s
    _subscribe(api_for(sandbox), receiver.url)
    _fund(sandbox, 1)
    # Back once the first three attempts have failed (a fixed sleep could let a late
    # second or third attempt find it up already on a loaded machine).
    deadline = time.monotonic() + 30
    while len(_deliveries(sandbox)[0]["attempts"]) < 3:
        assert time.monotonic() < deadline, "the retries never came"
        time.sleep(0.02)
    server = serve_receiver(receiver, port)
    try:
        # The next retry is due 0.9 s after the third attempt, or 3.6 s after that if
        # the receiver came back late: a generous deadline.
        received = receiver.wait_for(1, timeout=30.0)
        assert [r.status_sent for r in received] == [200]
        attempts = _deliveries(sandbox)[0]["attempts"]
        assert attempts[0]["statusCode"] is None and "Connect" in attempts[0]["error"]
        assert attempts[-1]["statusCode"] == 200 and len(attempts) >= 3
    finally:
        server.shutdown()
        server.server_close()


def test_forged_deliveries(
    ugiftme_sandbox: SandboxHandle, api: Api, webhook_receiver: WebhookReceiver
) -> None:
    url = webhook_receiver.url
    with pytest.raises(SandboxControlError) as nothing_yet:
        ugiftme_sandbox.control("POST", "/webhooks/forge", json={"kind": "replay", "url": url})
    assert nothing_yet.value.status_code == 409
    secret = _subscribe(api, url)
    _fund(ugiftme_sandbox, 1)
    genuine = webhook_receiver.wait_for(1)[0]
    answers = {
        kind: ugiftme_sandbox.control("POST", "/webhooks/forge", json={"kind": kind, "url": url})
        for kind in ("bad-signature", "unsigned", "replay")
    }
    assert all(a["statusCode"] == 200 for a in answers.values())
    bad, unsigned, replay = webhook_receiver.wait_for(4)[1:]
    assert "X-Webhook-Signature" in bad.headers and not _verifies(secret, bad)
    assert "X-Webhook-Signature" not in unsigned.headers
    # A replay carries the real event's genuine signature over a different body.
    assert replay.headers["X-Webhook-Signature"] == genuine.headers["X-Webhook-Signature"]
    assert replay.body != genuine.body and not _verifies(secret, replay)
    assert decode_json(replay.body)["replayed"] is True
    assert _deliveries(ugiftme_sandbox)[0]["attempts"][-1]["statusCode"] == 200  # untouched


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"kind": "nonsense", "url": "http://127.0.0.1:9/h"}, 400),
        ({"kind": "unsigned", "url": "ftp://x"}, 400),
        ({"kind": "replay", "url": "http://127.0.0.1:9/h", "deliveryId": "nope"}, 404),
    ],
)
def test_forge_refuses_bad_requests(
    ugiftme_sandbox: SandboxHandle, body: dict[str, Any], status: int
) -> None:
    with pytest.raises(SandboxControlError) as refused:
        ugiftme_sandbox.control("POST", "/webhooks/forge", json=body)
    assert refused.value.status_code == status


def test_hostility_settings_are_checked_whole_and_reset(ugiftme_sandbox: SandboxHandle) -> None:
    defaults = ugiftme_sandbox.control("GET", "/webhooks/hostility")
    assert defaults["duplicateRate"] == 0 and defaults["jitterSeconds"] == 0
    with pytest.raises(SandboxControlError) as refused:
        ugiftme_sandbox.control(
            "PATCH", "/webhooks/hostility", json={"jitterSeconds": 1, "duplicateRate": 2}
        )
    assert refused.value.status_code == 400
    assert ugiftme_sandbox.control("GET", "/webhooks/hostility") == defaults
    changed = ugiftme_sandbox.control(
        "PATCH",
        "/webhooks/hostility",
        json={"duplicateRate": 0.5, "jitterSeconds": 0.25, "seed": 3, "timeScale": 0.01},
    )
    assert (changed["duplicateRate"], changed["jitterSeconds"], changed["seed"]) == (
        Decimal("0.5"),
        Decimal("0.25"),
        3,
    )
    assert changed["retryDelaysSeconds"][0] == Decimal("0.6")
    ugiftme_sandbox.control("POST", "/reset")
    assert ugiftme_sandbox.control("GET", "/webhooks/hostility") == defaults
