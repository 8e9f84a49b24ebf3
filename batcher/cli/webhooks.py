"""`batcher webhooks ...`: subscriptions at the provider, and the evidence received.

The signing secret is shown once, by the provider, on `subscribe`. batcher
writes it only where the operator says: `--secret-file PATH` (created 0600,
never overwritten; reference it as `secret_file` in batcher.toml's
[webhooks]), or, without that flag, once on stdout for the operator to put in
`<PROVIDER>_WEBHOOK_SECRET`. It never reaches a log, a report or the ledger.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import click

from batcher.cli.common import (
    echo_json,
    handle_errors,
    json_option,
    ledger_options,
    provider_options,
    resolve_ledger,
    resolve_settings,
)
from batcher.cli.terminal import echo
from batcher.config import webhook_secret_env
from batcher.core.errors import ConfigError, UsageError
from batcher.ledger.events import StoredEvent, WebhookEvents
from batcher.providers.webhook_clients import connect_webhooks
from batcher.providers.webhooks import Subscription, WebhookClient


@click.group()
def webhooks() -> None:
    """Webhook subscriptions at the provider, and the events `batcher listen` received."""


@contextmanager
def _client(provider: str, base_url: str | None) -> Iterator[WebhookClient]:
    """The provider's webhook client, closed however the command ends."""
    client = connect_webhooks(resolve_settings(provider, base_url))
    try:
        yield client
    finally:
        client.close()


def _subscription_command(func: Callable[..., None]) -> click.Command:
    """A `webhooks` command on one subscription: WEBHOOK_ID, --provider and --base-url."""
    with_options = click.argument("webhook_id")(provider_options(handle_errors(func)))
    return webhooks.command()(with_options)


def _show(hook: Subscription) -> None:
    state = "active" if hook.active else "inactive"
    description = f"  ({hook.description})" if hook.description else ""
    echo(f"{hook.id}  {state:<8} {hook.url}  [{', '.join(hook.events)}]{description}")


def _as_json(hook: Subscription) -> dict[str, object]:
    return {
        "id": hook.id,
        "url": hook.url,
        "events": list(hook.events),
        "description": hook.description,
        "active": hook.active,
    }


def _write_secret(path: Path, secret: str) -> None:
    """Create `path` readable by its owner only; an existing file is never replaced."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"{path} already exists", hint="choose a new file") from None
    except OSError as exc:
        raise ConfigError(f"cannot create {path} ({exc.strerror})") from None
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(secret + "\n")


def _check_events(client: WebhookClient, events: Sequence[str]) -> None:
    unknown = [e for e in events if e not in client.valid_events]
    if unknown:
        raise UsageError(
            f"unknown event(s): {', '.join(unknown)}",
            hint=f"use any of: {', '.join(client.valid_events)}",
        )


@webhooks.command()
@click.option("--url", required=True, help="Public HTTPS URL of `batcher listen` (its /webhooks).")
@click.option("--event", "events", multiple=True,
              help="Event to receive (repeatable); default: order.succeeded and order.failed.")  # fmt: skip
@click.option("--description", default=None, help="A note kept with the subscription.")
@click.option(
    "--secret-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write the signing secret to this new file (mode 0600) instead of showing it.",
)
@provider_options
@handle_errors
def subscribe(
    url: str,
    events: tuple[str, ...],
    description: str | None,
    secret_file: Path | None,
    provider: str,
    base_url: str | None,
) -> None:
    """Subscribe URL to events. The provider shows the signing secret only now."""
    if secret_file is not None and secret_file.exists():
        raise UsageError(f"{secret_file} already exists", hint="choose a new file")
    with _client(provider, base_url) as client:
        chosen = list(events) or list(client.default_events)
        _check_events(client, chosen)
        hook = client.subscribe(url, chosen, description)
    assert hook.secret is not None
    _show(hook)
    if secret_file is not None:
        _write_secret(secret_file, hook.secret.get_secret_value())
        echo(f"signing secret written to {secret_file} (0600); set secret_file in [webhooks]")
        return
    echo(f"signing secret (shown once; put it in ${webhook_secret_env(provider)}):", err=True)
    echo(hook.secret.get_secret_value())


@webhooks.command(name="list")
@json_option
@provider_options
@handle_errors
def list_(as_json: bool, provider: str, base_url: str | None) -> None:
    """List the subscriptions (the provider never shows their secrets again)."""
    with _client(provider, base_url) as client:
        hooks = client.subscriptions()
    if as_json:
        echo_json([_as_json(h) for h in hooks])
    elif not hooks:
        echo("No webhook subscriptions.", err=True)
    for hook in [] if as_json else hooks:
        _show(hook)


@webhooks.command()
@click.argument("webhook_id")
@click.option("--url", default=None, help="New URL.")
@click.option("--event", "events", multiple=True, help="Replace the events (repeatable).")
@click.option("--description", default=None, help="New description.")
@click.option("--active/--inactive", default=None, help="Resume or pause deliveries.")
@provider_options
@handle_errors
def update(
    webhook_id: str,
    url: str | None,
    events: tuple[str, ...],
    description: str | None,
    active: bool | None,
    provider: str,
    base_url: str | None,
) -> None:
    """Change a subscription's URL, events, description or active flag."""
    with _client(provider, base_url) as client:
        if events:
            _check_events(client, events)
        hook = client.update(
            webhook_id,
            url=url,
            events=list(events) or None,
            description=description,
            active=active,
        )
    _show(hook)


@_subscription_command
def delete(webhook_id: str, provider: str, base_url: str | None) -> None:
    """Delete a subscription; deliveries stop."""
    with _client(provider, base_url) as client:
        client.delete(webhook_id)
    echo(f"deleted {webhook_id}")


@_subscription_command
def test(webhook_id: str, provider: str, base_url: str | None) -> None:
    """Ask the provider to send a sample event to the subscription's URL now."""
    with _client(provider, base_url) as client:
        result = client.test(webhook_id)
    status = result.status_code if result.status_code is not None else "no answer"
    if not result.ok:
        raise UsageError(f"test delivery failed: {status} {result.error or ''}".strip())
    echo(f"test delivery answered {status}")


def _event_line(event: StoredEvent) -> str:
    what = event.event or "-"
    if event.verdict == "rejected":
        return f"{event.received_at}  rejected  {what}  {event.reason}"
    orders = f"  orders {len(event.order_ids)}" if event.order_ids else ""
    repeats = f"  x{event.deliveries}" if event.deliveries > 1 else ""
    return f"{event.received_at}  {what}  {event.request_id or '-'}{orders}{repeats}"


@webhooks.command()
@click.option("--orphans", is_flag=True, help="Only events for requests no batch sent.")
@click.option("--rejected", is_flag=True, help="Only refused deliveries.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@ledger_options
@handle_errors
def events(
    orphans: bool, rejected: bool, limit: int, state_dir: Path | None, ledger_url: str | None
) -> None:
    """What `batcher listen` recorded: counts, then the newest events."""
    store = WebhookEvents(resolve_ledger(state_dir, ledger_url)[1])
    try:
        counts = store.counts()
        found = (
            store.orphans()
            if orphans
            else store.listing(verdict="rejected" if rejected else None, limit=limit)
        )
        orphan_count = store.orphan_count()
    finally:
        store.close()
    echo(
        f"{counts['accepted']} events recorded, {counts['repeats']} repeated deliveries, "
        f"{counts['rejected']} refused, {orphan_count} for requests no batch sent (orphans)"
    )
    for event in found[:limit]:
        echo(_event_line(event))
