"""Running a sandbox: in the foreground for the CLI, or in a thread for tests and demos.

`serve` announces its URL on one flushed line once it accepts connections, so a
parent process started with `--port 0` can read the port it got:

    UGiftMe sandbox listening on http://127.0.0.1:54321/api/v1/business

`running_sandbox` starts the same server on 127.0.0.1, port 0, in a background
thread and yields a `SandboxHandle`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any, TextIO

import httpx
import uvicorn
from starlette.applications import Starlette

from batcher.sandbox.common import DROPPED_CONNECTION_LOG_MESSAGE
from batcher.sandbox.jsonio import decode_json, encode_json

CONTROL_ROOT = "/__sandbox"
STARTUP_TIMEOUT_SECONDS = 10.0
SHUTDOWN_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class SandboxProvider:
    """How to build one provider's sandbox; the registry is keyed by provider name."""

    name: str
    display_name: str
    api_root: str
    api_key_env: str  # where the CLI looks for a key when none is given
    build: Callable[[Mapping[str, Any]], Starlette]  # config overrides -> app
    control_root: str = CONTROL_ROOT  # where the `/__sandbox` controls are mounted


def _build_ugiftme(overrides: Mapping[str, Any]) -> Starlette:
    from batcher.sandbox.ugiftme import UGiftMeSandboxConfig, create_app

    return create_app(UGiftMeSandboxConfig(**overrides))


def _build_gifq(overrides: Mapping[str, Any]) -> Starlette:
    from batcher.sandbox.gifq import GifqSandboxConfig, create_app

    return create_app(GifqSandboxConfig(**overrides))


# Each provider's sandbox registers here and the CLI picks it up.
PROVIDERS: dict[str, SandboxProvider] = {
    "ugiftme": SandboxProvider(
        name="ugiftme",
        display_name="UGiftMe",
        api_root="/api/v1/business",
        api_key_env="UGIFTME_API_KEY",
        build=_build_ugiftme,
    ),
    "gifq": SandboxProvider(
        name="gifq",
        display_name="GIFQ",
        api_root="/api",
        api_key_env="GIFQ_API_TOKEN",
        build=_build_gifq,
        control_root="/api/__sandbox",
    ),
}


def sandbox_provider(name: str) -> SandboxProvider:
    try:
        return PROVIDERS[name.lower()]
    except KeyError:
        raise ValueError(
            f"no sandbox for provider {name!r}; known: {', '.join(PROVIDERS)}"
        ) from None


class _DroppedConnectionFilter(logging.Filter):
    """The drop fault leaves responses unfinished on purpose; that is not an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != DROPPED_CONNECTION_LOG_MESSAGE


def _quiet_intentional_drops() -> None:
    error_logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DroppedConnectionFilter) for f in error_logger.filters):
        error_logger.addFilter(_DroppedConnectionFilter())


class _Server(uvicorn.Server):
    """uvicorn.Server that knows its bound port and can announce it once started."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[int], None] | None = None):
        super().__init__(config)
        self._on_started = on_started
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self.port: int | None = None

    async def main_loop(self) -> None:
        """uvicorn's tick loop, but `stop()` from another thread ends it at once
        instead of at the next 100 ms tick (tests start and stop many servers)."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 1) % 864_000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.1)
            should_exit = await self.on_tick(counter)

    def stop(self) -> None:
        """Ask the server to shut down; safe from any thread."""
        self.should_exit = True
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop may close meanwhile
                loop.call_soon_threadsafe(wake.set)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.started:
            return
        self.port = self.servers[0].sockets[0].getsockname()[1]
        if self._on_started is not None:
            self._on_started(self.port)


def _uvicorn_config(app: Starlette, host: str, port: int, log_level: str) -> uvicorn.Config:
    _quiet_intentional_drops()
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=2,
    )


def serve(
    app: Starlette,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    api_root: str = "/api/v1/business",
    display_name: str = "UGiftMe",
    out: TextIO | None = None,
    log_level: str = "warning",
    notices: Sequence[str] = (),
) -> None:
    """Serve in the foreground until Ctrl-C or SIGTERM (uvicorn handles both).

    The URL line comes first, so a parent process can read just one line;
    `notices` (such as a generated key) follow it.
    """
    stream = out or sys.stdout

    def announce(bound_port: int) -> None:
        shown_host = f"[{host}]" if ":" in host else host
        url = f"http://{shown_host}:{bound_port}{api_root}"
        print(f"{display_name} sandbox listening on {url}", file=stream, flush=True)
        for line in notices:
            print(line, file=stream, flush=True)

    server = _Server(_uvicorn_config(app, host, port, log_level), on_started=announce)
    with _absorb_reraised_stop_signals():
        server.run()


@contextmanager
def _absorb_reraised_stop_signals() -> Iterator[None]:
    """Let a Ctrl-C or SIGTERM end `serve` with a normal return.

    uvicorn shuts down gracefully on those signals and then re-raises them with
    the previous handlers restored; with the defaults that would kill the
    process (SIGTERM) or raise KeyboardInterrupt after the clean shutdown.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def ignore(signum: int, frame: FrameType | None) -> None:
        return None

    stop_signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, ignore) for sig in stop_signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class SandboxControlError(RuntimeError):
    """A `/__sandbox` control call answered with an error status."""

    def __init__(self, status_code: int, body: Any) -> None:
        super().__init__(f"sandbox control failed with {status_code}: {body}")
        self.status_code = status_code
        self.body = body


@dataclass(frozen=True)
class SandboxHandle:
    """What a test or demo needs to talk to a running sandbox."""

    provider: str
    host_url: str  # http://127.0.0.1:PORT
    base_url: str  # the API root, e.g. http://127.0.0.1:PORT/api/v1/business
    api_keys: tuple[str, ...]
    app: Starlette
    control_root: str = CONTROL_ROOT  # "/__sandbox" (UGiftMe) or "/api/__sandbox" (GIFQ)

    @property
    def api_key(self) -> str:
        return self.api_keys[0]

    @property
    def app_state(self) -> Any:
        """The in-process state object, for white-box assertions (read it when quiet)."""
        return self.app.state.sandbox

    def control(
        self,
        method: str,
        path: str,
        json: Any = None,
        api_key: str | None = None,
    ) -> Any:
        """Call a `/__sandbox` endpoint; `path` may omit the `/__sandbox` prefix.

        Money in `json` may be Decimal or str; it is sent exactly. Settings such
        as delays and fault rates may be floats. The provider's control root is
        added (`/__sandbox` for UGiftMe, `/api/__sandbox` for GIFQ).
        """
        path = path if path.startswith("/") else f"/{path}"
        for prefix in (self.control_root, CONTROL_ROOT):
            if path == prefix or path.startswith(prefix + "/"):
                path = path[len(prefix) :]
                break
        path = self.control_root + path
        headers = {"Content-Type": "application/json"}
        if api_key is not None:
            headers["X-API-Key"] = api_key
        content = encode_json(json, allow_floats=True) if json is not None else None
        response = httpx.request(
            method,
            self.host_url + path,
            content=content,
            headers=headers,
            timeout=10.0,
            trust_env=False,  # never route a localhost call through an environment proxy
        )
        body = decode_json(response.content) if response.content else None
        if response.status_code >= 400:
            raise SandboxControlError(response.status_code, body)
        return body


@contextmanager
def running_sandbox(provider: str = "ugiftme", **config_overrides: Any) -> Iterator[SandboxHandle]:
    """Start a sandbox on 127.0.0.1 (free port) in a thread; stop it on exit."""
    spec = sandbox_provider(provider)
    app = spec.build(config_overrides)
    server = _Server(_uvicorn_config(app, "127.0.0.1", 0, "warning"))
    thread = threading.Thread(target=server.run, name=f"{spec.name}-sandbox", daemon=True)
    thread.start()
    try:
        port = _wait_until_started(server, thread)
        host_url = f"http://127.0.0.1:{port}"
        yield SandboxHandle(
            provider=spec.name,
            host_url=host_url,
            base_url=host_url + spec.api_root,
            api_keys=tuple(app.state.sandbox.api_keys),
            app=app,
            control_root=spec.control_root,
        )
    finally:
        server.stop()
        thread.join(SHUTDOWN_TIMEOUT_SECONDS)


def _wait_until_started(server: _Server, thread: threading.Thread) -> int:
    pause = threading.Event()  # never set: a sleep that reads as one
    for _ in range(int(STARTUP_TIMEOUT_SECONDS / 0.01)):
        if server.started and server.port is not None:
            return server.port
        if not thread.is_alive():
            raise RuntimeError("the sandbox server stopped during startup")
        pause.wait(0.01)
    server.should_exit = True
    raise RuntimeError("the sandbox server did not start in time")
