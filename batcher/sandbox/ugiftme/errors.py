"""The UGiftMe error answer: ``{"error": ..., **details}``."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from batcher.sandbox.common import FaultInjector
from batcher.sandbox.dialect import SandboxError


class ApiError(SandboxError):
    """An error answer with the contract's JSON shape."""

    def __init__(self, status_code: int, error: str, **extra: Any) -> None:
        super().__init__(status_code, error)
        self.body: dict[str, Any] = {"error": error, **extra}

    def render(self, request: Request) -> dict[str, Any]:
        account = request.scope.get("ugiftme.account")  # set on API calls only
        if account is None:
            return self.body
        return echoed(self.body, request.app.state.sandbox.faults, account.api_key)


def echoed(body: dict[str, Any], faults: FaultInjector, api_key: str) -> dict[str, Any]:
    """The body with its detail (`message`, else `error`) run through the
    echo-credentials fault."""
    name = "message" if isinstance(body.get("message"), str) else "error"
    return {**body, name: faults.echo(str(body[name]), api_key)}


def invalid(message: str) -> ApiError:
    """The contract's 400 for a malformed input."""
    return ApiError(400, "Validation failed", message=message)
