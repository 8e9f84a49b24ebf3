"""The GIFQ sandbox as an ASGI app."""

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
from batcher.sandbox.gifq.config import API_ROOT, CONTROL_ROOT, GifqSandboxConfig
from batcher.sandbox.gifq.controls import control_routes
from batcher.sandbox.gifq.engine import GifqSandbox
from batcher.sandbox.gifq.errors import ApiError
from batcher.sandbox.gifq.gate import ApiGate
from batcher.sandbox.gifq.params import request_id_of
from batcher.sandbox.gifq.routes import api_routes


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return json_response(exc.body(request_id_of(request)), exc.status_code)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    messages = {404: "Not found", 405: "Method not allowed"}
    body = {"message": messages.get(exc.status_code, exc.detail), "status": "error"}
    return json_response(body, exc.status_code)


def create_app(config: GifqSandboxConfig | None = None) -> Starlette:
    """The sandbox as an ASGI app; its state is `app.state.sandbox`."""
    sandbox = GifqSandbox(config or GifqSandboxConfig())
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        ApiError: _api_error,
        HTTPException: _http_error,
    }
    app = Starlette(
        # The control mount comes first: /api/__sandbox/... must not reach the API routes.
        routes=[Mount(CONTROL_ROOT, routes=control_routes()), Mount(API_ROOT, routes=api_routes())],
        exception_handlers=handlers,
        lifespan=worker_lifespan(sandbox.scheduler, sandbox.callbacks, "gifq-sandbox-worker"),
    )
    app.state.sandbox = sandbox
    app.add_middleware(ApiGate, sandbox=sandbox)
    return app
