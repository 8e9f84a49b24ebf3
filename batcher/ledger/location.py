"""Where the ledger lives: a `sqlite:///path` file or a `postgresql://` database.

The URL may carry a password, so it is a secret: it is kept whole only for the
driver, and shown (logs, reports, errors, `repr`) with the password masked.
Parsing does no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from batcher.core.errors import ConfigError

LEDGER_FILE = "ledger.sqlite"
Backend = Literal["sqlite", "postgresql"]

# libpq reads everything up to the last "@" before the host as user info, "?" and "#"
# included, so only "@" or "/" ends the password.
_USERINFO_PASSWORD = re.compile(r"(://[^:/@]*:)([^@/]*)(@)")
_QUERY_PASSWORD = re.compile(r"((?:^|[?&\s])password=)([^&\s]*)", re.IGNORECASE)


def mask_url(url: str) -> str:
    """The URL with any password (user:PASSWORD@ or ?password=) replaced by ***."""
    return _QUERY_PASSWORD.sub(r"\1***", _USERINFO_PASSWORD.sub(r"\1***\3", url))


@dataclass(frozen=True)
class LedgerLocation:
    backend: Backend
    url: str = field(repr=False)  # may hold a password: never shown, see `shown`
    path: Path | None = None  # the SQLite file

    @property
    def shown(self) -> str:
        """What may be printed: the file's path, or the URL with its password masked."""
        return str(self.path.absolute()) if self.path is not None else mask_url(self.url)

    def __str__(self) -> str:
        return self.shown

    def __repr__(self) -> str:
        return f"LedgerLocation({self.shown!r})"

    @classmethod
    def sqlite_file(cls, path: Path) -> LedgerLocation:
        return cls("sqlite", f"sqlite://{path.absolute()}", path)

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> LedgerLocation:
        """The default: `ledger.sqlite` in the state folder."""
        return cls.sqlite_file(state_dir / LEDGER_FILE)


def parse_ledger_url(text: str, where: str = "--ledger") -> LedgerLocation:
    """`sqlite:///absolute/path` or `postgresql://user@host[:port]/db` (also `postgres://`)."""
    value = text.strip()
    if value.startswith("sqlite://"):
        rest = value.removeprefix("sqlite://")
        if not rest.startswith("/") or rest == "/":
            raise ConfigError(
                f"{where}: a SQLite ledger URL names an absolute file, e.g."
                " sqlite:///var/lib/batcher/ledger.sqlite",
            )
        return LedgerLocation.sqlite_file(Path(rest))
    if value.startswith(("postgresql://", "postgres://")):
        return LedgerLocation("postgresql", value)
    scheme = value.split("://", 1)[0] if "://" in value else ""
    raise ConfigError(
        f"{where}: unsupported ledger URL"
        + (f" scheme {scheme!r}" if scheme else f" {mask_url(value)!r}"),
        hint="use sqlite:///path/to/ledger.sqlite or postgresql://user@host/db",
    )
