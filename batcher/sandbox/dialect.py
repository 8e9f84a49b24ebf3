"""How one provider's sandbox words its answers, for the logic both sandboxes share.

The shared request, control and app helpers never build an error body themselves:
they raise through the app's `Dialect` (`app.state.dialect`), so each provider keeps
its contract's exact error shapes and header names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request


class SandboxError(Exception):
    """An error answer; each provider's subclass renders it in its contract's shape."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code

    def render(self, request: Request) -> dict[str, Any]:
        raise NotImplementedError


@dataclass(frozen=True)
class Dialect:
    provider: str
    # Headers naming an account on a control call, the first present one wins.
    token_headers: tuple[str, ...]
    fault_kinds: tuple[str, ...]
    invalid: Callable[[str], SandboxError]  # a malformed input (control or query), 400
    invalid_json: Callable[[str], SandboxError]  # a body that is not JSON, 400
    unknown_account: Callable[[], SandboxError]  # a control call naming no such account
    account_required: Callable[[int], SandboxError]  # several accounts and none named
    routing_error: Callable[[str], dict[str, Any]]  # the body of a routing 404/405
    config_json: Callable[[Any], dict[str, Any]]  # GET /config, from the sandbox state
    counts: Callable[[Sequence[Any]], dict[str, int]]  # the stats counters of these accounts


def dialect_of(request: Request) -> Dialect:
    dialect: Dialect = request.app.state.dialect
    return dialect
