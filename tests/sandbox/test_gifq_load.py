"""Steady load: 1,000 GIFQ orders from 4 threads, with faults and same-reference retries.

Each client resends a reference (same bytes) whenever the outcome is unknown, and
all four race on a shared slice of references. Nothing may be lost (every
reference has its order) and nothing doubled (exactly one order per reference),
and the money must tie out: balances equal the sum of the transactions, and each
currency moved by exactly what the completed orders cost.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

import httpx
from gifq_kit import ROOMY_RATE_LIMIT, GifqApi, order_body
from sandbox_kit import run_threads

from batcher.sandbox.jsonio import decode_json, encode_json
from batcher.sandbox.server import SandboxHandle

THREADS = 4
OWN_PER_THREAD = 240
SHARED = 40  # every thread sends these too, racing the others
MAX_ATTEMPTS = 10
START = Decimal("20000.00")


@dataclass
class ClientTally:
    ids: dict[str, str] = field(default_factory=dict)  # reference -> order id answered
    statuses: Counter[int] = field(default_factory=Counter)
    retries: int = 0
    gave_up: list[str] = field(default_factory=list)


def _body(reference: str, n: int) -> bytes:
    extra = {"payment_currency": "USD"} if n % 4 == 0 else {}
    return encode_json(order_body(reference, face_value=Decimal("10.00"), **extra))


def _submit(client: httpx.Client, reference: str, body: bytes, tally: ClientTally) -> None:
    for attempt in range(MAX_ATTEMPTS):
        tally.retries += attempt > 0
        try:
            response = client.post("/orders", content=body)
        except httpx.TransportError:
            continue  # outcome unknown: resend the same reference and bytes
        tally.statuses[response.status_code] += 1
        if response.status_code in {200, 201}:
            tally.ids[reference] = decode_json(response.content)["id"]
            return
        if response.status_code == 429:
            time.sleep(int(response.headers["Retry-After"]))
        elif response.status_code < 500:
            tally.gave_up.append(f"{reference}: {response.status_code} {response.text}")
            return
    tally.gave_up.append(f"{reference}: still failing after {MAX_ATTEMPTS} attempts")


def _client_run(sandbox: SandboxHandle, thread: int, tally: ClientTally) -> None:
    work = [(f"own-{thread}-{n}", n) for n in range(OWN_PER_THREAD)]
    work += [(f"shared-{n}", n) for n in range(SHARED)]
    headers = {"X-Api-Token": sandbox.api_key, "Content-Type": "application/json"}
    with httpx.Client(
        base_url=sandbox.base_url, headers=headers, timeout=10.0, trust_env=False
    ) as client:
        for reference, n in work:
            _submit(client, reference, _body(reference, n), tally)


def _wait_until_settled(sandbox: SandboxHandle) -> list[dict[str, object]]:
    deadline = time.monotonic() + 20
    while True:
        orders: list[dict[str, object]] = sandbox.control("GET", "/orders")["orders"]
        if all(o["status"] != "pending" for o in orders):
            return orders
        assert time.monotonic() < deadline, "orders never settled"
        time.sleep(0.05)


def test_thousand_orders_lose_and_double_nothing(
    make_gifq_sandbox: Callable[..., SandboxHandle], gifq_api_for: Callable[..., GifqApi]
) -> None:
    sandbox = make_gifq_sandbox(
        async_delay_seconds=0.02,
        rate_limit=ROOMY_RATE_LIMIT,
        funding={"GBP": START, "USD": START},
        seed=1234,
        fault_500=0.03,
        fault_drop=0.03,
        fault_latency=0.02,
        latency_ms=20,
        fault_async_fail=0.05,
    )
    tallies = [ClientTally() for _ in range(THREADS)]
    run_threads(THREADS, lambda n: _client_run(sandbox, n, tallies[n]))

    assert [t.gave_up for t in tallies] == [[]] * THREADS
    assert sum(t.retries for t in tallies) > 0, "the faults never fired"
    expected = {f"own-{t}-{n}" for t in range(THREADS) for n in range(OWN_PER_THREAD)}
    expected |= {f"shared-{n}" for n in range(SHARED)}
    assert len(expected) == 1000

    orders = _wait_until_settled(sandbox)
    per_reference = Counter(str(o["reference"]) for o in orders)
    assert set(per_reference) == expected and set(per_reference.values()) == {1}
    by_reference = {str(o["reference"]): o for o in orders}
    for tally in tallies:  # every answer, first or replayed, named the one order
        assert {ref: by_reference[ref]["id"] for ref in tally.ids} == tally.ids
    assert sum(t.statuses[200] for t in tallies) >= 3 * SHARED  # the racers were replayed

    sandbox.control("PATCH", "/faults", json={"500": 0, "drop": 0, "latency": 0})
    _assert_money_ties_out(gifq_api_for(sandbox), orders)
    stats = sandbox.control("GET", "/stats?log=false")
    assert stats["faults"]["drop"] > 0 and stats["faults"]["500"] > 0
    assert stats["faults"]["async_fail"] > 0 and stats["workerErrors"] == []


def _assert_money_ties_out(api: GifqApi, orders: list[dict[str, object]]) -> None:
    spent = {"GBP": Decimal(0), "USD": Decimal(0)}
    for order in orders:
        if order["status"] == "completed":
            spent[str(order["chargedCurrency"])] += Decimal(str(order["charged"]))
    assert api.balance("GBP") == START - spent["GBP"]
    assert api.balance("USD") == START - spent["USD"]
    transactions = api.all_pages("/transactions")
    for currency in ("GBP", "USD", "EUR"):
        moved = sum(
            (Decimal(t["amount"]) for t in transactions if t["currency"] == currency), Decimal(0)
        )
        assert moved == api.balance(currency)


def test_four_clients_under_the_real_limit_still_place_each_order_once(
    make_gifq_sandbox: Callable[..., SandboxHandle], gifq_api_for: Callable[..., GifqApi]
) -> None:
    sandbox = make_gifq_sandbox()  # 10 requests per second per token, shared by all four
    tallies = [ClientTally() for _ in range(THREADS)]

    def run(thread: int) -> None:
        headers = {"X-Api-Token": sandbox.api_key, "Content-Type": "application/json"}
        with httpx.Client(base_url=sandbox.base_url, headers=headers, trust_env=False) as client:
            for n in range(8):
                reference = f"limited-{thread}-{n}"
                _submit(client, reference, _body(reference, n), tallies[thread])

    run_threads(THREADS, run)
    assert [t.gave_up for t in tallies] == [[]] * THREADS
    assert sum(t.statuses[429] for t in tallies) > 0
    orders = sandbox.control("GET", "/orders")["orders"]
    assert len({o["reference"] for o in orders}) == len(orders) == 32
    stats = sandbox.control("GET", "/stats")
    assert all(e["retryAfter"] == 1 for e in stats["log"] if e["status"] == 429)
