"""The PostgreSQL backend: a psycopg 3 connection that looks like `sqlite3.Connection`.

The ledger's SQL is written once with `?` placeholders; here they become
psycopg's `%s` (and a literal `%` becomes `%%`). Rows answer to `r[0]`,
`r["col"]` and `dict(r)` like `sqlite3.Row`. The connection runs in autocommit
mode, as the SQLite one does (`isolation_level=None`): the ledger begins its
transactions itself (see `backend.write_begin`).

The URL is a secret: errors name it with its password masked, and never
repeat the password even if the server's message did.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import lru_cache
from typing import Any

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

from batcher.core.errors import ConfigError
from batcher.ledger.location import LedgerLocation, check_unambiguous, scrub, url_secrets

CONNECT_TIMEOUT_SECONDS = 10


class LedgerUnavailable(ConfigError):
    """The PostgreSQL server cannot be reached, refused us, or the connection broke."""


class PgRow:
    """One result row: by position, by column name, and as a mapping (`dict(row)`)."""

    __slots__ = ("_index", "_values")

    def __init__(self, values: Sequence[Any], index: dict[str, int]) -> None:
        self._values = values
        self._index = index

    def __getitem__(self, key: int | str) -> Any:
        return self._values[self._index[key] if isinstance(key, str) else key]

    def keys(self) -> list[str]:
        return list(self._index)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"PgRow({dict(zip(self._index, self._values, strict=True))!r})"


def _row_factory(cursor: Any) -> Callable[[Sequence[Any]], PgRow]:
    index = {d.name: i for i, d in enumerate(cursor.description or ())}
    return lambda values: PgRow(values, index)


@lru_cache(maxsize=1024)
def to_pyformat(sql: str) -> str:
    """`?` placeholders outside string literals -> `%s`; every literal `%` -> `%%`."""
    out: list[str] = []
    quoted = False
    for char in sql:
        if char == "'":
            quoted = not quoted  # '' inside a literal toggles twice: still quoted
        if char == "%":
            out.append("%%")
        elif char == "?" and not quoted:
            out.append("%s")
        else:
            out.append(char)
    return "".join(out)


class PostgresDatabase:
    """The `backend.Database` interface over one psycopg connection."""

    def __init__(self, location: LedgerLocation, *, keepalives: bool = False) -> None:
        """`keepalives`: TCP keepalives, so a silent network cut breaks the connection
        within about half a minute instead of the system's hours."""
        self.location = location
        # Every reading of the password, taken before libpq sees the URL: libpq's parse
        # errors can quote the URL, the password or a piece of it.
        self._secrets = url_secrets(location.url)
        self._names: tuple[str, ...] = ()
        check_unambiguous(location.url, where=None)
        try:
            parsed = conninfo_to_dict(location.url)
        except psycopg.ProgrammingError as exc:
            raise ConfigError(
                f"the ledger URL {location.shown} is not a valid PostgreSQL URL "
                f"({self._scrub(str(exc))})",
                hint="percent-encode special characters in the user name and password",
            ) from None
        if parsed.get("password"):
            self._secrets = (*self._secrets, str(parsed["password"]))
        # Plain names a message may quote and the operator needs to see, even when a
        # password happens to contain one of them.
        self._names = tuple(
            str(parsed[k]) for k in ("user", "host", "hostaddr", "port", "dbname") if parsed.get(k)
        )
        extra: dict[str, Any] = {}
        if keepalives:
            extra = {
                "keepalives": 1,
                "keepalives_idle": 10,
                "keepalives_interval": 5,
                "keepalives_count": 3,
                "tcp_user_timeout": 30_000,
            }
        try:
            self._conn = psycopg.connect(
                location.url,
                autocommit=True,
                row_factory=_row_factory,
                connect_timeout=CONNECT_TIMEOUT_SECONDS,
                application_name="batcher",
                **extra,
            )
        except psycopg.Error as exc:
            raise self._unavailable("cannot connect to", exc) from None
        # A commit must be durable before the HTTP request it guards leaves, whatever
        # the server's or the role's default says.
        self._conn.execute("SET synchronous_commit TO on")

    def _scrub(self, text: str) -> str:
        """A driver's message fit to show: every reading of the password masked (before
        the text is shortened, so no piece of one survives a cut)."""
        clean = scrub(text, self._secrets, self._names)
        detail = " ".join(clean.split())
        return scrub(detail, self._secrets, self._names)[:300]

    def _unavailable(self, doing: str, exc: BaseException) -> LedgerUnavailable:
        return LedgerUnavailable(
            f"{doing} the PostgreSQL ledger at {self.location.shown}: {self._scrub(str(exc))}",
            hint="check the server, the URL and the credentials (PGPASSWORD or ~/.pgpass)",
        )

    def fileno(self) -> int:
        """The connection's socket, to wait on: the server writes to an idle session
        only to end it (or to notify)."""
        return self._conn.fileno()

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> psycopg.Cursor[Any]:
        try:
            return self._conn.execute(to_pyformat(sql), parameters)
        except psycopg.OperationalError as exc:
            if self._conn.broken or self._conn.closed:
                raise self._unavailable("lost the connection to", exc) from None
            raise

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> psycopg.Cursor[Any]:
        cursor = self._conn.cursor()
        try:
            cursor.executemany(to_pyformat(sql), parameters)
        except psycopg.OperationalError as exc:
            if self._conn.broken or self._conn.closed:
                raise self._unavailable("lost the connection to", exc) from None
            raise
        return cursor

    def stream(self, sql: str, parameters: Sequence[Any] = (), /) -> Iterator[PgRow]:
        """Rows of a query through a server-side cursor, so memory stays bounded; only
        inside a transaction."""
        with self._conn.cursor(name=f"batcher_{uuid.uuid4().hex}") as cursor:
            cursor.itersize = 2000
            cursor.execute(to_pyformat(sql), parameters)
            yield from cursor

    @property
    def in_transaction(self) -> bool:
        status = self._conn.info.transaction_status
        return status in (pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR)

    def close(self) -> None:
        self._conn.close()
