"""Signed UGiftMe webhook deliveries with the contract's retry schedule."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from batcher.sandbox.common import DelayedTaskScheduler, iso_now, object_id
from batcher.sandbox.jsonio import decode_json, encode_json
from batcher.sandbox.ugiftme.config import MAX_KEPT_DELIVERIES, WEBHOOK_RETRY_DELAYS
from batcher.sandbox.ugiftme.state import Account


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


class WebhookDispatcher:
    """At-least-once delivery with the contract's retry schedule, scaled for tests."""

    def __init__(
        self, scheduler: DelayedTaskScheduler, time_scale: float, timeout_seconds: float
    ) -> None:
        self.scheduler = scheduler
        self.time_scale = time_scale
        self.timeout_seconds = timeout_seconds
        self.deliveries: deque[Delivery] = deque(maxlen=MAX_KEPT_DELIVERIES)
        self.client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()

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

    def _spawn(self, delivery: Delivery) -> None:
        if self._loop is None:
            return  # the app is not running (no lifespan): nothing can be sent
        task = self._loop.create_task(self._attempt(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _attempt(self, delivery: Delivery) -> None:
        status, error = await self.post(
            delivery.url, delivery.secret, delivery.event, delivery.body
        )
        delivery.attempts.append(
            {
                "at": iso_now(),
                "statusCode": status,
                "error": error,
                "attempt": len(delivery.attempts) + 1,
            }
        )
        if status is not None and 200 <= status < 300:
            delivery.delivered = True
            return
        retry_index = len(delivery.attempts) - 1
        if retry_index < len(WEBHOOK_RETRY_DELAYS):
            delay = WEBHOOK_RETRY_DELAYS[retry_index] * self.time_scale
            self.scheduler.call_later(delay, lambda: self._spawn(delivery))

    async def post(
        self, url: str, secret: str, event: str, body: bytes
    ) -> tuple[int | None, str | None]:
        """One signed POST; returns (status code, error message)."""
        if self.client is None:
            return None, "sandbox is not running"
        headers = {
            "Content-Type": "application/json",
            "X-Webhook-Event": event,
            "X-Webhook-Signature": sign(secret, body),
            "User-Agent": "UGiftMe-Webhooks/1.0 (sandbox)",
        }
        try:
            response = await self.client.post(
                url, content=body, headers=headers, timeout=self.timeout_seconds
            )
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"
        return response.status_code, None

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
