"""Helpers for webhook end-to-end tests: `batcher listen` as a real process, a lossy
network in front of it, and a batcher.toml that points at the signing secret."""

from __future__ import annotations

import random
import socket
import subprocess
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from tests.e2e.runkit import start_batcher


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(path: Path, secret_file: Path, margin: float) -> Path:
    path.write_text(
        "[webhooks]\n"
        "enabled = true\n"
        f'secret_file = "{secret_file}"\n'
        f"poll_margin_seconds = {margin}\n",
        encoding="utf-8",
    )
    return path


class Listener:
    """`batcher listen` on a fixed port, which can be stopped and started again."""

    def __init__(self, env: dict[str, str], state_dir: Path, port: int, logs: Path) -> None:
        self.env, self.state_dir, self.port, self.logs = env, state_dir, port, logs
        self.proc: subprocess.Popen[str] | None = None
        self.outputs: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhooks"

    def start(self) -> None:
        args = ["listen", "--port", str(self.port), "--state-dir", str(self.state_dir)]
        self.proc = start_batcher(args, self.env)
        deadline = time.monotonic() + 20
        # One client for every check: making one costs ~0.1 s of CPU (its TLS context),
        # which a loaded machine would take from the proxy serving in this process.
        with httpx.Client(timeout=1, trust_env=False) as client:
            while time.monotonic() < deadline:
                try:
                    if client.get(f"http://127.0.0.1:{self.port}/healthz").is_success:
                        return
                except httpx.HTTPError:
                    pass
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("batcher listen did not start:\n" + "\n".join(self.outputs))

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            out, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        self.outputs += [out, err]
        self.proc = None


class LossyProxy:
    """An ASGI hop that loses `drop_rate` of the deliveries (answers 503 without
    forwarding, as a broken network path would) and passes the rest on as they are.

    It forwards through one client, opened and closed by the ASGI lifespan. A client
    per delivery built a TLS context each time (~0.1 s of CPU, holding the event
    loop): on a loaded machine the loop fell 20-45 s behind, so every forward outlived
    its 5 s timeout and every delivery failed all its attempts."""

    def __init__(self, target: str, drop_rate: float, seed: int) -> None:
        self.target, self.drop_rate = target, drop_rate
        self._rng = random.Random(seed)
        self.dropped = 0  # lost on the way
        self.refused = 0  # the listener was down, or did not answer in time
        self.timed_out = 0  # of those refused: no answer within the timeout
        self.forwarded = 0
        self._client: httpx.AsyncClient | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        status, content = 503, b"dropped"
        if self._rng.random() < self.drop_rate:
            self.dropped += 1
        else:
            headers = {k.decode(): v.decode() for k, v in scope["headers"] if k != b"host"}
            assert self._client is not None, "served without its lifespan"
            try:
                answer = await self._client.post(self.target, content=body, headers=headers)
                status, content = answer.status_code, answer.content
                self.forwarded += 1
            except httpx.HTTPError as exc:
                self.refused += 1
                self.timed_out += isinstance(exc, httpx.TimeoutException)
                status, content = 502, b"listener down"
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": content})

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # Idle connections are let go before uvicorn's 5 s keep-alive ends them,
                # so a forward never goes out on a connection the listener is closing.
                limits = httpx.Limits(keepalive_expiry=2)
                self._client = httpx.AsyncClient(timeout=5, limits=limits, trust_env=False)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._client is not None:
                    await self._client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve an ASGI app (with its lifespan) on 127.0.0.1 in a thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the proxy did not start (see its log above)")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def ledger_bytes(state_dir: Path) -> bytes:
    """The ledger's file, its WAL and the files beside it (the open-session records)."""
    found = sorted(state_dir.glob("ledger.sqlite*"))
    found += sorted(p for d in found if d.is_dir() for p in d.rglob("*"))
    return b"".join(p.read_bytes() for p in found if p.is_file())


def files_text(folder: Path) -> str:
    """Every file under `folder` as text; workbooks (zip archives) member by member."""
    parts = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix == ".xlsx":
            with zipfile.ZipFile(path) as archive:
                parts += [archive.read(n).decode("utf-8", "replace") for n in archive.namelist()]
        else:
            parts.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(parts)
