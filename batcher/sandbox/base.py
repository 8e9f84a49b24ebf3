"""The state every provider's sandbox starts with: scheduler, limiter, faults,
idempotency store and request log, reset together, plus generation-guarded
scheduling so work queued before a reset never touches the state after it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from batcher.sandbox.common import (
    DelayedTaskScheduler,
    FaultInjector,
    FaultSettings,
    FixedWindowRateLimiter,
    RequestLog,
)
from batcher.sandbox.idempotency import IdempotencyStore


class CoreConfig(Protocol):
    """The settings of a provider's config that `SandboxCore` reads."""

    @property
    def rate_limit(self) -> int: ...

    @property
    def rate_window_seconds(self) -> float: ...

    @property
    def idempotency_ttl_seconds(self) -> float: ...

    @property
    def async_delay_seconds(self) -> float: ...

    def fault_settings(self) -> FaultSettings: ...


class SandboxCore:
    """The shared half of a sandbox's state; the provider adds its accounts and rules."""

    def __init__(self, config: CoreConfig) -> None:
        self.scheduler = DelayedTaskScheduler()
        self.limiter = FixedWindowRateLimiter(config.rate_limit, config.rate_window_seconds)
        self.faults = FaultInjector(config.fault_settings())
        self.idempotency = IdempotencyStore(config.idempotency_ttl_seconds)
        self.request_log = RequestLog()
        self.async_delay_seconds = config.async_delay_seconds
        self._generation = 0  # bumped by reset, so stale scheduled work does nothing

    def reset_core(self, config: CoreConfig) -> None:
        """Back to `config`: windows, faults, idempotency keys, log and queued work."""
        self._generation += 1
        self.scheduler.clear()
        self.limiter.configure(config.rate_limit, config.rate_window_seconds)
        self.faults.reset(config.fault_settings())
        self.idempotency.clear()
        self.idempotency.ttl_seconds = config.idempotency_ttl_seconds
        self.request_log.clear()
        self.async_delay_seconds = config.async_delay_seconds

    def schedule(self, step: Callable[[], None], delay: float | None = None) -> None:
        """Run `step` after `delay` (default: the async delay), unless reset first."""
        generation = self._generation

        def run() -> None:
            if generation == self._generation:
                step()

        self.scheduler.call_later(self.async_delay_seconds if delay is None else delay, run)
