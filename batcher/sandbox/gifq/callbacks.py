"""Payout-order callbacks: one best-effort POST each."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import httpx

from batcher.sandbox.gifq.config import MAX_KEPT_CALLBACKS
from batcher.sandbox.gifq.state import PayoutOrder
from batcher.sandbox.jsonio import encode_json


class CallbackSender:
    def __init__(self, timeout_seconds: float) -> None:
        self.timeout_seconds = timeout_seconds
        self.deliveries: deque[dict[str, Any]] = deque(maxlen=MAX_KEPT_CALLBACKS)
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, loop: asyncio.AbstractEventLoop, client: httpx.AsyncClient) -> None:
        self._loop, self._client = loop, client

    def send(self, order: PayoutOrder) -> None:
        if order.callback_url is None or self._loop is None:
            return
        delivery: dict[str, Any] = {
            "payoutOrderId": order.id,
            "apiKey": order.api_key,
            "url": order.callback_url,
            "payload": order.as_json(),
            "statusCode": None,
            "error": None,
        }
        self.deliveries.append(delivery)
        task = self._loop.create_task(self._post(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, delivery: dict[str, Any]) -> None:
        assert self._client is not None
        try:
            response = await self._client.post(
                delivery["url"],
                content=encode_json(delivery["payload"]),
                headers={
                    "Content-Type": "application/json",
                    "User-Agent": "GIFQ-Callbacks/1.0 (sandbox)",
                },
                timeout=self.timeout_seconds,
            )
            delivery["statusCode"] = response.status_code
        except httpx.HTTPError as exc:
            delivery["error"] = f"{type(exc).__name__}: {exc}"

    async def stop(self) -> None:
        self.clear()
        self._loop, self._client = None, None

    def clear(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self._tasks.clear()
        self.deliveries.clear()
