"""The `/__sandbox` control logic both provider sandboxes share.

Each provider keeps its own error shapes: the helpers here raise through the
app's `Dialect` (`dialect_of`). The handlers here (health, config, faults, rate
limit, stats, reset) answer alike for every provider; `shared_control_routes`
mounts them, and the provider adds its own routes next to them.

An account is named by the first of the dialect's token headers; it may be left
out when only one account is configured. Listings cover every account unless a
header narrows them to one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from batcher.core.money import fits_currency, is_currency_code, round_money
from batcher.sandbox.common import (
    DelayedTaskScheduler,
    FaultInjector,
    FixedWindowRateLimiter,
    RequestLog,
    money_input,
    parse_bool,
)
from batcher.sandbox.dialect import dialect_of
from batcher.sandbox.handlers import read_json
from batcher.sandbox.jsonio import json_response


class SandboxState(Protocol):
    """What every provider's sandbox state (`app.state.sandbox`) offers the controls."""

    limiter: FixedWindowRateLimiter
    faults: FaultInjector
    request_log: RequestLog
    scheduler: DelayedTaskScheduler

    @property
    def api_keys(self) -> list[str]: ...

    @property
    def accounts(self) -> Mapping[str, Any]: ...

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
        echoCredentials=settings.echo_credentials,
        counts=dict(faults.counts),
    )
    return body


def rate_limit_json(limiter: FixedWindowRateLimiter) -> dict[str, Any]:
    return {"limit": limiter.limit, "windowSeconds": Decimal(str(limiter.window_seconds))}


def update_faults(faults: FaultInjector, body: Mapping[str, Any], kinds: Iterable[str]) -> None:
    """Apply a PATCH /faults body: rates of `kinds`, latencyMs, burstSeconds, seed,
    echoCredentials."""
    rates = {kind: setting_number(body, kind, high=1.0) for kind in kinds if kind in body}
    latency = int(setting_number(body, "latencyMs")) if "latencyMs" in body else None
    burst = setting_number(body, "burstSeconds") if "burstSeconds" in body else None
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError("seed must be an integer or null")
    echo = body.get("echoCredentials")
    if echo is not None and not isinstance(echo, bool):
        raise ValueError("echoCredentials must be a boolean")
    faults.update(
        rates,
        latency_ms=latency,
        burst_seconds=burst,
        seed=seed,
        reseed="seed" in body,
        echo_credentials=echo,
    )


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


# ---------------------------------------------------------------------------
# Reading a control request.


def control_token(request: Request) -> str | None:
    headers = dialect_of(request).token_headers
    return next((request.headers[h] for h in headers if request.headers.get(h)), None)


def control_account(request: Request) -> Any:
    """The account the call names, or the only one; the provider's 404/400 otherwise."""
    accounts, token = _state(request).accounts, control_token(request)
    if token:
        account = accounts.get(token)
        if account is None:
            raise dialect_of(request).unknown_account()
        return account
    if len(accounts) == 1:
        return next(iter(accounts.values()))
    raise dialect_of(request).account_required(len(accounts))


def filtered_accounts(request: Request) -> list[Any]:
    """The named account, or every account when the call names none."""
    if control_token(request):
        return [control_account(request)]
    return list(_state(request).accounts.values())


async def control_object(request: Request) -> Mapping[str, Any]:
    """The body as a JSON object; an empty body is an empty object."""
    raw = await request.body()
    if not raw.strip():
        return {}
    body = await read_json(request)
    if not isinstance(body, Mapping):
        raise dialect_of(request).invalid("The body must be a JSON object")
    return body


@contextlib.contextmanager
def refused_setting(request: Request) -> Iterator[None]:
    """A control setting's ValueError as the provider's 400."""
    try:
        yield
    except ValueError as exc:
        raise dialect_of(request).invalid(str(exc)) from None


def control_number(
    request: Request,
    body: Mapping[str, Any],
    name: str,
    *,
    low: float = 0.0,
    high: float | None = None,
) -> float:
    with refused_setting(request):
        return setting_number(body, name, low=low, high=high)


def control_money(request: Request, raw: Any, currency: str, name: str) -> Decimal:
    """An amount in `currency` given as a JSON number or decimal string, rounded to it."""
    invalid = dialect_of(request).invalid
    try:
        amount = money_input(raw)
    except (TypeError, ValueError):
        raise invalid(f"{name} must be a number or a decimal string") from None
    if not fits_currency(amount, currency):
        raise invalid(f"{name} has too many decimals for {currency}")
    return round_money(amount, currency)


def path_currency(request: Request) -> str:
    currency: str = request.path_params["currency"].upper()
    if not is_currency_code(currency):
        raise dialect_of(request).invalid("currency must be a 3-letter ISO code")
    return currency


def control_flag(request: Request, body: Mapping[str, Any], name: str) -> bool:
    """A boolean setting, or the provider's 400."""
    value = body[name]
    if not isinstance(value, bool):
        raise dialect_of(request).invalid(f"{name} must be a boolean")
    return value


# ---------------------------------------------------------------------------
# The handlers every provider shares.


async def control_health(request: Request) -> Response:
    return json_response({"ok": True, "provider": dialect_of(request).provider})


async def control_get_config(request: Request) -> Response:
    return json_response(dialect_of(request).config_json(_state(request)))


async def control_get_faults(request: Request) -> Response:
    return json_response(faults_json(_state(request).faults))


async def control_patch_faults(request: Request) -> Response:
    sandbox, body = _state(request), await control_object(request)
    with refused_setting(request):
        update_faults(sandbox.faults, body, dialect_of(request).fault_kinds)
    return json_response(faults_json(sandbox.faults))


async def control_rate_limit(request: Request) -> Response:
    sandbox, body = _state(request), await control_object(request)
    with refused_setting(request):
        update_rate_limit(sandbox.limiter, body)
    return json_response(rate_limit_json(sandbox.limiter))


async def control_stats(request: Request) -> Response:
    raw_since = request.query_params.get("since") or "0"
    if not raw_since.isdigit():
        raise dialect_of(request).invalid("since must be a whole number")
    include_log = parse_bool(request.query_params.get("log")) is not False
    counts = dialect_of(request).counts(filtered_accounts(request))
    body = stats_json(
        _state(request),
        counts,
        since=int(raw_since),
        bucket=control_token(request),
        include_log=include_log,
    )
    return json_response(body)


async def control_reset(request: Request) -> Response:
    sandbox = _state(request)
    sandbox.reset()
    return json_response({"ok": True, "apiKeys": sandbox.api_keys})


def shared_control_routes() -> list[BaseRoute]:
    return [
        Route("/health", control_health, methods=["GET"]),
        Route("/config", control_get_config, methods=["GET"]),
        Route("/faults", control_get_faults, methods=["GET"]),
        Route("/faults", control_patch_faults, methods=["PATCH", "PUT"]),
        Route("/rate-limit", control_rate_limit, methods=["PUT"]),
        Route("/stats", control_stats, methods=["GET"]),
        Route("/reset", control_reset, methods=["POST"]),
    ]
