"""Signed UGiftMe webhook deliveries: at least once, with the contract's retry
schedule scaled for tests, and as unkind as real ones when asked.

Every random choice (duplicates, jitter) comes from the dispatcher's own seeded
`random.Random`, apart from the fault injector's, so a run can be replayed and
switching webhook hostility on leaves the fault sequence unchanged.

- Duplicates: a delivered event is sent once more with `duplicate_rate`.
- Out of order: each attempt first waits a random 0..`jitter_seconds`.
- Retries: after 1 min, 5 min, 15 min, 1 h and 4 h, times `time_scale`.
- Outage: for a while the receiver is unreachable; attempts fail without a
  request, and retries go on past the schedule (at its last interval) until the
  outage is over.
- Forgeries (`forge`): a wrong signature, no signature, or a real event's
  genuine signature over a different body, sent once to any URL.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
import secrets
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import httpx

from batcher.sandbox.common import Clock, DelayedTaskScheduler, iso_now, object_id
from batcher.sandbox.jsonio import decode_json, encode_json
from batcher.sandbox.ugiftme.config import MAX_KEPT_DELIVERIES, WEBHOOK_RETRY_DELAYS
from batcher.sandbox.ugiftme.state import Account

SIGNATURE_HEADER = "X-Webhook-Signature"
Forgery = Literal["bad-signature", "unsigned", "replay"]
FORGERIES: tuple[Forgery, ...] = ("bad-signature", "unsigned", "replay")
OUTAGE_ERROR = "ConnectError: receiver unreachable (sandbox outage)"
MIN_OUTAGE_RETRY_SECONDS = 0.05


@dataclass
class Delivery:
    id: str
    webhook_id: str
    api_key: str
    url: str
    secret: str
    event: str
    body: bytes
    attempts: list[dict[str, Any]] = field(default_factory=list)
    delivered: bool = False


def sign(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def sample_payload() -> dict[str, Any]:
    """A made-up `order.succeeded` event, for the test endpoints and forgeries."""
    return {
        "event": "order.succeeded",
        "orderRequestId": "65f1c0ffee0000000000beef",
        "status": "succeeded",
        "type": "single",
        "result": {
            "_id": "65f1c0ffee0000000000cafe",
            "productCode": "AMAZON_UK_STD",
            "currency": "GBP",
            "valuePurchased": Decimal("25.00"),
            "status": "active",
            "transactionId": "txn_01HZX5V3J0Q8D7K2M4N6P8R0TA",
        },
        "timestamp": iso_now(),
        "test": True,
    }


@dataclass
class Hostility:
    """How unkind deliveries are; all zero is a well-behaved provider."""

    duplicate_rate: float = 0.0  # chance a delivered event is delivered once more
    jitter_seconds: float = 0.0  # each attempt first waits uniform(0, this)
    seed: int | None = None
    outage_until: float = 0.0  # clock time the simulated receiver outage ends


class WebhookDispatcher:
    """At-least-once delivery with the contract's retry schedule, scaled for tests."""

    def __init__(
        self,
        scheduler: DelayedTaskScheduler,
        time_scale: float,
        timeout_seconds: float,
        hostility: Hostility,
        clock: Clock = time.monotonic,
    ) -> None:
        self.scheduler = scheduler
        self.time_scale = time_scale
        self.timeout_seconds = timeout_seconds
        self.hostility = hostility
        self._clock = clock
        self._rng = random.Random(hostility.seed)
        self.deliveries: deque[Delivery] = deque(maxlen=MAX_KEPT_DELIVERIES)
        self.client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def configure(self, hostility: Hostility) -> None:
        """Replace the hostility settings; the random sequence restarts from their seed."""
        self.hostility = hostility
        self._rng = random.Random(hostility.seed)

    def start_outage(self, seconds: float) -> None:
        """The receiver is unreachable for `seconds` from now (0 ends an outage)."""
        self.hostility.outage_until = self._clock() + seconds

    def outage_remaining(self) -> float:
        return max(0.0, self.hostility.outage_until - self._clock())

    def retry_delays(self) -> list[float]:
        return [delay * self.time_scale for delay in WEBHOOK_RETRY_DELAYS]

    def start(self, loop: asyncio.AbstractEventLoop, client: httpx.AsyncClient) -> None:
        self._loop = loop
        self.client = client

    def emit(self, account: Account, event: str, data: Mapping[str, Any]) -> None:
        hooks = [h for h in account.webhooks.values() if h.is_active and event in h.events]
        if not hooks:
            return
        body = encode_json({"event": event, **data})
        for hook in hooks:
            delivery = Delivery(
                object_id(), hook.id, account.api_key, hook.url, hook.secret, event, body
            )
            self.deliveries.append(delivery)
            self._spawn(delivery)

    def _spawn(self, delivery: Delivery, *, duplicate: bool = False) -> None:
        if self._loop is None:
            return  # the app is not running (no lifespan): nothing can be sent
        task = self._loop.create_task(self._attempt(delivery, duplicate))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _chance(self, rate: float) -> bool:
        # A zero rate consumes no randomness, so other choices keep their sequence.
        return rate > 0.0 and (rate >= 1.0 or self._rng.random() < rate)

    async def _attempt(self, delivery: Delivery, duplicate: bool) -> None:
        jitter = self.hostility.jitter_seconds
        wait = self._rng.uniform(0.0, jitter) if jitter > 0 else 0.0
        if wait:
            await asyncio.sleep(wait)
        status, error = await self.post(
            delivery.url, delivery.secret, delivery.event, delivery.body
        )
        tries = sum(1 for a in delivery.attempts if not a["duplicate"])
        delivery.attempts.append(
            {
                "at": iso_now(),
                "statusCode": status,
                "error": error,
                "attempt": tries + (0 if duplicate else 1),
                "duplicate": duplicate,
                "waitedSeconds": Decimal(str(round(wait, 6))),
            }
        )
        delivered = status is not None and 200 <= status < 300
        if duplicate:
            return  # a duplicate copy is never retried nor duplicated again
        if delivered:
            delivery.delivered = True
            if self._chance(self.hostility.duplicate_rate):
                self._spawn(delivery, duplicate=True)
            return
        delays = self.retry_delays()
        if tries < len(delays):
            delay = delays[tries]
        elif self.outage_remaining() > 0:
            # Past the schedule, but the receiver is not back yet; a floor keeps a
            # zero time scale from spinning until the outage ends.
            delay = max(delays[-1], MIN_OUTAGE_RETRY_SECONDS)
        else:
            return
        self.scheduler.call_later(delay, lambda: self._spawn(delivery))

    async def post(
        self, url: str, secret: str, event: str, body: bytes
    ) -> tuple[int | None, str | None]:
        """One signed POST, unless the receiver is in an outage; returns
        (status code, error message)."""
        if self.outage_remaining() > 0:
            return None, OUTAGE_ERROR
        headers = self._headers(event)
        headers[SIGNATURE_HEADER] = sign(secret, body)
        return await self._send(url, body, headers)

    @staticmethod
    def _headers(event: str) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "X-Webhook-Event": event,
            "User-Agent": "UGiftMe-Webhooks/1.0 (sandbox)",
        }

    async def _send(
        self, url: str, body: bytes, headers: Mapping[str, str]
    ) -> tuple[int | None, str | None]:
        if self.client is None:
            return None, "sandbox is not running"
        try:
            response = await self.client.post(
                url, content=body, headers=headers, timeout=self.timeout_seconds
            )
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"
        return response.status_code, None

    async def forge(self, kind: Forgery, url: str, source: Delivery | None) -> dict[str, Any]:
        """Send one forged delivery to `url`, as an attacker (not the provider) would:
        the outage does not apply. `source` is the real delivery a forgery copies
        (required for `replay`); without one the sample event is used."""
        if source is not None:
            event, body = source.event, source.body
        else:
            payload = sample_payload()
            event, body = str(payload["event"]), encode_json(payload)
        headers = self._headers(event)
        if kind == "bad-signature":
            headers[SIGNATURE_HEADER] = sign(f"whsec_{secrets.token_hex(24)}", body)
        elif kind == "replay":
            assert source is not None
            headers[SIGNATURE_HEADER] = sign(source.secret, source.body)  # the genuine one
            altered = decode_json(source.body)
            altered.update(timestamp=iso_now(), replayed=True)
            body = encode_json(altered)
        status, error = await self._send(url, body, headers)
        return {
            "kind": kind,
            "url": url,
            "event": event,
            "statusCode": status,
            "error": error,
            "signature": headers.get(SIGNATURE_HEADER),
            "payload": decode_json(body),
        }

    def find(self, delivery_id: str | None, api_key: str | None) -> Delivery | None:
        """The delivery with this id, or (no id) the newest one, of `api_key` if given."""
        for delivery in reversed(self.deliveries):
            if api_key is not None and delivery.api_key != api_key:
                continue
            if delivery_id is None or delivery.id == delivery_id:
                return delivery
        return None

    def hostility_json(self) -> dict[str, Any]:
        return {
            "timeScale": Decimal(str(self.time_scale)),
            "retryDelaysSeconds": [Decimal(str(d)) for d in self.retry_delays()],
            "duplicateRate": Decimal(str(self.hostility.duplicate_rate)),
            "jitterSeconds": Decimal(str(self.hostility.jitter_seconds)),
            "seed": self.hostility.seed,
            "outageRemainingSeconds": Decimal(str(round(self.outage_remaining(), 3))),
        }

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self._loop = None
        self.client = None

    def clear(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self.deliveries.clear()

    def deliveries_json(self, api_key: str | None) -> list[dict[str, Any]]:
        return [
            {
                "id": d.id,
                "webhookId": d.webhook_id,
                "apiKey": d.api_key,
                "url": d.url,
                "event": d.event,
                "delivered": d.delivered,
                "attempts": d.attempts,
                "payload": decode_json(d.body),
            }
            for d in self.deliveries
            if api_key is None or d.api_key == api_key
        ]
