"""`batcher sandbox serve`: run a local provider sandbox in the foreground."""

from __future__ import annotations

import errno
import os
import socket
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any

import click

from batcher.cli.common import fail
from batcher.core.errors import ExitCode
from batcher.sandbox.server import PROVIDERS, sandbox_provider, serve


def _parse_rate_limit(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> tuple[int, float] | None:
    """'120/60' -> (120 requests, 60 seconds)."""
    if value is None:
        return None
    try:
        count, _, seconds = value.partition("/")
        limit, window = int(count), float(seconds or "60")
    except ValueError:
        raise click.BadParameter("use REQUESTS/SECONDS, for example 120/60") from None
    if limit < 1 or window <= 0:
        raise click.BadParameter("both numbers must be positive")
    return limit, window


def _parse_funding(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, Decimal]:
    """('GBP=5000', 'EUR=0') -> {'GBP': Decimal('5000'), 'EUR': Decimal('0')}."""
    funding: dict[str, Decimal] = {}
    for value in values:
        currency, sep, amount = value.partition("=")
        currency = currency.strip().upper()
        if not sep or len(currency) != 3 or not currency.isalpha():
            raise click.BadParameter(f"{value!r}: use CUR=AMOUNT, for example GBP=5000")
        try:
            funding[currency] = Decimal(amount.strip())
        except InvalidOperation:
            raise click.BadParameter(f"{value!r}: {amount!r} is not an amount") from None
        if not funding[currency].is_finite() or funding[currency] < 0:
            raise click.BadParameter(f"{value!r}: the amount must be zero or more")
    return funding


def _parse_fx_rates(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, Decimal]:
    """('GBP/USD=1.27',) -> {'GBP/USD': Decimal('1.27')}."""
    rates: dict[str, Decimal] = {}
    for value in values:
        pair, sep, raw = value.partition("=")
        base, slash, quote = pair.strip().upper().partition("/")
        if not sep or not slash or len(base) != 3 or len(quote) != 3 or base == quote:
            raise click.BadParameter(f"{value!r}: use FROM/TO=RATE, for example GBP/USD=1.27")
        try:
            rate = Decimal(raw.strip())
        except InvalidOperation:
            raise click.BadParameter(f"{value!r}: {raw!r} is not a rate") from None
        if not rate.is_finite() or rate <= 0:
            raise click.BadParameter(f"{value!r}: the rate must be positive")
        rates[f"{base}/{quote}"] = rate
    return rates


# Options only one provider's sandbox understands: config field -> (flag, providers).
_PROVIDER_ONLY = {
    "async_mode": ("--sync/--async", {"ugiftme"}),
    "bulk_limit": ("--bulk-limit", {"ugiftme"}),
    "webhook_time_scale": ("--webhook-time-scale", {"ugiftme"}),
    "fx_rates": ("--fx-rate", {"gifq"}),
    "fault_payout_fail": ("--fault-payout-fail", {"gifq"}),
}

_FAULT_HELP = {
    "500": "answer 500 before doing anything (per API request)",
    "429": "start a 429 burst for the key (per API request)",
    "latency": "sleep --latency-ms before handling (per API request)",
    "drop": "commit, then cut the connection (per order- or payout-order-creating POST)",
    "reject-item": 'reject a valid item as "Out of stock" (per bulk item; GIFQ: per order, 422)',
    "async-fail": "fail an order request upstream, releasing its hold (GIFQ: an order, refunded)",
    "payout-fail": "GIFQ only: fail a payout order, refunding it (per payout order)",
}


def _rate(name: str) -> Any:
    return click.option(
        f"--fault-{name}",
        type=click.FloatRange(0.0, 1.0),
        default=None,
        metavar="RATE",
        help=f"Probability 0..1: {_FAULT_HELP[name]}.",
    )


@click.group()
def sandbox() -> None:
    """Local provider sandboxes to rehearse against (never a real provider)."""


@sandbox.command("serve")
@click.option(
    "--provider",
    type=click.Choice(sorted(PROVIDERS), case_sensitive=False),
    default="ugiftme",
    show_default=True,
    help="Which provider's API to simulate.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
    help="Port to bind; 0 picks a free one (printed on startup).",
)  # fmt: skip
@click.option(
    "--api-key", "api_keys", multiple=True,
    help="A sandbox API key or token (repeatable; each is its own account). Default: "
    "$UGIFTME_API_KEY or $GIFQ_API_TOKEN, else a generated key that is printed once.",
)  # fmt: skip
@click.option(
    "--rate-limit", callback=_parse_rate_limit, default=None, metavar="N/SECONDS",
    help="Fixed-window limit per API key.  [default: 120/60 UGiftMe, 10/1 GIFQ]",
)  # fmt: skip
@click.option(
    "--sync/--async", "sync_mode", default=None,
    help="UGiftMe only: answer orders at once (201) or queue them (202 + order request).  "
    "[default: async]",
)  # fmt: skip
@click.option(
    "--async-delay", type=click.FloatRange(0.0), default=None, metavar="SECONDS",
    help="Time an order request (GIFQ: an order, a payout order step) spends queued, "
    "then again processing.  [default: 1]",
)  # fmt: skip
@click.option(
    "--idempotency-ttl", type=click.FloatRange(0.0, min_open=True), default=None,
    metavar="SECONDS", help="How long idempotency keys are kept.  [default: 86400]",
)  # fmt: skip
@click.option(
    "--bulk-limit", type=click.IntRange(1), default=None,
    help="UGiftMe only: most items in one bulk order.  [default: 100]",
)  # fmt: skip
@click.option(
    "--fund", "funding", multiple=True, callback=_parse_funding, metavar="CUR=AMOUNT",
    help="Starting balance of a wallet (repeatable); GBP, EUR and USD otherwise start "
    "at 10,000 (GIFQ: 5,000).",
)  # fmt: skip
@click.option("--seed", type=int, default=None, help="Seed for the fault injector.")
@_rate("500")
@_rate("429")
@_rate("latency")
@click.option(
    "--latency-ms", type=click.IntRange(0), default=None,
    help="Delay added by the latency fault.  [default: 250]",
)  # fmt: skip
@_rate("drop")
@_rate("reject-item")
@_rate("async-fail")
@_rate("payout-fail")
@click.option(
    "--fx-rate", "fx_rates", multiple=True, callback=_parse_fx_rates, metavar="FROM/TO=RATE",
    help="GIFQ only: one FROM costs RATE TO (repeatable; also sets the inverse).",
)  # fmt: skip
@click.option(
    "--webhook-time-scale", type=click.FloatRange(0.0, min_open=True), default=None,
    metavar="X", help="UGiftMe only: multiply webhook retry delays (1 min ... 4 h) by X.  "
    "[default: 1]",
)  # fmt: skip
def serve_command(
    provider: str,
    host: str,
    port: int,
    api_keys: tuple[str, ...],
    rate_limit: tuple[int, float] | None,
    sync_mode: bool | None,
    async_delay: float | None,
    idempotency_ttl: float | None,
    bulk_limit: int | None,
    funding: dict[str, Decimal],
    seed: int | None,
    fault_500: float | None,
    fault_429: float | None,
    fault_latency: float | None,
    latency_ms: int | None,
    fault_drop: float | None,
    fault_reject_item: float | None,
    fault_async_fail: float | None,
    fault_payout_fail: float | None,
    fx_rates: dict[str, Decimal],
    webhook_time_scale: float | None,
) -> None:
    """Serve a provider sandbox until Ctrl-C or SIGTERM.

    Controls for tests and demos live under /__sandbox/ on the same host
    (GIFQ: /api/__sandbox/).
    """
    spec = sandbox_provider(provider)
    keys, notices = _resolve_keys(api_keys, spec.api_key_env)
    overrides: dict[str, Any] = {
        "api_keys": keys,
        "funding": funding,
        "async_mode": None if sync_mode is None else not sync_mode,
        "async_delay_seconds": async_delay,
        "idempotency_ttl_seconds": idempotency_ttl,
        "bulk_limit": bulk_limit,
        "seed": seed,
        "fault_500": fault_500,
        "fault_429": fault_429,
        "fault_latency": fault_latency,
        "latency_ms": latency_ms,
        "fault_drop": fault_drop,
        "fault_reject_item": fault_reject_item,
        "fault_async_fail": fault_async_fail,
        "fault_payout_fail": fault_payout_fail,
        "fx_rates": fx_rates or None,
        "webhook_time_scale": webhook_time_scale,
    }
    if rate_limit is not None:
        overrides["rate_limit"], overrides["rate_window_seconds"] = rate_limit
    given = {name: value for name, value in overrides.items() if value is not None}
    _refuse_foreign_options(spec.name, spec.display_name, given)
    _check_port_free(host, port)
    app = spec.build(given)
    serve(
        app,
        host,
        port,
        api_root=spec.api_root,
        display_name=spec.display_name,
        notices=notices,
    )
    click.echo(f"{spec.display_name} sandbox stopped.")


def _check_port_free(host: str, port: int) -> None:
    """A clear one-line error for a busy port, instead of uvicorn's raw errno."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                fail(
                    f"port {port} on {host} is already in use (another sandbox?); choose "
                    "another with --port, or --port 0 for a free one",
                    ExitCode.CANNOT_START,
                )
            fail(f"cannot listen on {host}:{port} ({exc.strerror})", ExitCode.CANNOT_START)


def _refuse_foreign_options(provider: str, display_name: str, given: dict[str, Any]) -> None:
    for name in given:
        flag, providers = _PROVIDER_ONLY.get(name, ("", {provider}))
        if provider not in providers:
            raise click.UsageError(f"{flag} does not apply to the {display_name} sandbox")


def _resolve_keys(given: tuple[str, ...], env_name: str) -> tuple[tuple[str, ...], list[str]]:
    """Keys from the flags, else the environment, else a fresh one that is shown once."""
    if given:
        return given, []
    from_env = os.environ.get(env_name, "").strip()
    if from_env:
        return (from_env,), []
    key = str(uuid.uuid4())
    return (key,), [f"Sandbox API key (generated, sandbox only): {key}"]
