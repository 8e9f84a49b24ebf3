"""`SecretStr`: a string that never shows itself, as pydantic's, without importing pydantic.

Importing pydantic costs `batcher validate` about a sixth of its start-up; the
settings only need a value that prints as asterisks. The behaviour is pydantic's:
`str()` is ``**********`` (empty for an empty secret), `repr()` is
``SecretStr('**********')``, and only `get_secret_value()` gives the value.

Code that accepts a secret takes any object with `get_secret_value()` (`Secret`), so a
caller's own `pydantic.SecretStr` still works.
"""

from __future__ import annotations

from typing import Protocol


class Secret(Protocol):
    def get_secret_value(self) -> str: ...


class SecretStr:
    __slots__ = ("_secret_value",)

    def __init__(self, secret_value: str) -> None:
        self._secret_value = secret_value

    def get_secret_value(self) -> str:
        return self._secret_value

    def __str__(self) -> str:
        return "**********" if self._secret_value else ""

    def __repr__(self) -> str:
        return f"SecretStr({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretStr) and self.get_secret_value() == other.get_secret_value()

    def __hash__(self) -> int:
        return hash(self._secret_value)

    def __len__(self) -> int:
        return len(self._secret_value)
