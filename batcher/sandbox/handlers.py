"""Request handling both sandboxes share: the JSON body, the Idempotency-Key
header, and answering a creation run under that key (with the drop fault).

Errors are raised through the app's `Dialect`, or given by the caller, so each
provider keeps its contract's wording and status codes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from batcher.sandbox.base import SandboxCore
from batcher.sandbox.common import DroppedResponse
from batcher.sandbox.dialect import dialect_of
from batcher.sandbox.idempotency import (
    StoredResponse,
    fingerprint,
    run_idempotently,
    stored_as_response,
)
from batcher.sandbox.jsonio import JsonDecodeError, decode_json

MAX_IDEMPOTENCY_KEY = 255


async def read_json(request: Request) -> Any:
    """The body as JSON (numbers as Decimal), or the provider's 400."""
    raw = await request.body()
    try:
        return decode_json(raw)
    except JsonDecodeError as exc:
        raise dialect_of(request).invalid_json(str(exc)) from None


def idempotency_key(request: Request, refuse: Callable[[str], Exception]) -> str | None:
    """The Idempotency-Key header, if sent; `refuse(message)` when it is empty or too long."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not key or len(key) > MAX_IDEMPOTENCY_KEY:
        raise refuse(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
    return key


async def create_idempotently(
    request: Request,
    sandbox: SandboxCore,
    account_key: str,
    key: str | None,
    payload: Any,
    handle: Callable[[], Awaitable[StoredResponse]],
    *,
    keep: Callable[[int], bool],
    mismatch: Exception,
    in_flight: Exception,
    droppable: Callable[[int], bool],
    fault_scope_key: str,
) -> Response:
    """Run a creation under `key` (see `run_idempotently`) and answer it.

    The drop fault may hit a fresh answer whose status is `droppable`, never a
    replay, so a retry with the same key always gets the committed answer; the
    fault is noted in `scope[fault_scope_key]` for the request log.
    """
    stored, replayed = await run_idempotently(
        sandbox.idempotency,
        account_key,
        key,
        lambda: fingerprint("POST", request.url.path, payload),
        handle,
        keep=keep,
        mismatch=mismatch,
        in_flight=in_flight,
    )
    if not replayed and droppable(stored.status_code) and sandbox.faults.roll("drop"):
        request.scope[fault_scope_key] = "drop"
        return DroppedResponse(stored.body, stored.status_code, stored.headers)
    return stored_as_response(stored, replayed=replayed)
