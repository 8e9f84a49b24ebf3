"""The gate in front of the UGiftMe API: auth, allow list, rate limit, faults, headers, log."""

from __future__ import annotations

import logging
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from batcher.sandbox.asgi import (
    client_ip,
    forward,
    latency_fault,
)
from batcher.sandbox.common import RateDecision
from batcher.sandbox.jsonio import json_response
from batcher.sandbox.ugiftme.config import API_ROOT
from batcher.sandbox.ugiftme.engine import UGiftMeSandbox
from batcher.sandbox.ugiftme.state import Account

log = logging.getLogger(__name__)

ORDER_CREATION_PATHS = {f"{API_ROOT}/orders", f"{API_ROOT}/orders/bulk"}


# ---------------------------------------------------------------------------
# The gate in front of the API: auth, allow list, rate limit, faults, headers, log.


class ApiGate:
    """Pure ASGI middleware, so the drop fault can leave a response unfinished."""

    def __init__(self, app: ASGIApp, sandbox: UGiftMeSandbox) -> None:
        self.app = app
        self.sandbox = sandbox

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(API_ROOT):
            await self.app(scope, receive, send)
            return
        sandbox = self.sandbox
        headers = Headers(scope=scope)
        ip = client_ip(scope)
        key = headers.get("x-api-key")
        account = sandbox.accounts.get(key) if key else None
        bucket = account.api_key if account else f"ip:{ip}"
        decision = sandbox.limiter.hit(bucket)
        early = self._refusal(decision, key, account, ip, bucket)
        if early is not None:
            await self._send_early(scope, receive, send, bucket, decision, *early)
            return
        assert account is not None
        scope["ugiftme.account"] = account
        await latency_fault(sandbox.faults, scope, ORDER_CREATION_PATHS, "ugiftme.deferred_latency")
        await self._forward(scope, receive, send, bucket, decision)

    def _refusal(
        self,
        decision: RateDecision,
        key: str | None,
        account: Account | None,
        ip: str,
        bucket: str,
    ) -> tuple[int, dict[str, Any], int | None, str | None] | None:
        """(status, body, retry-after, fault) when the request stops here."""
        if not decision.allowed:
            return 429, {"error": "Too many requests"}, decision.reset_seconds, None
        if not key:
            return 401, {"error": "Missing API key"}, None, None
        if account is None:
            return (
                401,
                {"error": "Invalid API key", "reason": "The API key is not recognised"},
                None,
                None,
            )
        if not account.ip_allowed(ip):
            reason = f"{ip} is not in the IP allow list for this API key"
            return 403, {"error": "Forbidden", "reason": reason}, None, None
        if not account.profile_complete:
            reason = "Complete the business profile before using the API"
            return 403, {"error": "Business profile incomplete", "reason": reason}, None, None
        if self.sandbox.faults.roll("500"):
            return 500, {"error": "Internal Server Error"}, None, "500"
        burst_wait = self.sandbox.faults.burst_retry_after(bucket)
        if burst_wait is not None:
            return 429, {"error": "Too many requests"}, burst_wait, "429"
        return None

    async def _send_early(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        bucket: str,
        decision: RateDecision,
        status: int,
        body: dict[str, Any],
        retry_after: int | None,
        fault: str | None,
    ) -> None:
        headers = decision.headers()
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        self.sandbox.request_log.record(
            bucket, scope["method"], scope["path"], status, retry_after, fault
        )
        await json_response(body, status, headers)(scope, receive, send)

    async def _forward(
        self, scope: Scope, receive: Receive, send: Send, bucket: str, decision: RateDecision
    ) -> None:
        def record(status: int) -> None:
            self.sandbox.request_log.record(
                bucket, scope["method"], scope["path"], status, None, scope.get("ugiftme.fault")
            )

        await forward(
            self.app,
            scope,
            receive,
            send,
            extra_headers=[(k.lower().encode(), v.encode()) for k, v in decision.headers().items()],
            on_start=record,
            error_body={"error": "Internal Server Error"},
            log=log,
        )
