"""Helpers for the sandbox tests: a small Decimal-exact API client, order items, a webhook sink."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sandbox_kit import Reply, SandboxApi

from batcher.sandbox.jsonio import encode_json

__all__ = ["Api", "Received", "Reply", "WebhookReceiver", "item", "serve_receiver"]


class Api(SandboxApi):
    """httpx against the UGiftMe sandbox API: X-API-Key, Decimal-exact JSON in and out."""

    AUTH_HEADER = "X-API-Key"

    def send(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        content = encode_json(body) if body is not None else None
        return self._request(method, path, content, key=key, headers=headers)

    def post(self, path: str, body: Any, *, key: str | None = None) -> Reply:
        return self.send("POST", path, body, key=key)

    def wallet(self, currency: str) -> dict[str, Any]:
        wallets = {w["currency"]: w for w in self.get("/wallet").body}
        return wallets[currency]

    def wait_for_request(self, request_id: str, statuses: set[str], timeout: float = 5.0) -> Any:
        return self.wait_for(f"/orders/order-requests/{request_id}", statuses, timeout)


def item(
    code: str = "AMAZON_UK_STD",
    value: str | int = "10.00",
    email: str = "ann@example.com",
    *,
    merchant: str | None = None,
    currency: str | None = None,
    name: str = "Ann Example",
    message: str | None = "Thank you!",
) -> dict[str, Any]:
    """One order item for the shipped catalog (defaults: a £10 Amazon UK card)."""
    merchants = {
        "AMAZON_UK_STD": ("Amazon UK", "GBP"),
        "TESCO_UK": ("Tesco", "GBP"),
        "ARGOS_UK": ("Argos", "GBP"),
        "SPOTIFY_UK": ("Spotify", "GBP"),
        "HMV_UK": ("HMV", "GBP"),
        "ZALANDO_EU": ("Zalando", "EUR"),
        "AMAZON_US_STD": ("Amazon US", "USD"),
    }
    known_merchant, known_currency = merchants.get(code, ("Unknown", "GBP"))
    body: dict[str, Any] = {
        "productCode": code,
        "merchant": merchant or known_merchant,
        "currency": currency or known_currency,
        "valuePurchased": Decimal(value) if isinstance(value, str) else value,
        "recipientEmail": email,
        "recipientName": name,
    }
    if message is not None:
        body["giftMessage"] = message
    return body


# ---------------------------------------------------------------------------
# A webhook receiver on a free port.


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status_sent: int
    at: float = field(default_factory=time.monotonic)


@dataclass
class WebhookReceiver:
    url: str
    fail_first: int = 0  # answer 500 to this many deliveries first
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.01)
        with self.lock:
            return list(self.received)


def serve_receiver(receiver: WebhookReceiver, port: int = 0) -> ThreadingHTTPServer:
    """Answer deliveries for `receiver` on 127.0.0.1:`port` (0: a free one) from a
    thread; `receiver.url` points at it. Stop it with shutdown() and server_close()."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with receiver.lock:
                status = 500 if receiver.fail_first > 0 else 200
                receiver.fail_first -= 1 if status == 500 else 0
                receiver.received.append(Received(dict(self.headers.items()), body, status))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            return None

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
