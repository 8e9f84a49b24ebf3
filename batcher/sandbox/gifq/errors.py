"""The GIFQ error answer."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answer with the contract's shape: {"message", "status": "error"}."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message

    def body(self, request_id: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message, "status": "error"}
        if self.status_code == 422 and request_id is not None:
            body["request_id"] = request_id
        return body
