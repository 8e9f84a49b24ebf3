"""The receiver's ASGI app (starlette): one POST route, one health check.

Answers: 200 for a verified event (new or repeated: either way the provider
may stop retrying), 401 unsigned or wrongly signed, 413 oversized, 400 signed
but not an event, 415 not JSON. Every refusal is recorded with its reason,
never its body, when the ledger takes it in time (below). A 5xx (the evidence
could not be written) makes the provider retry later, which is what we want.

The ledger is written by one worker thread, one write at a time, never on the
event loop: a write can wait on the ledger's lock (a run's transaction holds
it) for as long as the database's busy timeout, and on the loop that wait would
stall every other delivery and the health check with it. A delivery whose write
has not finished within `ledger_wait_seconds` is answered 503, so the provider
retries it. A write still queued then is dropped; one already started may still
land, and the retry is then kept as a repeat.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

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
#: Below the 5 s a sender commonly waits for an answer: a busy ledger gets the
#: delivery retried, not timed out.
LEDGER_WAIT_SECONDS = 3.0

_T = TypeVar("_T")


@dataclass(frozen=True)
class ReceiverConfig:
    provider: str
    secrets: tuple[SecretStr, ...]
    read_event: EventReader
    #: strings that must never be stored (our API key, the secrets), blanked if echoed
    scrub: tuple[str, ...] = ()
    max_body_bytes: int = MAX_BODY_BYTES
    ledger_wait_seconds: float = LEDGER_WAIT_SECONDS


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


class LedgerWriter:
    """The one thread that makes the receiver's ledger writes, in turn (the evidence
    has one connection), each waited for at most `wait_seconds`."""

    def __init__(self, wait_seconds: float) -> None:
        self.wait_seconds = wait_seconds
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="batcher-ledger-writer")

    async def write(self, write: Callable[[], _T]) -> tuple[_T] | None:
        """The write's result in a 1-tuple, or None when the ledger did not take it in
        time: a queued write is then dropped, a started one goes on in its thread."""
        waiting = asyncio.wrap_future(self._thread.submit(write))
        done, _ = await asyncio.wait({waiting}, timeout=self.wait_seconds)
        if not done:
            waiting.cancel()  # cancels the job too: dropped if still queued
            return None
        return (waiting.result(),)

    def close(self) -> None:
        """Finish the write under way: its wait for the ledger's lock is bounded (30 s:
        SQLite's busy timeout, PostgreSQL's lock_timeout); drop the queued ones."""
        self._thread.shutdown(wait=True, cancel_futures=True)


def create_receiver(config: ReceiverConfig, events: WebhookEvents) -> Starlette:
    secrets: Sequence[SecretStr] = config.secrets
    if not secrets:
        raise ValueError("the receiver needs at least one signing secret")

    writer = LedgerWriter(config.ledger_wait_seconds)

    def busy(started: float) -> Response:
        waited = time.perf_counter() - started
        log.warning("ledger busy: event not recorded in %.1f s; answered 503 to retry", waited)
        return JSONResponse({"ok": False, "error": "ledger busy, retry"}, status_code=503)

    async def refuse(status: int, reason: str, event: str | None) -> Response:
        # The refusal stands whether or not the ledger takes its record in time.
        if (
            await writer.write(lambda: events.record_rejected(config.provider, reason, event))
            is None
        ):
            reason_shown = f"{reason}; not recorded, the ledger is busy"
        else:
            reason_shown = reason
        log.warning("webhook refused (%s): %s", status, reason_shown)
        return JSONResponse({"ok": False, "error": reason}, status_code=status)

    async def receive(request: Request) -> Response:
        started = time.perf_counter()
        event_header = request.headers.get(EVENT_HEADER)
        try:
            body = await _body(request, config.max_body_bytes)
        except _TooLarge:
            return await refuse(413, "body too large", event_header)
        header = request.headers.get(SIGNATURE_HEADER)
        if not header:
            return await refuse(401, "unsigned", event_header)
        if not verified(secrets, body, header):
            return await refuse(401, "bad signature", event_header)
        content_type = request.headers.get("content-type", "application/json")
        if "json" not in content_type.lower():
            return await refuse(415, "not JSON", event_header)
        try:
            evidence = config.read_event(body)
        except ValueError as exc:
            return await refuse(400, f"malformed: {exc}", event_header)
        payload = evidence.payload
        for secret in config.scrub:
            payload = payload.replace(secret, "***")
        kept = await writer.write(
            lambda: events.record(
                config.provider,
                hashlib.sha256(body).hexdigest(),
                event=evidence.event,
                request_id=evidence.request_id,
                status=evidence.status,
                terminal=evidence.terminal,
                order_ids=evidence.order_ids,
                payload=payload,
            )
        )
        if kept is None:
            return busy(started)
        (new,) = kept
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

    app = Starlette(
        routes=[
            Route(PATH, receive, methods=["POST"]),
            Route("/healthz", health, methods=["GET"]),
        ]
    )
    app.state.ledger_writer = writer  # closed by whoever serves the app, before the ledger
    return app
