"""The UGiftMe sandbox as an ASGI app."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.routing import Mount

from batcher.sandbox.asgi import sandbox_app
from batcher.sandbox.controls import control_routes
from batcher.sandbox.ugiftme.config import API_ROOT, CONTROL_ROOT, UGiftMeSandboxConfig
from batcher.sandbox.ugiftme.controls import CONTROLS, DIALECT
from batcher.sandbox.ugiftme.engine import UGiftMeSandbox
from batcher.sandbox.ugiftme.gate import ApiGate
from batcher.sandbox.ugiftme.routes import API


def create_app(config: UGiftMeSandboxConfig | None = None, **overrides: Any) -> Starlette:
    """The sandbox as an ASGI app; its state is `app.state.sandbox`. Without a config,
    one is made from `overrides` by field name (the CLI's way)."""
    sandbox = UGiftMeSandbox(config or UGiftMeSandboxConfig(**overrides))
    routes = [
        Mount(API_ROOT, routes=API.routes),
        Mount(CONTROL_ROOT, routes=control_routes(CONTROLS)),
    ]
    return sandbox_app(sandbox, routes, DIALECT, gate=ApiGate, sender=sandbox.webhooks)
