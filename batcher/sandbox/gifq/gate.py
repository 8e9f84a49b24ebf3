"""The gate in front of the GIFQ API: request id, rate limit, auth, faults, log."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from batcher.sandbox.asgi import (
    client_ip,
    forward,
    latency_fault,
)
from batcher.sandbox.gifq.config import (
    API_ROOT,
    CONTROL_ROOT,
    CREATION_PATHS,
    REQUEST_ID_HEADER,
    TOO_MANY,
    UNAUTHORIZED,
)
from batcher.sandbox.gifq.engine import GifqSandbox
from batcher.sandbox.jsonio import json_response

log = logging.getLogger(__name__)


def _is_api_call(scope: Scope) -> bool:
    if scope["type"] != "http":
        return False
    path: str = scope["path"]
    in_api = path == API_ROOT or path.startswith(API_ROOT + "/")
    in_controls = path == CONTROL_ROOT or path.startswith(CONTROL_ROOT + "/")
    return in_api and not in_controls


class ApiGate:
    """Pure ASGI middleware, so the drop fault can leave a response unfinished."""

    def __init__(self, app: ASGIApp, sandbox: GifqSandbox) -> None:
        self.app = app
        self.sandbox = sandbox

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_api_call(scope):
            await self.app(scope, receive, send)
            return
        sandbox = self.sandbox
        request_id = str(uuid.uuid4())
        scope["gifq.request_id"] = request_id
        token = Headers(scope=scope).get("x-api-token")
        account = sandbox.accounts.get(token) if token else None
        bucket = account.api_key if account else f"ip:{client_ip(scope)}"
        decision = sandbox.limiter.hit(bucket)
        refusal: tuple[int, dict[str, Any], int | None, str | None] | None = None
        if not decision.allowed:
            refusal = 429, TOO_MANY, decision.reset_seconds, None
        elif account is None:
            refusal = 401, UNAUTHORIZED, None, None
        elif sandbox.faults.roll("500"):
            refusal = 500, {"message": "Internal Server Error", "status": "error"}, None, "500"
        elif (burst := sandbox.faults.burst_retry_after(bucket)) is not None:
            refusal = 429, TOO_MANY, burst, "429"
        if refusal is not None:
            await self._refuse(scope, receive, send, bucket, request_id, *refusal)
            return
        scope["gifq.account"] = account
        await latency_fault(sandbox.faults, scope, CREATION_PATHS, "gifq.deferred_latency")
        await self._forward(scope, receive, send, bucket, request_id)

    def _record(self, scope: Scope, bucket: str, status: int, retry_after: int | None) -> None:
        query = scope.get("query_string", b"").decode("latin-1")
        self.sandbox.request_log.record(
            bucket,
            scope["method"],
            scope["path"],
            status,
            retry_after,
            scope.get("gifq.fault"),
            query,
        )

    async def _refuse(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        bucket: str,
        request_id: str,
        status: int,
        body: dict[str, Any],
        retry_after: int | None,
        fault: str | None,
    ) -> None:
        headers = {REQUEST_ID_HEADER: request_id}
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        scope["gifq.fault"] = fault
        self._record(scope, bucket, status, retry_after)
        await json_response(body, status, headers)(scope, receive, send)

    async def _forward(
        self, scope: Scope, receive: Receive, send: Send, bucket: str, request_id: str
    ) -> None:
        await forward(
            self.app,
            scope,
            receive,
            send,
            extra_headers=[(REQUEST_ID_HEADER.lower().encode(), request_id.encode())],
            on_start=lambda status: self._record(scope, bucket, status, None),
            error_body={"message": "Internal Server Error", "status": "error"},
            log=log,
        )
