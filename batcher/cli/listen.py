"""`batcher listen`: the webhook receiver, a separate long-running process.

It binds before announcing its URL (so `--port 0` works and the URL printed is
the one that answers), verifies every delivery with the signing secret from
`<PROVIDER>_WEBHOOK_SECRET` or batcher.toml's `[webhooks] secret_file`, and
writes the evidence into the ledger under --state-dir. It never orders anything.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path

import click
import uvicorn

from batcher.cli.common import handle_errors, ledger_options, provider_choice, resolve_ledger
from batcher.cli.terminal import echo
from batcher.config import load_file_config, provider_settings, webhook_settings
from batcher.core.errors import ConfigError
from batcher.ledger.events import WebhookEvents
from batcher.providers.webhook_clients import event_reader
from batcher.receiver.app import PATH, ReceiverConfig, create_receiver


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=8787, show_default=True,
              help="Port to bind (0: any free port, printed at start).")  # fmt: skip
@provider_choice("Whose deliveries this receiver accepts.")
@ledger_options
@handle_errors
def listen(
    host: str, port: int, provider: str, state_dir: Path | None, ledger_url: str | None
) -> None:
    """Receive signed webhook deliveries and record them as evidence in the ledger."""
    provider = provider.lower()
    secret = webhook_settings(load_file_config()).secret(provider)
    reader = event_reader(provider)
    scrub = [secret.get_secret_value()]
    # If our API key is in the environment, it must never be stored, even if echoed.
    with contextlib.suppress(ConfigError):
        scrub.append(provider_settings(provider).api_key.get_secret_value())
    _, location = resolve_ledger(state_dir, ledger_url)
    events = WebhookEvents(location)
    app = create_receiver(ReceiverConfig(provider, (secret,), reader, scrub=tuple(scrub)), events)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror})") from None
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    echo(f"listening on http://{shown}:{bound}{PATH} (ledger {location.shown}, pid {os.getpid()})")
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        app.state.ledger_writer.close()
        events.close()
