"""The GIFQ sandbox as an ASGI app."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Mount

from batcher.sandbox.asgi import sandbox_app
from batcher.sandbox.gifq.config import API_ROOT, CONTROL_ROOT, GifqSandboxConfig
from batcher.sandbox.gifq.controls import DIALECT, control_routes
from batcher.sandbox.gifq.engine import GifqSandbox
from batcher.sandbox.gifq.gate import ApiGate
from batcher.sandbox.gifq.routes import api_routes


def create_app(config: GifqSandboxConfig | None = None) -> Starlette:
    """The sandbox as an ASGI app; its state is `app.state.sandbox`."""
    sandbox = GifqSandbox(config or GifqSandboxConfig())
    return sandbox_app(
        sandbox,
        # The control mount comes first: /api/__sandbox/... must not reach the API routes.
        routes=[Mount(CONTROL_ROOT, routes=control_routes()), Mount(API_ROOT, routes=api_routes())],
        dialect=DIALECT,
        gate=ApiGate,
        sender=sandbox.callbacks,
        worker_name="gifq-sandbox-worker",
    )
