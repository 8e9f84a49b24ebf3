"""Webhook evidence: every delivery the receiver saw, kept beside the ledger.

The `webhook_events` table lives in the ledger's database. On SQLite it is
created by its own `CREATE TABLE IF NOT EXISTS`, so the listener can open a
state directory no run has touched yet; on PostgreSQL it is part of the
migrated schema (`batcher ledger migrate`). The listener and `batcher run` are separate
processes writing the same file: WAL lets readers and one writer proceed
together, and `busy_timeout` makes the other writer wait instead of failing.
Each write is one short transaction.

A delivery is identified by the SHA-256 of its raw body: the provider resends
exactly the same bytes on a retry or a duplicate, so a repeat only raises the
row's `deliveries` count. Rejected deliveries are kept too (unsigned, forged,
oversized, malformed) with the reason, but never their body: it is untrusted.
Payloads are stored already redacted (voucher codes cut to 4 characters).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection
from contextlib import AbstractContextManager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from batcher.core.clock import utc_now
from batcher.core.errors import ConfigError
from batcher.ledger.backend import Database, Row, connect, write_begin, write_transaction
from batcher.ledger.location import LedgerLocation
from batcher.ledger.schema import SCHEMA_VERSION, WEBHOOK_SCHEMA, statements

_BUSY_TIMEOUT_MS = 30_000
# The list a reader returns is capped so a flood of forgeries cannot exhaust memory.
MAX_LISTED = 10_000


@dataclass(frozen=True)
class StoredEvent:
    id: int
    provider: str
    verdict: str
    reason: str | None
    event: str | None
    request_id: str | None
    status: str | None
    order_ids: tuple[str, ...]
    received_at: str
    deliveries: int


class WebhookEvents:
    """The evidence table, on its own connection (one per process and thread)."""

    def __init__(self, where: Path | LedgerLocation) -> None:
        location = where if isinstance(where, LedgerLocation) else LedgerLocation.sqlite_file(where)
        self.location = location
        self.path = location.path  # the SQLite file; None on PostgreSQL
        self._begin = write_begin(location.backend)
        if location.path is None:
            from batcher.ledger.postgres import PostgresDatabase  # psycopg loads only when used

            # Keepalives: a silent network cut breaks a waiting write within about half a
            # minute. lock_timeout: a write waits for the run's write lock no longer than
            # SQLite's busy timeout lets it; the receiver's one writer thread is not held.
            self._db: Database = PostgresDatabase(location, keepalives=True)
            self._db.execute(f"SET lock_timeout = '{_BUSY_TIMEOUT_MS}ms'")
            self._require_schema()
            return
        try:
            self._db = connect(location, timeout=_BUSY_TIMEOUT_MS / 1000, same_thread_only=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL: in WAL mode a commit survives a crash of the process, not a power
            # cut. Evidence is not the source of truth: an event lost that way is
            # settled by the fallback poll, and the receiver answers sooner.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            for statement in statements(WEBHOOK_SCHEMA):
                self._db.execute(statement)
        except sqlite3.Error as exc:
            raise ConfigError(
                f"cannot open the webhook evidence in {location.shown}: {exc}"
            ) from None

    def _require_schema(self) -> None:
        try:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except Exception:  # no meta table: a database never migrated
            row = None
        if row is None or int(row[0]) != SCHEMA_VERSION:
            self._db.close()
            raise ConfigError(
                f"the ledger at {self.location.shown} is not at schema {SCHEMA_VERSION}",
                hint="run `batcher ledger migrate --ledger URL` once",
            )

    @classmethod
    def open(cls, state_dir: Path, location: LedgerLocation | None = None) -> WebhookEvents:
        """The evidence in the ledger's own database."""
        return cls(location or LedgerLocation.in_state_dir(state_dir))

    def close(self) -> None:
        self._db.close()

    def _tx(self) -> AbstractContextManager[Database]:
        return write_transaction(self._db, self._begin)

    # ------------------------------------------------------------------ writes

    def record(
        self,
        provider: str,
        delivery_key: str,
        *,
        event: str,
        request_id: str | None,
        status: str | None,
        terminal: bool,
        order_ids: Collection[str],
        payload: str,
    ) -> bool:
        """Keep one verified delivery; False when this delivery was already kept."""
        now = utc_now()
        with self._tx() as db:
            cursor = db.execute(
                "INSERT INTO webhook_events(delivery_key, provider, verdict, event, request_id,"
                " status, terminal, order_ids, payload, received_at, last_received_at)"
                " VALUES (?, ?, 'accepted', ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(delivery_key) DO NOTHING",
                (
                    delivery_key, provider, event, request_id, status, int(terminal),
                    json.dumps(list(order_ids)), payload, now, now,
                ),
            )  # fmt: skip
            if cursor.rowcount == 1:
                return True
            db.execute(
                "UPDATE webhook_events SET deliveries = deliveries + 1, last_received_at = ?"
                " WHERE delivery_key = ?",
                (now, delivery_key),
            )
        return False

    def record_rejected(self, provider: str, reason: str, event: str | None) -> None:
        now = utc_now()
        with self._tx() as db:
            db.execute(
                "INSERT INTO webhook_events(provider, verdict, reason, event, received_at,"
                " last_received_at) VALUES (?, 'rejected', ?, ?, ?, ?)",
                (provider, reason, (event or "")[:64] or None, now, now),
            )

    # ------------------------------------------------------------------ reads

    def terminal_payloads(self, request_ids: Collection[str]) -> dict[str, dict[str, Any]]:
        """The first terminal event's (redacted) payload for each of these order requests."""
        found: dict[str, dict[str, Any]] = {}
        ids = list(request_ids)
        for start in range(0, len(ids), 500):  # SQLite's bound-parameter limit
            part = ids[start : start + 500]
            marks = ",".join("?" * len(part))
            for row in self._db.execute(
                f"SELECT request_id, payload FROM webhook_events WHERE terminal = 1"
                f" AND verdict = 'accepted' AND request_id IN ({marks}) ORDER BY id",
                part,
            ):
                if row["request_id"] not in found:  # money stays Decimal, never float
                    found[row["request_id"]] = json.loads(row["payload"], parse_float=Decimal)
        return found

    def listing(self, *, verdict: str | None = None, limit: int = MAX_LISTED) -> list[StoredEvent]:
        where = "WHERE verdict = ?" if verdict else ""
        params: tuple[Any, ...] = (verdict, limit) if verdict else (limit,)
        rows = self._db.execute(
            f"SELECT * FROM webhook_events {where} ORDER BY id DESC LIMIT ?", params
        )
        return [_stored(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """accepted, rejected, and repeated deliveries (duplicates and retries)."""
        row = self._db.execute(
            "SELECT COALESCE(SUM(CASE WHEN verdict = 'accepted' THEN 1 ELSE 0 END), 0)"
            " AS accepted,"
            " COALESCE(SUM(CASE WHEN verdict = 'rejected' THEN 1 ELSE 0 END), 0) AS rejected,"
            " COALESCE(SUM(deliveries - 1), 0) AS repeats FROM webhook_events"
        ).fetchone()
        return {k: int(row[k]) for k in ("accepted", "rejected", "repeats")}

    def orphans(
        self,
        limit: int = MAX_LISTED,
        *,
        provider: str | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> list[StoredEvent]:
        """Order events for an order request that no batch in this ledger sent; only
        `provider`'s, and only those first received within [`since`, `until`] (UTC text),
        when given."""
        where, params = self._orphan_filter(), []
        if provider is not None:
            where += " AND provider = ?"
            params.append(provider)
        if since is not None:
            where += " AND received_at >= ?"
            params.append(since)
        if until is not None:
            where += " AND received_at <= ?"
            params.append(until)
        rows = self._db.execute(
            f"SELECT * FROM webhook_events WHERE {where} ORDER BY id LIMIT ?", (*params, limit)
        )
        return [_stored(r) for r in rows]

    def orphan_count(self) -> int:
        row = self._db.execute(f"SELECT COUNT(*) FROM webhook_events WHERE {self._orphan_filter()}")
        return int(row.fetchone()[0])

    def _orphan_filter(self) -> str:
        has_chunks = (
            self.location.backend == "postgresql"  # the migrated schema has every table
            or self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'chunks'"
            ).fetchone()
        )
        unknown = (
            " AND request_id NOT IN (SELECT request_id FROM chunks WHERE request_id IS NOT NULL)"
        )
        return "verdict = 'accepted' AND request_id IS NOT NULL" + (unknown if has_chunks else "")


def _stored(row: Row) -> StoredEvent:
    return StoredEvent(
        id=row["id"],
        provider=row["provider"],
        verdict=row["verdict"],
        reason=row["reason"],
        event=row["event"],
        request_id=row["request_id"],
        status=row["status"],
        order_ids=tuple(json.loads(row["order_ids"] or "[]")),
        received_at=row["received_at"],
        deliveries=row["deliveries"],
    )
