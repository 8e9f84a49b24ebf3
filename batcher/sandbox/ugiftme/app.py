"""The UGiftMe sandbox as an ASGI app."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount

from batcher.sandbox.asgi import (
    worker_lifespan,
)
from batcher.sandbox.common import (
    json_response,
)
from batcher.sandbox.ugiftme.config import API_ROOT, CONTROL_ROOT, UGiftMeSandboxConfig
from batcher.sandbox.ugiftme.controls import control_routes
from batcher.sandbox.ugiftme.engine import UGiftMeSandbox
from batcher.sandbox.ugiftme.errors import ApiError
from batcher.sandbox.ugiftme.gate import ApiGate
from batcher.sandbox.ugiftme.routes import api_routes


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return json_response(exc.body, exc.status_code)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    messages = {404: "Not found", 405: "Method not allowed"}
    return json_response({"error": messages.get(exc.status_code, exc.detail)}, exc.status_code)


def create_app(config: UGiftMeSandboxConfig | None = None) -> Starlette:
    """The sandbox as an ASGI app; its state is `app.state.sandbox`."""
    sandbox = UGiftMeSandbox(config or UGiftMeSandboxConfig())
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        ApiError: _api_error,
        HTTPException: _http_error,
    }
    app = Starlette(
        routes=[Mount(API_ROOT, routes=api_routes()), Mount(CONTROL_ROOT, routes=control_routes())],
        exception_handlers=handlers,
        lifespan=worker_lifespan(sandbox.scheduler, sandbox.webhooks, "ugiftme-sandbox-worker"),
    )
    app.state.sandbox = sandbox
    app.add_middleware(ApiGate, sandbox=sandbox)
    return app
