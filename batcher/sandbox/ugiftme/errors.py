"""The UGiftMe error answer."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answer with the contract's JSON shape."""

    def __init__(self, status_code: int, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.status_code = status_code
        self.body: dict[str, Any] = {"error": error, **extra}
