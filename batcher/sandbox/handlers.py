"""Request handling both sandboxes share: the JSON body, the Idempotency-Key
header, and answering a creation run under that key (with the drop fault).

Errors are raised through the app's `Dialect`, or given by the caller, so each
provider keeps its contract's wording and status codes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from batcher.sandbox.asgi import sleep_deferred_latency
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
Item = TypeVar("Item")


async def read_json(request: Request) -> Any:
    """The body as JSON (numbers as Decimal), or the provider's 400."""
    raw = await request.body()
    try:
        return decode_json(raw)
    except JsonDecodeError as exc:
        raise dialect_of(request).invalid_json(str(exc)) from None


def found(item: Item | None, missing: Exception) -> Item:
    """`item`, or `missing` raised when there is none (a lookup's 404)."""
    if item is None:
        raise missing
    return item


def idempotency_key(request: Request, refuse: Callable[[str], Exception]) -> str | None:
    """The Idempotency-Key header, if sent; `refuse(message)` when it is empty or too long."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not key or len(key) > MAX_IDEMPOTENCY_KEY:
        raise refuse(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
    return key


@dataclass(frozen=True)
class CreationRules:
    """How one provider's creation endpoint treats its Idempotency-Key."""

    refuse_key: Callable[[str], Exception]  # an empty or too long key, from its message
    keep: Callable[[Any, int], bool]  # (sandbox, status): store this answer for replays?
    mismatch: Exception  # the key again with a different payload
    in_flight: Exception  # the key again while its first request still runs
    droppable: Callable[[int], bool]  # the fresh answers the drop fault may hit


async def create_idempotently(
    request: Request,
    rules: CreationRules,
    answer: Callable[[Any, Any, Any, str | None], StoredResponse],
) -> Response:
    """Read the body and the Idempotency-Key, run `answer(sandbox, account, payload, key)`
    under the key (see `run_idempotently`) and answer what it stored. The account is the
    one the gate put in `scope["<provider>.account"]`.

    The latency the gate deferred is slept inside the idempotency window on purpose,
    before `answer`, which must not await (it checks and changes state atomically).
    The drop fault may hit a fresh answer whose status is droppable, never a replay,
    so a retry with the same key always gets the committed answer; the fault is
    noted in `scope["<provider>.fault"]` for the request log.
    """
    payload = await read_json(request)
    key = idempotency_key(request, rules.refuse_key)
    provider = dialect_of(request).provider
    sandbox: SandboxCore = request.app.state.sandbox
    account = request.scope[f"{provider}.account"]

    async def handle() -> StoredResponse:
        await sleep_deferred_latency(request.scope, f"{provider}.deferred_latency")
        return answer(sandbox, account, payload, key)

    stored, replayed = await run_idempotently(
        sandbox.idempotency,
        account.api_key,
        key,
        lambda: fingerprint("POST", request.url.path, payload),
        handle,
        keep=lambda status: rules.keep(sandbox, status),
        mismatch=rules.mismatch,
        in_flight=rules.in_flight,
    )
    if not replayed and rules.droppable(stored.status_code) and sandbox.faults.roll("drop"):
        request.scope[f"{provider}.fault"] = "drop"
        return DroppedResponse(stored.body, stored.status_code, stored.headers)
    return stored_as_response(stored, replayed=replayed)
