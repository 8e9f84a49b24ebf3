"""The UGiftMe error answer: ``{"error": ..., **details}``."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from batcher.sandbox.dialect import SandboxError


class ApiError(SandboxError):
    """An error answer with the contract's JSON shape."""

    def __init__(self, status_code: int, error: str, **extra: Any) -> None:
        super().__init__(status_code, error)
        self.body: dict[str, Any] = {"error": error, **extra}

    def render(self, request: Request) -> dict[str, Any]:
        return self.body


def invalid(message: str) -> ApiError:
    """The contract's 400 for a malformed input."""
    return ApiError(400, "Validation failed", message=message)
