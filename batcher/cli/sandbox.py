"""`batcher sandbox serve`: run a local provider sandbox in the foreground."""

from __future__ import annotations

import errno
import os
import socket
import uuid
from collections.abc import Callable
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


def _currency_pair(text: str) -> str | None:
    base, slash, quote = text.partition("/")
    ok = slash and len(base) == 3 and len(quote) == 3 and base != quote
    return f"{base}/{quote}" if ok else None


def _keyed_numbers(
    key_of: Callable[[str], str | None],
    usage: str,
    noun: str,
    allowed: tuple[Callable[[Decimal], bool], str],
) -> Callable[[click.Context, click.Parameter, tuple[str, ...]], dict[str, Decimal]]:
    """A click callback reading repeatable KEY=NUMBER values into a table. `key_of`
    takes the key upper-cased and answers None when it is malformed; `allowed` is a
    check on the number and the message when it fails."""
    check, refusal = allowed

    def parse(
        ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
    ) -> dict[str, Decimal]:
        numbers: dict[str, Decimal] = {}
        for value in values:
            text, sep, raw = value.partition("=")
            key = key_of(text.strip().upper()) if sep else None
            if key is None:
                raise click.BadParameter(f"{value!r}: use {usage}")
            try:
                number = Decimal(raw.strip())
            except InvalidOperation:
                raise click.BadParameter(f"{value!r}: {raw!r} is not {noun}") from None
            if not number.is_finite() or not check(number):
                raise click.BadParameter(f"{value!r}: {refusal}")
            numbers[key] = number
        return numbers

    return parse


# ('GBP=5000', 'EUR=0') -> {'GBP': Decimal('5000'), 'EUR': Decimal('0')}
_parse_funding = _keyed_numbers(
    lambda cur: cur if len(cur) == 3 and cur.isalpha() else None,
    "CUR=AMOUNT, for example GBP=5000",
    "an amount",
    (lambda amount: amount >= 0, "the amount must be zero or more"),
)
# ('GBP/USD=1.27',) -> {'GBP/USD': Decimal('1.27')}
_parse_fx_rates = _keyed_numbers(
    _currency_pair,
    "FROM/TO=RATE, for example GBP/USD=1.27",
    "a rate",
    (lambda rate: rate > 0, "the rate must be positive"),
)


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
    return _setting(
        f"--fault-{name}",
        f"fault_{name.replace('-', '_')}",
        click.FloatRange(0.0, 1.0),
        f"Probability 0..1: {_FAULT_HELP[name]}.",
        metavar="RATE",
    )


def _setting(flag: str, field: str, kind: click.ParamType, help: str, **more: Any) -> Any:
    """A flag that overrides the sandbox config field `field` when given."""
    return click.option(flag, field, type=kind, default=None, help=help, **more)


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
    "--port",
    type=click.IntRange(0, 65535),
    default=8765,
    show_default=True,
    help="Port to bind; 0 picks a free one (printed on startup).",
)
@click.option(
    "--api-key",
    "api_keys",
    multiple=True,
    help="A sandbox API key or token (repeatable; each is its own account). Default: "
    "$UGIFTME_API_KEY or $GIFQ_API_TOKEN, else a generated key that is printed once.",
)
@click.option(
    "--rate-limit",
    callback=_parse_rate_limit,
    default=None,
    metavar="N/SECONDS",
    help="Fixed-window limit per API key.  [default: 120/60 UGiftMe, 10/1 GIFQ]",
)
@click.option(
    "--sync/--async",
    "sync_mode",
    default=None,
    help="UGiftMe only: answer orders at once (201) or queue them (202 + order request).  "
    "[default: async]",
)
@_setting("--async-delay", "async_delay_seconds", click.FloatRange(0.0), metavar="SECONDS",
    help="Time an order request (GIFQ: an order, a payout order step) spends queued, "
    "then again processing.  [default: 1]")  # fmt: skip
@_setting("--idempotency-ttl", "idempotency_ttl_seconds", click.FloatRange(0.0, min_open=True),
    metavar="SECONDS", help="How long idempotency keys are kept.  [default: 86400]")  # fmt: skip
@_setting("--bulk-limit", "bulk_limit", click.IntRange(1),
    "UGiftMe only: most items in one bulk order.  [default: 100]")  # fmt: skip
@click.option(
    "--fund", "funding", multiple=True, callback=_parse_funding, metavar="CUR=AMOUNT",
    help="Starting balance of a wallet (repeatable); GBP, EUR and USD otherwise start "
    "at 10,000 (GIFQ: 5,000).",
)  # fmt: skip
@_setting("--seed", "seed", click.INT, "Seed for the fault injector.")
@_rate("500")
@_rate("429")
@_rate("latency")
@_setting("--latency-ms", "latency_ms", click.IntRange(0),
    "Delay added by the latency fault.  [default: 250]")  # fmt: skip
@_rate("drop")
@_rate("reject-item")
@_rate("async-fail")
@_rate("payout-fail")
@click.option(
    "--fx-rate", "fx_rates", multiple=True, callback=_parse_fx_rates, metavar="FROM/TO=RATE",
    help="GIFQ only: one FROM costs RATE TO (repeatable; also sets the inverse).",
)  # fmt: skip
@_setting("--webhook-time-scale", "webhook_time_scale", click.FloatRange(0.0, min_open=True),
    metavar="X", help="UGiftMe only: multiply webhook retry delays (1 min ... 4 h) by X.  "
    "[default: 1]")  # fmt: skip
def serve_command(
    provider: str,
    host: str,
    port: int,
    api_keys: tuple[str, ...],
    rate_limit: tuple[int, float] | None,
    sync_mode: bool | None,
    **settings: Any,
) -> None:
    """Serve a provider sandbox until Ctrl-C or SIGTERM.

    Controls for tests and demos live under /__sandbox/ on the same host
    (GIFQ: /api/__sandbox/).
    """
    spec = sandbox_provider(provider)
    keys, notices = _resolve_keys(api_keys, spec.api_key_env)
    given: dict[str, Any] = {} if sync_mode is None else {"async_mode": not sync_mode}
    # Every other option is named after the config field it overrides; one not given
    # (None, or a repeatable one without values) keeps the provider's default.
    given.update((name, v) for name, v in settings.items() if v is not None and v != {})
    if rate_limit is not None:
        given["rate_limit"], given["rate_window_seconds"] = rate_limit
    _refuse_foreign_options(spec.name, spec.display_name, given)
    _check_port_free(host, port)
    app = spec.build({"api_keys": keys, **given})
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
