"""The end-of-run notification: POST the run's JSON summary to a webhook.

The body is Slack-compatible (``text`` and ``blocks``, which Slack's incoming
webhooks and most chat bridges render) and carries the whole run document under
``batcher`` for machines. Delivery is retried a few times with backoff; a
notification that cannot be delivered is reported, never raised, so it can
never change a run's exit code.

A webhook URL is itself a credential (Slack's carry the secret in the path), so
messages name only its host. Which URLs are allowed is checked by the caller
(`batcher.services.check_notify_url`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from batcher import __version__

ATTEMPTS = 3
TIMEOUT = httpx.Timeout(5.0, connect=3.0)  # a slow chat service must not hold a cron job


@dataclass(frozen=True)
class Delivery:
    delivered: bool
    attempts: int
    detail: str  # "HTTP 200", or why it failed; never the URL's path


class _Retryable(Exception):
    pass


def host_of(url: str) -> str:
    return urlsplit(url).hostname or "?"


def slack_payload(
    document: Mapping[str, Any], headline: str, lines: Iterable[str]
) -> dict[str, Any]:
    """`{"text", "blocks", "batcher"}`: readable in a chat, complete for a machine."""
    body = "\n".join(lines)
    return {
        "text": headline,
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": headline[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": body[:2900] or headline}},
        ],
        "batcher": dict(document),
    }


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Defence in depth: a run document never holds a key, but if one slipped in, drop it."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    return text


def send_notification(
    url: str,
    payload: Mapping[str, Any],
    *,
    secrets: Iterable[str] = (),
    transport: httpx.BaseTransport | None = None,
    sleep: Callable[[float], None] | None = None,
) -> Delivery:
    """POST `payload` as JSON to `url`, retrying transport errors, 429 and 5xx."""
    body = scrub(json.dumps(payload, ensure_ascii=False, default=str), secrets).encode("utf-8")
    attempts = 0
    last = "not sent"

    def post(client: httpx.Client) -> str:
        nonlocal attempts, last
        attempts += 1
        try:
            response = client.post(url, content=body)
        except httpx.HTTPError as exc:
            last = type(exc).__name__
            raise _Retryable from None
        last = f"HTTP {response.status_code}"
        if response.status_code == 429 or response.status_code >= 500:
            raise _Retryable
        return last

    retrying = Retrying(
        stop=stop_after_attempt(ATTEMPTS),
        wait=wait_exponential(multiplier=0.5, max=4.0),
        retry=retry_if_exception_type(_Retryable),
        reraise=True,
        sleep=sleep or time.sleep,
    )
    headers = {"Content-Type": "application/json", "User-Agent": f"batcher/{__version__}"}
    with httpx.Client(
        timeout=TIMEOUT, headers=headers, transport=transport, follow_redirects=False
    ) as client:
        try:
            status = retrying(post, client)
        except _Retryable:
            return Delivery(False, attempts, last)
    ok = status.startswith("HTTP 2")
    return Delivery(ok, attempts, status)
