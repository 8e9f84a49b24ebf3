"""Webhook evidence: every delivery the receiver saw, kept beside the ledger.

The `webhook_events` table lives in the ledger's database file but is created
by its own `CREATE TABLE IF NOT EXISTS`, so the listener can open a state
directory no run has touched yet. The listener and `batcher run` are separate
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
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from batcher.core.clock import utc_now
from batcher.core.errors import ConfigError

SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_events (
    id INTEGER PRIMARY KEY,
    delivery_key TEXT UNIQUE,        -- sha256 of the raw body; NULL when rejected
    provider TEXT NOT NULL,
    verdict TEXT NOT NULL,           -- accepted | rejected
    reason TEXT,                     -- why it was rejected
    event TEXT,
    request_id TEXT,
    status TEXT,
    terminal INTEGER NOT NULL DEFAULT 0,
    order_ids TEXT,                  -- JSON array
    payload TEXT,                    -- redacted JSON; NULL when rejected
    received_at TEXT NOT NULL,
    last_received_at TEXT NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS webhook_events_by_request ON webhook_events(request_id, terminal);
"""
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

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(
                path, isolation_level=None, timeout=_BUSY_TIMEOUT_MS / 1000, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL: in WAL mode a commit survives a crash of the process, not a power
            # cut. Evidence is not the source of truth: an event lost that way is
            # settled by the fallback poll, and the receiver answers sooner.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            self._db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the webhook evidence in {path}: {exc}") from None
        self._db.row_factory = sqlite3.Row
        self.path = path

    @classmethod
    def open(cls, state_dir: Path) -> WebhookEvents:
        return cls(state_dir / "ledger.sqlite")  # the ledger's own file

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")

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
            "SELECT COALESCE(SUM(verdict = 'accepted'), 0) AS accepted,"
            " COALESCE(SUM(verdict = 'rejected'), 0) AS rejected,"
            " COALESCE(SUM(deliveries - 1), 0) AS repeats FROM webhook_events"
        ).fetchone()
        return {"accepted": row["accepted"], "rejected": row["rejected"], "repeats": row["repeats"]}

    def orphans(self, limit: int = MAX_LISTED) -> list[StoredEvent]:
        """Order events for an order request that no batch in this ledger sent."""
        rows = self._db.execute(
            f"SELECT * FROM webhook_events WHERE {self._orphan_filter()} ORDER BY id LIMIT ?",
            (limit,),
        )
        return [_stored(r) for r in rows]

    def orphan_count(self) -> int:
        row = self._db.execute(f"SELECT COUNT(*) FROM webhook_events WHERE {self._orphan_filter()}")
        return int(row.fetchone()[0])

    def _orphan_filter(self) -> str:
        has_chunks = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'chunks'"
        ).fetchone()
        unknown = (
            " AND request_id NOT IN (SELECT request_id FROM chunks WHERE request_id IS NOT NULL)"
        )
        return "verdict = 'accepted' AND request_id IS NOT NULL" + (unknown if has_chunks else "")


def _stored(row: sqlite3.Row) -> StoredEvent:
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
