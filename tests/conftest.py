"""Shared fixtures. `ugiftme_sandbox` gives every test a real sandbox on a free port.

Use the plain fixture, parametrise it indirectly, or build several with the factory:

    def test_x(ugiftme_sandbox): ...

    @pytest.mark.parametrize("ugiftme_sandbox", [{"async_mode": False}], indirect=True)
    def test_sync(ugiftme_sandbox): ...

    def test_two(make_ugiftme_sandbox):
        sandbox = make_ugiftme_sandbox(async_mode=False, fault_drop=0.1, seed=3)

Overrides are `UGiftMeSandboxConfig` fields. The fixtures make tests quick by
default: `async_delay_seconds=0.05` and `webhook_time_scale=0.001`; everything
else is the sandbox default (async mode, 120 requests / 60 s, 10,000 per wallet).

`gifq_sandbox` / `make_gifq_sandbox` do the same for GIFQ (`GifqSandboxConfig`
fields): `async_delay_seconds=0.05`, otherwise the real 10 requests / 1 s per
token and 5,000 USD/GBP/EUR. `handle.base_url` ends in `/api`; controls are at
`/api/__sandbox` (`handle.control(...)` adds the prefix).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, settings

from batcher.sandbox.server import SandboxHandle, running_sandbox
from tests.pg import PgCluster

if TYPE_CHECKING:
    from batcher.ledger.store import Ledger

# Property tests check what is true, not how fast: on a shared 2-core CI machine an
# example can take longer than hypothesis's default 200 ms deadline and fail a
# correct property (it happened under load). Speed is measured in `make bench`.
settings.register_profile("batcher", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("batcher")

FAST_UGIFTME_DEFAULTS: dict[str, Any] = {
    "async_delay_seconds": 0.05,
    "webhook_time_scale": 0.001,
}
FAST_GIFQ_DEFAULTS: dict[str, Any] = {"async_delay_seconds": 0.05}


@contextmanager
def _sandboxes(provider: str, defaults: dict[str, Any]) -> Iterator[Callable[..., SandboxHandle]]:
    """A factory: each call starts one more sandbox over `defaults`; all stop on exit."""
    with ExitStack() as stack:

        def make(**overrides: Any) -> SandboxHandle:
            return stack.enter_context(running_sandbox(provider, **{**defaults, **overrides}))

        yield make


def _indirect_overrides(request: pytest.FixtureRequest) -> dict[str, Any]:
    overrides: dict[str, Any] = getattr(request, "param", None) or {}
    return overrides


@pytest.fixture
def make_ugiftme_sandbox() -> Iterator[Callable[..., SandboxHandle]]:
    """A factory: each call starts one more sandbox; all stop when the test ends."""
    with _sandboxes("ugiftme", FAST_UGIFTME_DEFAULTS) as make:
        yield make


@pytest.fixture
def ugiftme_sandbox(
    request: pytest.FixtureRequest, make_ugiftme_sandbox: Callable[..., SandboxHandle]
) -> SandboxHandle:
    """A running UGiftMe sandbox; overrides come from indirect parametrisation."""
    return make_ugiftme_sandbox(**_indirect_overrides(request))


@pytest.fixture
def make_gifq_sandbox() -> Iterator[Callable[..., SandboxHandle]]:
    """A factory: each call starts one more GIFQ sandbox; all stop when the test ends."""
    with _sandboxes("gifq", FAST_GIFQ_DEFAULTS) as make:
        yield make


@pytest.fixture
def gifq_sandbox(
    request: pytest.FixtureRequest, make_gifq_sandbox: Callable[..., SandboxHandle]
) -> SandboxHandle:
    """A running GIFQ sandbox; overrides come from indirect parametrisation."""
    return make_gifq_sandbox(**_indirect_overrides(request))


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """This worker's throwaway PostgreSQL cluster (tests/pg.py), started on first use."""
    cluster = PgCluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    """A fresh, migrated PostgreSQL ledger database of this test's own."""
    return pg_cluster.url(pg_cluster.fresh_database())


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    """A ledger with batch "b" started, on a SQLite file and on PostgreSQL (tests/pg.py)."""
    from batcher.ledger.location import parse_ledger_url
    from batcher.ledger.store import Ledger
    from tests.test_ledger import _started

    if request.param == "postgresql":
        led = Ledger(parse_ledger_url(request.getfixturevalue("pg_url")))
    else:
        led = Ledger.open(tmp_path)
    yield _started(led)
    led.close()
