"""The GIFQ sandbox as an ASGI app."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.routing import Mount

from batcher.sandbox.asgi import sandbox_app
from batcher.sandbox.controls import control_routes
from batcher.sandbox.gifq.config import API_ROOT, CONTROL_ROOT, GifqSandboxConfig
from batcher.sandbox.gifq.controls import CONTROLS, DIALECT
from batcher.sandbox.gifq.engine import GifqSandbox
from batcher.sandbox.gifq.gate import ApiGate
from batcher.sandbox.gifq.routes import API


def create_app(config: GifqSandboxConfig | None = None, **overrides: Any) -> Starlette:
    """The sandbox as an ASGI app; its state is `app.state.sandbox`. Without a config,
    one is made from `overrides` by field name (the CLI's way)."""
    sandbox = GifqSandbox(config or GifqSandboxConfig(**overrides))
    # The control mount comes first: /api/__sandbox/... must not reach the API routes.
    routes = [
        Mount(CONTROL_ROOT, routes=control_routes(CONTROLS)),
        Mount(API_ROOT, routes=API.routes),
    ]
    return sandbox_app(sandbox, routes, DIALECT, gate=ApiGate, sender=sandbox.callbacks)
