"""How one provider's sandbox words its answers, for the logic both sandboxes share.

The shared request, control and app helpers never build an error body themselves:
they raise through the app's `Dialect` (`app.state.dialect`), so each provider keeps
its contract's exact error shapes and header names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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


# A settings change's reader: (request, control body, JSON name) -> the value to set,
# or the provider's 400.
SettingReader = Callable[[Request, Mapping[str, Any], str], Any]
# A setting PATCH /config may change: the sandbox attribute (dotted for a part's
# attribute: "idempotency.ttl_seconds") and its reader.
Setting = tuple[str, SettingReader]


@dataclass(frozen=True)
class Dialect:
    provider: str
    api_root: str
    # Headers naming an account on a control call, the first present one wins.
    token_headers: tuple[str, ...]
    fault_kinds: tuple[str, ...]
    invalid: Callable[[str], SandboxError]  # a malformed input (control or query), 400
    invalid_json: Callable[[str], SandboxError]  # a body that is not JSON, 400
    unknown_account: Callable[[], SandboxError]  # a control call naming no such account
    account_required: Callable[[int], SandboxError]  # several accounts and none named
    routing_error: Callable[[str], dict[str, Any]]  # the body of a routing 404/405
    # The provider-only settings: GET /config's part, from the sandbox state, and what
    # PATCH /config may change (JSON name -> sandbox attribute and its reader).
    settings_json: Callable[[Any], dict[str, Any]]
    settings: Mapping[str, Setting]
    counts: Callable[[Sequence[Any]], dict[str, int]]  # the stats counters of these accounts


def dialect_of(request: Request) -> Dialect:
    dialect: Dialect = request.app.state.dialect
    return dialect
