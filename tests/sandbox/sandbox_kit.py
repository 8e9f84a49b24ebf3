"""Helpers every provider's sandbox tests share: a Decimal-exact client base, polling,
threads, the `batcher sandbox serve` subprocess and the Retry-After check."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import httpx
import pytest

from batcher.sandbox.jsonio import decode_json
from batcher.sandbox.server import SandboxHandle

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Reply:
    status: int
    headers: httpx.Headers
    body: Any
    raw: bytes


class SandboxApi:
    """httpx against a sandbox API, authenticated by `AUTH_HEADER`: Decimal-exact JSON."""

    AUTH_HEADER: ClassVar[str]

    def __init__(self, sandbox: SandboxHandle, api_key: str | None = None) -> None:
        self.sandbox = sandbox
        self.api_key = api_key or sandbox.api_key
        self.client = httpx.Client(
            base_url=sandbox.base_url,
            headers={self.AUTH_HEADER: self.api_key},
            timeout=10.0,
            trust_env=False,
        )

    def get(self, path: str, **params: Any) -> Reply:
        return self._reply(self.client.get(path, params=params))

    def _request(
        self,
        method: str,
        path: str,
        content: bytes | None,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        extra = {"Content-Type": "application/json", **(headers or {})}
        if key is not None:
            extra["Idempotency-Key"] = key
        return self._reply(self.client.request(method, path, content=content, headers=extra))

    @staticmethod
    def _reply(response: httpx.Response) -> Reply:
        body = decode_json(response.content) if response.content else None
        return Reply(response.status_code, response.headers, body, response.content)

    def wait_for(self, path: str, statuses: set[str], timeout: float = 5.0) -> Any:
        """GET `path` until its `status` is one of `statuses` (or time runs out)."""
        deadline = time.monotonic() + timeout
        while True:
            body = self.get(path).body
            if body["status"] in statuses or time.monotonic() > deadline:
                return body
            time.sleep(0.01)

    def close(self) -> None:
        self.client.close()


ApiT = TypeVar("ApiT", bound=SandboxApi)


@contextmanager
def closing_clients(
    make_client: Callable[[SandboxHandle, str | None], ApiT],
) -> Iterator[Callable[..., ApiT]]:
    """A factory: make(sandbox, api_key=None) -> client; every client closes on exit."""
    made: list[ApiT] = []

    def make(sandbox: SandboxHandle, api_key: str | None = None) -> ApiT:
        client = make_client(sandbox, api_key)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def run_threads(count: int, target: Callable[[int], None]) -> None:
    """Run target(0) ... target(count - 1) in parallel threads and wait for all."""
    threads = [threading.Thread(target=target, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def assert_retry_after_respected(log: Iterable[Mapping[str, Any]]) -> None:
    """After each 429 in a stats log, the next request came no sooner than Retry-After."""
    for previous, following in pairwise(log):
        if previous["status"] == 429:
            assert following["t"] - previous["t"] >= previous["retryAfter"]


# ---------------------------------------------------------------------------
# `batcher sandbox serve` in a subprocess.


def start_serve(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "batcher", "sandbox", "serve", "--port", "0", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_line(proc: subprocess.Popen[str], timeout: float = 15.0) -> str:
    """One stdout line, read by a helper thread so a silent server cannot hang the test."""
    assert proc.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    stdout = proc.stdout
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout).strip()
    except queue.Empty:
        proc.kill()
        pytest.fail("the sandbox printed nothing in time")


def stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.send_signal(signal.SIGTERM)
    return proc.communicate(timeout=15)
