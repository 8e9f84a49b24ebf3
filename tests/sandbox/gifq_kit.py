"""Helpers for the GIFQ sandbox tests: a Decimal-exact client and order/payout bodies."""

from __future__ import annotations

import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import httpx
from ugiftme_kit import Reply

from batcher.sandbox.common import decode_json, encode_json
from batcher.sandbox.server import SandboxHandle

ROOMY_RATE_LIMIT = 100_000  # for tests about something other than the 10 req/s limit


class GifqApi:
    """httpx against the GIFQ sandbox: X-Api-Token, Decimal-exact JSON in and out."""

    def __init__(self, sandbox: SandboxHandle, token: str | None = None) -> None:
        self.sandbox = sandbox
        self.token = token or sandbox.api_key
        self.client = httpx.Client(
            base_url=sandbox.base_url,
            headers={"X-Api-Token": self.token},
            timeout=10.0,
            trust_env=False,
        )

    def get(self, path: str, **params: Any) -> Reply:
        return self._reply(self.client.get(path, params=params))

    def post(
        self,
        path: str,
        body: Any,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        extra = {"Content-Type": "application/json", **(headers or {})}
        if key is not None:
            extra["Idempotency-Key"] = key
        content = body if isinstance(body, bytes) else encode_json(body)
        return self._reply(self.client.post(path, content=content, headers=extra))

    @staticmethod
    def _reply(response: httpx.Response) -> Reply:
        body = decode_json(response.content) if response.content else None
        return Reply(response.status_code, response.headers, body, response.content)

    def order(self, reference: str, **fields: Any) -> Reply:
        return self.post("/orders", order_body(reference, **fields))

    def balance(self, currency: str) -> Decimal:
        balances = {b["currency"]: Decimal(b["amount"]) for b in self.get("/balances").body}
        return balances[currency]

    def all_pages(self, path: str, **params: Any) -> list[Any]:
        items: list[Any] = []
        page = 1
        while True:
            reply = self.get(path, page=page, limit=20, **params)
            assert reply.status == 200, reply.body
            items.extend(reply.body)
            if page >= int(reply.headers["total-pages"]):
                return items
            page += 1

    def wait_for(self, path: str, statuses: set[str], timeout: float = 5.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            body = self.get(path).body
            if body["status"] in statuses or time.monotonic() > deadline:
                return body
            time.sleep(0.01)

    def wait_order(self, order_id: str, timeout: float = 5.0) -> Any:
        return self.wait_for(f"/orders/{order_id}", {"completed", "failed"}, timeout)

    def wait_payout_order(self, payout_order_id: str, timeout: float = 5.0) -> Any:
        return self.wait_for(f"/payout-orders/{payout_order_id}", {"completed", "failed"}, timeout)

    def close(self) -> None:
        self.client.close()


def order_body(
    reference: str,
    brand: str = "amazon",
    currency: str = "GBP",
    face_value: Decimal | int | str = Decimal("25.00"),
    country: str = "GB",
    **extra: Any,
) -> dict[str, Any]:
    """A POST /orders body (defaults: a £25 Amazon UK card, 2.5% discount, £24.38)."""
    value = Decimal(face_value) if isinstance(face_value, str) else face_value
    return {
        "brand": brand,
        "currency": currency,
        "face_value": value,
        "country": country,
        "reference": reference,
        **extra,
    }


def recipients(count: int, amount: str = "10.00", currency: str = "GBP") -> list[dict[str, Any]]:
    return [
        {"email": f"r{n}@payout.example", "name": f"Recipient {n}", "amount": amount,
         "currency": currency}
        for n in range(count)
    ]  # fmt: skip


def payout_body(
    count: int = 2,
    *,
    campaign_id: int = 101,
    wallet_currency: str = "GBP",
    amount: str = "10.00",
    currency: str = "GBP",
    **extra: Any,
) -> dict[str, Any]:
    """A POST /payout-orders body for the seeded active campaign 101."""
    return {
        "campaign_id": campaign_id,
        "wallet_currency": wallet_currency,
        "recipients": recipients(count, amount, currency),
        "expires_in_days": 30,
        **extra,
    }
