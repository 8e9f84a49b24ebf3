"""Where the ledger lives: a `sqlite:///path` file or a `postgresql://` database.

The URL may carry a password, so it is a secret: it is kept whole only for the
driver, and shown (logs, reports, errors, `repr`) with the password masked.
Parsing does no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import unquote

from batcher.core.errors import ConfigError

LEDGER_FILE = "ledger.sqlite"
Backend = Literal["sqlite", "postgresql"]

# Where a password can sit in a URL: after "user:" up to the LAST "@" (the widest
# reading: libpq stops at the first "@" or "/", a person may have meant a later one),
# and in a `password=` or `sslpassword=` query parameter.
_USERINFO = re.compile(r"[^:/@]*:(.*)@", re.DOTALL)
# A query password runs to the next "&key=": a piece after a bare "&" (no "=") is taken
# as part of it, as libpq would quote that piece in its error.
_QUERY_PASSWORD = re.compile(
    r"(?:^|[?&])(?:ssl)?password=([^&]*(?:&[^&=]*(?=&|$))*)", re.IGNORECASE | re.DOTALL
)
# A value libpq or psycopg quotes in a message: "x" or 'x'.
_QUOTED = re.compile(r"\"([^\"]*)\"|'([^']*)'")
MASK = "***"


def _password_spans(url: str) -> list[tuple[int, int]]:
    spans = [m.span(1) for m in _QUERY_PASSWORD.finditer(url) if m.group(1)]
    scheme = url.find("://")
    userinfo = _USERINFO.match(url, scheme + 3 if scheme >= 0 else 0)
    if userinfo is not None and userinfo.group(1):
        spans.append(userinfo.span(1))
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def mask_url(url: str) -> str:
    """The URL with any password (user:PASSWORD@, ?password=, ?sslpassword=) replaced by
    ***. Everything from "user:" to the last "@" counts as the password, so a password
    holding "@", "/", "?" or "#" is masked whole, however a driver would read it."""
    for start, end in reversed(_password_spans(url)):
        url = url[:start] + MASK + url[end:]
    return url


def url_secrets(url: str) -> tuple[str, ...]:
    """Every text in `url` that may be a password, as written and percent-decoded."""
    found: set[str] = set()
    for start, end in _password_spans(url):
        found.update((url[start:end], unquote(url[start:end])))
    return tuple(sorted((s for s in found if s), key=len, reverse=True))


def scrub(text: str, secrets: Iterable[str], keep: Iterable[str] = ()) -> str:
    """`text` (a driver's message) with every secret masked: each whole, and any quoted
    value that is a piece of one (a driver may quote just the part of a password it
    took for a host or a port), except the plain names in `keep` (user, host, ...)."""
    secrets = [s for s in secrets if s]
    if not secrets:
        return text
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    kept = set(keep)

    def quoted(match: re.Match[str]) -> str:
        value = match.group(1) if match.group(1) is not None else match.group(2)
        if value and value not in kept and any(value in s for s in secrets):
            return match.group(0)[0] + MASK + match.group(0)[0]
        return match.group(0)

    return _QUOTED.sub(quoted, text)


def check_unambiguous(url: str, where: str | None = "--ledger") -> None:
    """Refuse a PostgreSQL URL whose user name or password libpq would read differently
    from how it is written: libpq ends them at the first "@" or "/", and would take the
    rest of a password for the host, port or database, and echo it in its errors."""
    rest = url.split("://", 1)[-1]
    at = rest.find("@")
    if at < 0:
        return
    slash = rest.find("/")
    if rest.count("@") > 1 or (0 <= slash < at):
        raise ConfigError(
            f"{where + ': ' if where else ''}the PostgreSQL ledger URL {mask_url(url)}"
            " cannot be read as written:"
            " it has more than one '@', or an '@' after a '/', and PostgreSQL ends the user"
            " name and password at the first '@' or '/'",
            hint="percent-encode '@' as %40 and '/' as %2F in the user name, the password"
            " and the rest of the URL; only the '@' before the host stays as it is."
            " Better: keep the password out of the URL (PGPASSWORD or ~/.pgpass)",
        )


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
        check_unambiguous(value, where)
        return LedgerLocation("postgresql", value)
    scheme = value.split("://", 1)[0] if "://" in value else ""
    raise ConfigError(
        f"{where}: unsupported ledger URL"
        + (f" scheme {scheme!r}" if scheme else f" {mask_url(value)!r}"),
        hint="use sqlite:///path/to/ledger.sqlite or postgresql://user@host/db",
    )
