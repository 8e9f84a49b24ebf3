"""Helpers for the GIFQ sandbox tests: a Decimal-exact client and order/payout bodies."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from sandbox_kit import Reply, SandboxApi

from batcher.sandbox.jsonio import encode_json

ROOMY_RATE_LIMIT = 100_000  # for tests about something other than the 10 req/s limit


class GifqApi(SandboxApi):
    """httpx against the GIFQ sandbox: X-Api-Token, Decimal-exact JSON in and out."""

    AUTH_HEADER = "X-Api-Token"

    def post(
        self,
        path: str,
        body: Any,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        content = body if isinstance(body, bytes) else encode_json(body)
        return self._request("POST", path, content, key=key, headers=headers)

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

    def wait_order(self, order_id: str, timeout: float = 5.0) -> Any:
        return self.wait_for(f"/orders/{order_id}", {"completed", "failed"}, timeout)

    def wait_payout_order(self, payout_order_id: str, timeout: float = 5.0) -> Any:
        return self.wait_for(f"/payout-orders/{payout_order_id}", {"completed", "failed"}, timeout)


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
