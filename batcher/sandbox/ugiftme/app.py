"""The UGiftMe sandbox as an ASGI app."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Mount

from batcher.sandbox.asgi import sandbox_app
from batcher.sandbox.ugiftme.config import API_ROOT, CONTROL_ROOT, UGiftMeSandboxConfig
from batcher.sandbox.ugiftme.controls import DIALECT, control_routes
from batcher.sandbox.ugiftme.engine import UGiftMeSandbox
from batcher.sandbox.ugiftme.gate import ApiGate
from batcher.sandbox.ugiftme.routes import api_routes


def create_app(config: UGiftMeSandboxConfig | None = None) -> Starlette:
    """The sandbox as an ASGI app; its state is `app.state.sandbox`."""
    sandbox = UGiftMeSandbox(config or UGiftMeSandboxConfig())
    return sandbox_app(
        sandbox,
        routes=[Mount(API_ROOT, routes=api_routes()), Mount(CONTROL_ROOT, routes=control_routes())],
        dialect=DIALECT,
        gate=ApiGate,
        sender=sandbox.webhooks,
        worker_name="ugiftme-sandbox-worker",
    )
