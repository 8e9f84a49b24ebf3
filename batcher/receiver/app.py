"""The receiver's ASGI app (starlette): one POST route, one health check.

Answers: 200 for a verified event (new or repeated: either way the provider
may stop retrying), 401 unsigned or wrongly signed, 413 oversized, 400 signed
but not an event, 415 not JSON. Every refusal is recorded with its reason,
never its body. A 5xx (the evidence could not be written) makes the provider
retry later, which is what we want.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from batcher.core.secrets import SecretStr
from batcher.ledger.events import WebhookEvents
from batcher.providers.webhooks import EventReader
from batcher.receiver.verify import MAX_BODY_BYTES, verified

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Webhook-Signature"
EVENT_HEADER = "X-Webhook-Event"
PATH = "/webhooks"


@dataclass(frozen=True)
class ReceiverConfig:
    provider: str
    secrets: tuple[SecretStr, ...]
    read_event: EventReader
    #: strings that must never be stored (our API key, the secrets), blanked if echoed
    scrub: tuple[str, ...] = ()
    max_body_bytes: int = MAX_BODY_BYTES


class _TooLarge(Exception):
    pass


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise _TooLarge
        parts.append(part)
    return b"".join(parts)


def create_receiver(config: ReceiverConfig, events: WebhookEvents) -> Starlette:
    secrets: Sequence[SecretStr] = config.secrets
    if not secrets:
        raise ValueError("the receiver needs at least one signing secret")

    def refuse(status: int, reason: str, event: str | None) -> Response:
        events.record_rejected(config.provider, reason, event)
        log.warning("webhook refused (%s): %s", status, reason)
        return JSONResponse({"ok": False, "error": reason}, status_code=status)

    async def receive(request: Request) -> Response:
        started = time.perf_counter()
        event_header = request.headers.get(EVENT_HEADER)
        try:
            body = await _body(request, config.max_body_bytes)
        except _TooLarge:
            return refuse(413, "body too large", event_header)
        header = request.headers.get(SIGNATURE_HEADER)
        if not header:
            return refuse(401, "unsigned", event_header)
        if not verified(secrets, body, header):
            return refuse(401, "bad signature", event_header)
        content_type = request.headers.get("content-type", "application/json")
        if "json" not in content_type.lower():
            return refuse(415, "not JSON", event_header)
        try:
            evidence = config.read_event(body)
        except ValueError as exc:
            return refuse(400, f"malformed: {exc}", event_header)
        payload = evidence.payload
        for secret in config.scrub:
            payload = payload.replace(secret, "***")
        new = events.record(
            config.provider,
            hashlib.sha256(body).hexdigest(),
            event=evidence.event,
            request_id=evidence.request_id,
            status=evidence.status,
            terminal=evidence.terminal,
            order_ids=evidence.order_ids,
            payload=payload,
        )
        log.info(
            "%s %s %s in %.1f ms",
            evidence.event,
            evidence.request_id or "-",
            "recorded" if new else "repeat",
            (time.perf_counter() - started) * 1000,
        )
        return JSONResponse({"ok": True, "duplicate": not new})

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            Route(PATH, receive, methods=["POST"]),
            Route("/healthz", health, methods=["GET"]),
        ]
    )
