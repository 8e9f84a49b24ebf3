"""Idempotency keys: per-scope records with a TTL, payload fingerprints and
in-flight marks, and `run_idempotently`, the flow both sandboxes' creations use.

Synchronous on purpose, like all sandbox state: a check-and-mark never yields.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from starlette.responses import Response

from batcher.sandbox.common import Clock
from batcher.sandbox.jsonio import canonical_json


@dataclass
class StoredResponse:
    status_code: int
    body: bytes
    headers: dict[str, str]


@dataclass
class IdempotencyRecord:
    fingerprint: str
    created_at: float
    response: StoredResponse | None = None  # None while the first request is in flight

    @property
    def in_flight(self) -> bool:
        return self.response is None


class IdemOutcome(Enum):
    STARTED = "started"  # the caller owns the key now and must finish or abandon it
    REPLAY = "replay"
    MISMATCH = "mismatch"
    IN_FLIGHT = "in_flight"


@dataclass(frozen=True)
class IdemBegin:
    outcome: IdemOutcome
    response: StoredResponse | None = None


def fingerprint(method: str, path: str, payload: Any) -> str:
    """Hash of the route and the canonical payload; equal JSON values hash equal."""
    digest = hashlib.sha256()
    digest.update(f"{method.upper()} {path}\n".encode())
    digest.update(canonical_json(payload))
    return digest.hexdigest()


class IdempotencyStore:
    """Idempotency keys scoped per account (API key), kept for `ttl_seconds` from first use.

    A payload mismatch is checked before the in-flight state: a different payload
    is a definite client error even while the first request is still running.
    """

    PURGE_EVERY = 1024  # begins between sweeps of expired records

    def __init__(self, ttl_seconds: float, clock: Clock = time.monotonic) -> None:
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._records: dict[tuple[str, str], IdempotencyRecord] = {}
        self._begins = 0

    def begin(self, scope: str, key: str, print_: str) -> IdemBegin:
        self._begins += 1
        if self._begins % self.PURGE_EVERY == 0:
            self.purge_expired()  # keeps a long-running sandbox's memory flat
        now = self._clock()
        record = self._live_record(scope, key, now)
        if record is None:
            self._records[(scope, key)] = IdempotencyRecord(fingerprint=print_, created_at=now)
            return IdemBegin(IdemOutcome.STARTED)
        if record.fingerprint != print_:
            return IdemBegin(IdemOutcome.MISMATCH)
        if record.response is None:
            return IdemBegin(IdemOutcome.IN_FLIGHT)
        return IdemBegin(IdemOutcome.REPLAY, record.response)

    def complete(self, scope: str, key: str, response: StoredResponse) -> None:
        record = self._records.get((scope, key))
        if record is not None and record.response is None:
            record.response = response

    def abandon(self, scope: str, key: str) -> None:
        """Forget an in-flight key, so a retry is handled afresh (used for 5xx)."""
        record = self._records.get((scope, key))
        if record is not None and record.response is None:
            del self._records[(scope, key)]

    def _live_record(self, scope: str, key: str, now: float) -> IdempotencyRecord | None:
        record = self._records.get((scope, key))
        if record is None:
            return None
        if record.response is not None and now >= record.created_at + self.ttl_seconds:
            del self._records[(scope, key)]
            return None
        return record

    def purge_expired(self) -> int:
        now = self._clock()
        expired = [
            k
            for k, r in self._records.items()
            if r.response is not None and now >= r.created_at + self.ttl_seconds
        ]
        for k in expired:
            del self._records[k]
        return len(expired)

    def in_flight_keys(self) -> list[str]:
        """Keys whose first request is still running, in any scope (for tests)."""
        return [key for (_, key), record in list(self._records.items()) if record.in_flight]

    def keys_for(self, scope: str) -> list[str]:
        return [key for (owner, key) in self._records if owner == scope]

    def clear(self) -> None:
        self._records.clear()


def stored_as_response(stored: StoredResponse, *, replayed: bool) -> Response:
    headers = dict(stored.headers)
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return Response(stored.body, status_code=stored.status_code, headers=headers)


async def run_idempotently(
    store: IdempotencyStore,
    scope: str,
    key: str | None,
    request_print: Callable[[], str],
    handle: Callable[[], Awaitable[StoredResponse]],
    *,
    keep: Callable[[int], bool],
    mismatch: Exception,
    in_flight: Exception,
) -> tuple[StoredResponse, bool]:
    """Run `handle` under an Idempotency-Key; answers (response, replayed).

    Without a key `handle` simply runs. With one, a stored answer is replayed,
    a different payload (`request_print()`) raises `mismatch` and a request still
    running raises `in_flight`. A fresh answer is stored when `keep(status)`;
    otherwise, or when `handle` raises, the key is forgotten so a retry is
    handled afresh.
    """
    if key is None:
        return await handle(), False
    begun = store.begin(scope, key, request_print())
    if begun.outcome is IdemOutcome.MISMATCH:
        raise mismatch
    if begun.outcome is IdemOutcome.IN_FLIGHT:
        raise in_flight
    if begun.outcome is IdemOutcome.REPLAY:
        assert begun.response is not None
        return begun.response, True
    try:
        stored = await handle()
    except BaseException:
        store.abandon(scope, key)
        raise
    if keep(stored.status_code):
        store.complete(scope, key, stored)
    else:
        store.abandon(scope, key)
    return stored, False
