"""ASGI plumbing every provider's sandbox shares.

The gate in front of each API (auth, refusals, headers, the log entry) stays in
the provider's module; these are the mechanics around it: the client's address,
the latency fault, forwarding a request with extra response headers, and the app
lifespan that runs the delayed-task worker and an outbound HTTP sender, and the
app factory that puts them together with the provider's routes and dialect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from typing import Any, Protocol

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batcher.sandbox.common import DelayedTaskScheduler, FaultInjector
from batcher.sandbox.dialect import Dialect, SandboxError, dialect_of
from batcher.sandbox.jsonio import json_response


def client_ip(scope: Scope) -> str:
    return scope["client"][0] if scope.get("client") else "unknown"


async def latency_fault(
    faults: FaultInjector, scope: Scope, creation_paths: Collection[str], deferred_key: str
) -> None:
    """Roll the latency fault and sleep, except on a creating POST: there the delay is
    left in `scope[deferred_key]` for the handler (see `sleep_deferred_latency`)."""
    if faults.roll("latency"):
        if scope["method"] == "POST" and scope["path"] in creation_paths:
            scope[deferred_key] = faults.latency_seconds
        else:
            await asyncio.sleep(faults.latency_seconds)


async def sleep_deferred_latency(scope: Scope, deferred_key: str) -> None:
    """The latency the gate deferred to this handler, slept once."""
    delay = scope.pop(deferred_key, 0.0)
    if delay:
        await asyncio.sleep(delay)


async def forward(
    app: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    extra_headers: Sequence[tuple[bytes, bytes]],
    on_start: Callable[[int], None],
    error_body: Any,
    log: logging.Logger,
) -> None:
    """Call the app, adding `extra_headers` to its answer and calling `on_start(status)`
    as the answer starts; a handler that fails before answering gets a 500 `error_body`."""
    started = False

    async def send_with_headers(message: Message) -> None:
        nonlocal started
        if message["type"] == "http.response.start":
            started = True
            message = {**message, "headers": [*message.get("headers", []), *extra_headers]}
            on_start(message["status"])
        await send(message)

    try:
        await app(scope, receive, send_with_headers)
    except Exception:
        log.exception("sandbox handler failed on %s %s", scope["method"], scope["path"])
        if not started:
            error = json_response(error_body, 500)
            await error(scope, receive, send_with_headers)


class OutboundSender(Protocol):
    """Webhook deliveries or payout callbacks: started with the app's loop and client."""

    def start(self, loop: asyncio.AbstractEventLoop, client: httpx.AsyncClient) -> None: ...

    async def stop(self) -> None: ...


def worker_lifespan(
    scheduler: DelayedTaskScheduler, sender: OutboundSender, worker_name: str
) -> Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]:
    """Run the scheduler's worker task and the sender's HTTP client while the app runs."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        worker = asyncio.create_task(scheduler.run(), name=worker_name)
        # trust_env=False: a proxy from the environment must not intercept local deliveries.
        async with httpx.AsyncClient(trust_env=False) as client:
            sender.start(asyncio.get_running_loop(), client)
            try:
                yield
            finally:
                worker.cancel()
                await asyncio.gather(worker, return_exceptions=True)
                await sender.stop()

    return lifespan


class GateFactory(Protocol):
    """A provider's API gate: ASGI middleware in front of the app, given the state."""

    def __call__(self, app: ASGIApp, sandbox: Any) -> ASGIApp: ...


class RunningState(Protocol):
    scheduler: DelayedTaskScheduler


async def _sandbox_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SandboxError)
    return json_response(exc.render(request), exc.status_code)


async def _routing_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    messages = {404: "Not found", 405: "Method not allowed"}
    body = dialect_of(request).routing_error(messages.get(exc.status_code, exc.detail))
    return json_response(body, exc.status_code)


def sandbox_app(
    sandbox: RunningState,
    *,
    routes: Sequence[BaseRoute],
    dialect: Dialect,
    gate: GateFactory,
    sender: OutboundSender,
    worker_name: str,
) -> Starlette:
    """The sandbox as an ASGI app; its state is `app.state.sandbox`, its words
    `app.state.dialect`; errors answer in the dialect's shapes."""
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        SandboxError: _sandbox_error,
        HTTPException: _routing_error,
    }
    app = Starlette(
        routes=list(routes),
        exception_handlers=handlers,
        lifespan=worker_lifespan(sandbox.scheduler, sender, worker_name),
    )
    app.state.sandbox = sandbox
    app.state.dialect = dialect
    app.add_middleware(gate, sandbox=sandbox)
    return app
