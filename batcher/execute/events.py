"""What a run tells its listener beyond `message` and `advance`.

`RunListener` (runner.py) is the minimal contract, and library callers and tests
implement just that. A listener may also implement the hooks below (the CLI's
does): the start of the run, the start of each phase, a chunk sent, a retry.
`emit` calls a hook only when the listener has it, so a minimal listener keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RunStart:
    """Everything an on-call engineer needs to know which run a log line belongs to."""

    batch: str
    run_id: str
    sheet: str
    sheet_sha256: str
    provider: str
    account_id: str
    ledger: str


@dataclass(frozen=True)
class Retry:
    """A send with no definite answer, about to be repeated with the same key and bytes."""

    chunk_key: str
    attempt: int
    max_attempts: int
    reason: str
    delay_seconds: float


#: run phases, in order; the listener shows progress per phase. VALIDATE is announced
#: by the caller (the CLI), since it starts before the run has a listener's attention.
VALIDATE = "validate"
SUBMIT = "submit"
POLL = "poll"
RECONCILE = "reconcile"


def emit(listener: Any, hook: str, *args: Any) -> None:
    """Call `listener.<hook>(*args)` when the listener implements that hook."""
    method = getattr(listener, hook, None)
    if callable(method):
        method(*args)
