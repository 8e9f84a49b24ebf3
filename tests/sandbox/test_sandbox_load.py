"""Steady load: 1,000 bulk requests from 4 threads, with faults and same-key retries.

Nothing may be lost (every accepted request has its orders) and nothing doubled
(the sandbox holds exactly the orders the successful requests asked for).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

import httpx
import pytest
from sandbox_kit import run_threads
from ugiftme_kit import item

from batcher.sandbox.jsonio import decode_json, encode_json
from batcher.sandbox.server import SandboxHandle

THREADS = 4
REQUESTS_PER_THREAD = 250
ITEMS_PER_REQUEST = 5
MAX_ATTEMPTS = 8
ITEM_COST = Decimal("9.75")  # a £10 Amazon UK card at 2.5% discount


@dataclass
class ClientTally:
    accepted: dict[str, str] = field(default_factory=dict)  # key -> response body text
    retries: int = 0
    gave_up: list[str] = field(default_factory=list)


def _bulk_body(thread: int, request: int) -> bytes:
    orders = [
        item(email=f"t{thread}-r{request}-i{i}@load.example", name=f"Load {thread}/{request}/{i}")
        for i in range(ITEMS_PER_REQUEST)
    ]
    return encode_json({"orders": orders})


def _client_run(sandbox: SandboxHandle, thread: int, tally: ClientTally) -> None:
    headers = {"X-API-Key": sandbox.api_key, "Content-Type": "application/json"}
    with httpx.Client(
        base_url=sandbox.base_url, headers=headers, timeout=10.0, trust_env=False
    ) as client:
        for request in range(REQUESTS_PER_THREAD):
            key = f"load-{thread}-{request}"
            body = _bulk_body(thread, request)  # frozen bytes: a retry resends exactly these
            for attempt in range(MAX_ATTEMPTS):
                tally.retries += attempt > 0
                try:
                    response = client.post(
                        "/orders/bulk", content=body, headers={"Idempotency-Key": key}
                    )
                except httpx.TransportError:
                    continue  # outcome unknown: resend with the same key and bytes
                if response.status_code in {201, 202}:
                    tally.accepted[key] = response.text
                    break
                if response.status_code < 500:
                    tally.gave_up.append(f"{key}: {response.status_code} {response.text}")
                    break
            else:
                tally.gave_up.append(f"{key}: still failing after {MAX_ATTEMPTS} attempts")


@pytest.mark.parametrize("async_mode", [False, True], ids=["sync", "async"])
def test_thousand_bulk_requests_lose_and_double_nothing(
    make_ugiftme_sandbox: Callable[..., SandboxHandle], async_mode: bool
) -> None:
    sandbox = make_ugiftme_sandbox(
        async_mode=async_mode,
        async_delay_seconds=0.02,
        rate_limit=1_000_000,
        funding={"GBP": "100000.00"},
        seed=1234,
        fault_500=0.03,
        fault_drop=0.03,
        fault_latency=0.02,
        latency_ms=20,
    )
    tallies = [ClientTally() for _ in range(THREADS)]
    run_threads(THREADS, lambda n: _client_run(sandbox, n, tallies[n]))

    assert [t.gave_up for t in tallies] == [[]] * THREADS
    accepted = {key: ids for t in tallies for key, ids in t.accepted.items()}
    assert len(accepted) == THREADS * REQUESTS_PER_THREAD
    assert sum(t.retries for t in tallies) > 0, "the faults never fired"

    if async_mode:
        _check_one_request_per_key(sandbox, accepted)
    orders = sandbox.control("GET", "/orders")["orders"]
    per_key = Counter(o["idempotencyKey"] for o in orders)
    assert set(per_key) == set(accepted)  # no order from a request nobody saw accepted
    assert set(per_key.values()) == {ITEMS_PER_REQUEST}  # none lost, none doubled
    if not async_mode:
        answered = {o["_id"] for body in accepted.values() for o in decode_json(body)["orders"]}
        assert {o["_id"] for o in orders} == answered
    emails = Counter(o["giftOrder"]["recipientEmail"] for o in orders)
    assert len(emails) == len(orders) == THREADS * REQUESTS_PER_THREAD * ITEMS_PER_REQUEST

    spent = len(orders) * ITEM_COST
    wallets = {w["currency"]: w for w in sandbox.control("GET", "/wallets")["wallets"]}
    assert wallets["GBP"]["balance"] == Decimal("100000.00") - spent
    stats = sandbox.control("GET", "/stats?log=false")
    assert stats["faults"]["drop"] > 0 and stats["faults"]["500"] > 0
    assert stats["workerErrors"] == []


def _check_one_request_per_key(sandbox: SandboxHandle, accepted: dict[str, str]) -> None:
    """Every key made exactly one order request, the one its answer named, and all finished."""
    deadline = time.monotonic() + 20
    while True:
        requests = sandbox.control("GET", "/order-requests")["orderRequests"]
        if all(r["status"] in {"succeeded", "failed"} for r in requests):
            break
        assert time.monotonic() < deadline, "order requests never finished"
        time.sleep(0.05)
    by_key = {r["idempotencyKey"]: r for r in requests}
    assert len(by_key) == len(requests) == len(accepted)
    for key, body in accepted.items():
        assert decode_json(body)["orderRequestId"] == by_key[key]["orderRequestId"]
        assert by_key[key]["status"] == "succeeded"
    wallets = {w["currency"]: w for w in sandbox.control("GET", "/wallets")["wallets"]}
    assert wallets["GBP"]["held"] == 0 and wallets["GBP"]["holds"] == {}
