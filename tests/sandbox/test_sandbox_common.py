"""Unit tests for the provider-agnostic sandbox pieces, with a fake clock."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest

from batcher.sandbox.common import (
    FaultInjector,
    FaultSettings,
    FixedWindowRateLimiter,
    RequestLog,
    iso_now,
    object_id,
    ulid,
)
from batcher.sandbox.idempotency import IdemOutcome, IdempotencyStore, StoredResponse, fingerprint
from batcher.sandbox.jsonio import JsonDecodeError, canonical_json, decode_json, encode_json


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_json_round_trip_keeps_decimals_exact() -> None:
    parsed = decode_json(b'{"a": 0.1, "b": 10.50, "c": 3, "d": [1.005]}')
    assert parsed == {"a": Decimal("0.1"), "b": Decimal("10.50"), "c": 3, "d": [Decimal("1.005")]}
    assert encode_json(parsed) == b'{"a":0.1,"b":10.50,"c":3,"d":[1.005]}'
    assert encode_json({"big": Decimal("1E+2")}) == b'{"big":100}'


def test_json_refuses_floats_and_nan() -> None:
    with pytest.raises(TypeError):
        encode_json({"price": 9.99})
    with pytest.raises(JsonDecodeError):
        decode_json(b'{"x": NaN}')
    with pytest.raises(JsonDecodeError):
        decode_json(b"{not json")


def test_canonical_json_ignores_key_order_spacing_and_trailing_zeros() -> None:
    a = decode_json(b'{"v": 50, "p": "X", "n": {"b": 1, "a": 2}}')
    b = decode_json(b'{ "p" : "X", "n": {"a": 2.0, "b": 1}, "v": 50.00 }')
    assert canonical_json(a) == canonical_json(b)
    assert fingerprint("POST", "/orders", a) == fingerprint("POST", "/orders", b)
    assert fingerprint("POST", "/orders", a) != fingerprint("POST", "/orders/bulk", a)
    assert canonical_json({"v": Decimal("50.01")}) != canonical_json({"v": Decimal("50.1")})


def test_ids_and_timestamps_have_the_contract_shapes() -> None:
    assert re.fullmatch(r"[0-9a-f]{24}", object_id())
    assert len({object_id() for _ in range(1000)}) == 1000
    assert re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{26}", ulid())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", iso_now())


def test_fixed_window_counts_every_request_and_resets() -> None:
    clock = FakeClock()
    limiter = FixedWindowRateLimiter(3, 60, clock=clock)
    decisions = [limiter.hit("k") for _ in range(4)]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert decisions[-1].headers() == {
        "RateLimit-Limit": "3",
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": "60",
    }
    clock.now += 59.2
    assert limiter.peek("k").reset_seconds == 1  # ceiling, never 0
    assert limiter.hit("other").allowed  # buckets are independent
    clock.now += 1
    assert limiter.hit("k").remaining == 2  # a new window


def test_fault_injector_is_reproducible_from_its_seed() -> None:
    def rolls(seed: int) -> list[bool]:
        settings = FaultSettings(seed=seed)
        settings.rates["500"] = 0.5
        injector = FaultInjector(settings)
        return [injector.roll("500") for _ in range(50)]

    assert rolls(3) == rolls(3)
    assert rolls(3) != rolls(4)
    assert any(rolls(3)) and not all(rolls(3))


def test_zero_rate_consumes_no_randomness() -> None:
    settings = FaultSettings(seed=9)
    settings.rates["500"] = 0.5
    plain = FaultInjector(settings)
    baseline = [plain.roll("500") for _ in range(20)]
    mixed = FaultInjector(FaultSettings(rates=dict(settings.rates), seed=9))
    sequence = []
    for _ in range(20):
        assert not mixed.roll("drop")  # rate 0
        sequence.append(mixed.roll("500"))
    assert sequence == baseline


def test_429_burst_refuses_the_bucket_until_it_ends() -> None:
    clock = FakeClock()
    settings = FaultSettings(seed=1, burst_seconds=1.5)
    settings.rates["429"] = 1.0
    injector = FaultInjector(settings, clock=clock)
    assert injector.burst_retry_after("k") == 2  # ceil(1.5)
    injector.update({"429": 0.0})
    clock.now += 0.7
    assert injector.burst_retry_after("k") == 1  # still inside the burst
    assert injector.burst_retry_after("other") is None
    clock.now += 0.9
    assert injector.burst_retry_after("k") is None


def test_fault_update_validates_rates() -> None:
    injector = FaultInjector(FaultSettings())
    with pytest.raises(ValueError):
        injector.update({"boom": 0.1})
    with pytest.raises(ValueError):
        injector.update({"500": 1.5})


def test_idempotency_store_lifecycle() -> None:
    clock = FakeClock()
    store = IdempotencyStore(ttl_seconds=10, clock=clock)
    assert store.begin("acct", "k", "fp1").outcome is IdemOutcome.STARTED
    assert store.begin("acct", "k", "fp1").outcome is IdemOutcome.IN_FLIGHT
    assert store.begin("acct", "k", "fp2").outcome is IdemOutcome.MISMATCH
    assert store.begin("other", "k", "fp2").outcome is IdemOutcome.STARTED  # scoped per account
    stored = StoredResponse(201, b"{}", {})
    store.complete("acct", "k", stored)
    replay = store.begin("acct", "k", "fp1")
    assert replay.outcome is IdemOutcome.REPLAY and replay.response == stored
    clock.now += 10
    assert store.begin("acct", "k", "fp2").outcome is IdemOutcome.STARTED  # expired


def test_abandoned_key_can_be_retried() -> None:
    store = IdempotencyStore(ttl_seconds=10)
    store.begin("acct", "k", "fp")
    store.abandon("acct", "k")
    assert store.begin("acct", "k", "fp").outcome is IdemOutcome.STARTED


def test_request_log_counts_and_filters() -> None:
    clock = FakeClock()
    log = RequestLog(capacity=2, clock=clock)
    log.record("k", "GET", "/a", 200, None, None)
    clock.now += 0.5
    log.record("k", "GET", "/a", 429, 1, "429")
    log.record("j", "GET", "/a", 200, None, None)
    assert log.requests_by_bucket == {"k": 2, "j": 1}
    assert log.too_many_by_bucket == {"k": 1}
    entries = log.entries()
    assert [e.seq for e in entries] == [2, 3]  # bounded, counters are not
    assert entries[0].as_dict()["t"] == Decimal("0.500000")
    assert [e.seq for e in log.entries(since_seq=2)] == [3]
