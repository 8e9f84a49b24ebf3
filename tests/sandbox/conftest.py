"""Fixtures for the sandbox's own tests (helpers live in sandbox_kit.py, ugiftme_kit.py
and gifq_kit.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from gifq_kit import ROOMY_RATE_LIMIT, GifqApi
from sandbox_kit import closing_clients
from ugiftme_kit import Api, WebhookReceiver, serve_receiver

from batcher.sandbox.server import SandboxHandle


@pytest.fixture
def api_for() -> Iterator[Callable[..., Api]]:
    """A factory: api_for(sandbox, api_key=None) -> Api; clients close after the test."""
    with closing_clients(Api) as make:
        yield make


@pytest.fixture
def api(ugiftme_sandbox: SandboxHandle, api_for: Callable[..., Api]) -> Api:
    return api_for(ugiftme_sandbox)


@pytest.fixture
def sync_api(
    make_ugiftme_sandbox: Callable[..., SandboxHandle], api_for: Callable[..., Api]
) -> Api:
    return api_for(make_ugiftme_sandbox(async_mode=False))


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(url="")
    server = serve_receiver(receiver)
    yield receiver
    server.shutdown()
    server.server_close()


# -- GIFQ (helpers live in gifq_kit.py) ----------------------------------------


@pytest.fixture
def gifq_api_for() -> Iterator[Callable[..., GifqApi]]:
    """A factory: gifq_api_for(sandbox, api_key=None) -> GifqApi (the key is the token);
    clients close after the test."""
    with closing_clients(GifqApi) as make:
        yield make


@pytest.fixture
def gifq(make_gifq_sandbox: Callable[..., SandboxHandle]) -> SandboxHandle:
    """A GIFQ sandbox whose rate limit stays out of the way (the limit has its own tests)."""
    return make_gifq_sandbox(rate_limit=ROOMY_RATE_LIMIT)


@pytest.fixture
def gifq_api(gifq: SandboxHandle, gifq_api_for: Callable[..., GifqApi]) -> GifqApi:
    return gifq_api_for(gifq)
