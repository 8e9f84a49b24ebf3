"""The `/__sandbox` control logic both provider sandboxes share.

Each provider keeps its own routes and error shapes: the helpers here raise
`ValueError` with the message to show, and the provider turns that into its 400.
`control_get_faults` and `control_reset` answer the same for every provider.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response

from batcher.sandbox.common import (
    DelayedTaskScheduler,
    FaultInjector,
    FixedWindowRateLimiter,
    RequestLog,
    json_response,
)


class SandboxState(Protocol):
    """What every provider's sandbox state (`app.state.sandbox`) offers the controls."""

    limiter: FixedWindowRateLimiter
    faults: FaultInjector
    request_log: RequestLog
    scheduler: DelayedTaskScheduler

    @property
    def api_keys(self) -> list[str]: ...

    def reset(self) -> None: ...


def _state(request: Request) -> SandboxState:
    sandbox: SandboxState = request.app.state.sandbox
    return sandbox


def setting_number(
    body: Mapping[str, Any], name: str, *, low: float = 0.0, high: float | None = None
) -> float:
    """A numeric setting (a delay, a rate, a limit) from a control body, or ValueError."""
    raw = body[name]
    if isinstance(raw, bool) or not isinstance(raw, int | Decimal):
        raise ValueError(f"{name} must be a number")
    value = float(raw)  # a setting, not money
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} is out of range")
    return value


def faults_json(faults: FaultInjector) -> dict[str, Any]:
    settings = faults.settings
    body: dict[str, Any] = {kind: Decimal(str(rate)) for kind, rate in settings.rates.items()}
    body.update(
        latencyMs=settings.latency_ms,
        burstSeconds=Decimal(str(settings.burst_seconds)),
        seed=settings.seed,
        counts=dict(faults.counts),
    )
    return body


def rate_limit_json(limiter: FixedWindowRateLimiter) -> dict[str, Any]:
    return {"limit": limiter.limit, "windowSeconds": Decimal(str(limiter.window_seconds))}


def update_faults(faults: FaultInjector, body: Mapping[str, Any], kinds: Iterable[str]) -> None:
    """Apply a PATCH /faults body: rates of `kinds`, latencyMs, burstSeconds, seed."""
    rates = {kind: setting_number(body, kind, high=1.0) for kind in kinds if kind in body}
    latency = int(setting_number(body, "latencyMs")) if "latencyMs" in body else None
    burst = setting_number(body, "burstSeconds") if "burstSeconds" in body else None
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError("seed must be an integer or null")
    faults.update(rates, latency_ms=latency, burst_seconds=burst, seed=seed, reseed="seed" in body)


def update_rate_limit(limiter: FixedWindowRateLimiter, body: Mapping[str, Any]) -> None:
    """Apply a PUT /rate-limit body; what is left out keeps its value; windows restart."""
    limit = int(setting_number(body, "limit", low=1)) if "limit" in body else limiter.limit
    window = (
        setting_number(body, "windowSeconds") if "windowSeconds" in body else limiter.window_seconds
    )
    limiter.configure(limit, window)


def stats_json(
    sandbox: SandboxState,
    counts: Mapping[str, int],
    *,
    since: int,
    bucket: str | None,
    include_log: bool,
) -> dict[str, Any]:
    """The GET /stats body: request counters, fault counts, the provider's `counts`,
    the worker's state and (unless `include_log` is false) the log after `since`,
    narrowed to one `bucket` when given."""
    request_log = sandbox.request_log
    too_many = dict(request_log.too_many_by_bucket)
    body: dict[str, Any] = {
        "requests": dict(request_log.requests_by_bucket),
        "tooManyRequests": too_many,
        "tooManyRequestsTotal": sum(too_many.values()),
        "statusCounts": {str(k): v for k, v in sorted(request_log.status_counts.items())},
        "faults": dict(sandbox.faults.counts),
        **counts,
        "scheduledTasks": sandbox.scheduler.pending(),
        "workerErrors": list(sandbox.scheduler.errors),
    }
    if include_log:
        entries = request_log.entries(since)
        body["log"] = [e.as_dict() for e in entries if bucket is None or e.bucket == bucket]
    return body


async def control_get_faults(request: Request) -> Response:
    return json_response(faults_json(_state(request).faults))


async def control_reset(request: Request) -> Response:
    sandbox = _state(request)
    sandbox.reset()
    return json_response({"ok": True, "apiKeys": sandbox.api_keys})
