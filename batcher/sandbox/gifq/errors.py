"""The GIFQ error answer: ``{"message", "status": "error"}``, plus ``request_id`` on a 422."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from batcher.sandbox.dialect import SandboxError


class ApiError(SandboxError):
    """An error answer with the contract's shape: {"message", "status": "error"}."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(status_code, message)
        self.message = message

    def body(self, request_id: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message, "status": "error"}
        if self.status_code == 422 and request_id is not None:
            body["request_id"] = request_id
        return body

    def render(self, request: Request) -> dict[str, Any]:
        body = self.body(request_id_of(request))
        account = request.scope.get("gifq.account")  # set on API calls only
        if account is not None:
            body["message"] = request.app.state.sandbox.faults.echo(self.message, account.api_key)
        return body


def request_id_of(request: Request) -> str | None:
    """The id the gate gave this API call (None on a control call)."""
    request_id: str | None = request.scope.get("gifq.request_id")
    return request_id
