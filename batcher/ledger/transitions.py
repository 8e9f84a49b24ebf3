"""Chunk transitions: planned -> sending -> accepted/unknown -> settled, each committed first."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any, cast

from batcher.core.clock import utc_now
from batcher.core.states import CLAIMING_STATES
from batcher.ledger.backend import Database
from batcher.ledger.connection import INSERT_EVENT, LedgerConnection, _event_detail
from batcher.ledger.location import LedgerLocation
from batcher.ledger.records import ChunkRecord, RowOutcome


class OrderClaimed(RuntimeError):
    """A provider order is already tied to another chunk: recording it again would
    make one order answer for two chunks' rows."""


class LedgerTransitions(LedgerConnection):
    """Moving chunks and their rows through their states."""

    def __init__(self, where: Path | LedgerLocation, *, migrate: bool = False) -> None:
        super().__init__(where, migrate=migrate)
        # Polls not yet written, by chunk: a poll count is a statistic, not a state, so
        # it rides on the chunk's next transition instead of costing a commit of its own.
        self._polls_to_record: dict[str, int] = {}
        # Counted while a commit may run on the runner's other thread (`count_poll` needs
        # no wait for it), so both sides of the count take this lock.
        self._polls_lock = threading.Lock()

    def recover_after_crash(self, batch: str) -> int:
        """A chunk left `sending` by a dead run may or may not have reached the provider."""
        with self._tx() as db:
            keys = [
                r[0]
                for r in db.execute(
                    "SELECT chunk_key FROM chunks WHERE batch = ? AND state = 'sending'", (batch,)
                )
            ]
            for key in keys:
                self._set_chunk_state(db, batch, key, "unknown", row_state="unknown")
                self._event(batch, "chunk_unknown_after_crash", chunk_key=key)
        return len(keys)

    def _set_chunk_state(
        self,
        db: Database,
        batch: str,
        chunk_key: str,
        state: str,
        *,
        row_state: str | None = None,
        **columns: Any,
    ) -> None:
        sets = ["state = ?"] + [f"{c} = ?" for c in columns]
        with self._polls_lock:
            polls = self._polls_to_record.pop(chunk_key, 0)
        db.execute(
            f"UPDATE chunks SET {', '.join(sets)}, poll_count = poll_count + ? WHERE chunk_key = ?",
            (state, *columns.values(), polls, chunk_key),
        )
        if row_state:
            db.execute(
                "UPDATE rows SET state = ?, updated_at = ? WHERE batch = ? AND chunk_key = ?"
                " AND state NOT IN ('succeeded', 'failed')",
                (row_state, utc_now(), batch, chunk_key),
            )

    def mark_sending(self, batch: str, chunk_key: str) -> None:
        """Committed before the HTTP request leaves: a crash now means 'unknown', not 'lost'."""
        now = utc_now()
        with self._tx() as db:
            db.execute(
                "UPDATE chunks SET send_count = send_count + 1, last_sent_at = ?,"
                " first_sent_at = COALESCE(first_sent_at, ?) WHERE chunk_key = ?",
                (now, now, chunk_key),
            )
            self._set_chunk_state(db, batch, chunk_key, "sending", row_state="sending")
            self._event(batch, "chunk_sending", chunk_key=chunk_key)

    def unmark_sending(self, batch: str, chunks: Sequence[ChunkRecord]) -> None:
        """Chunks committed `sending` whose request never left (the run stopped before
        their turn) are planned again, their send figures as they were before
        (`chunks` as read before they were marked). Only for chunks this process
        knows it did not send: the caller's word. A chunk another run has marked since
        (a batch lock lost meanwhile) has a higher send count and is left alone."""
        now = utc_now()
        with self._tx() as db:
            for chunk in chunks:
                changed = db.execute(
                    "UPDATE chunks SET state = 'planned', send_count = ?, first_sent_at = ?,"
                    " last_sent_at = ? WHERE chunk_key = ? AND state = 'sending'"
                    " AND send_count = ?",
                    (chunk.send_count, chunk.first_sent_at, chunk.last_sent_at, chunk.chunk_key,
                     chunk.send_count + 1),
                ).rowcount  # fmt: skip
                if not changed:
                    continue
                db.execute(
                    "UPDATE rows SET state = 'planned', updated_at = ? WHERE batch = ?"
                    " AND chunk_key = ? AND state = 'sending'",
                    (now, batch, chunk.chunk_key),
                )
                self._event(batch, "chunk_unsent", chunk_key=chunk.chunk_key)

    def mark_unknown(self, batch: str, chunk_key: str, reason: str) -> None:
        with self._tx() as db:
            self._set_chunk_state(
                db, batch, chunk_key, "unknown", row_state="unknown", error_message=reason
            )
            self._event(batch, "chunk_unknown", chunk_key=chunk_key, reason=reason)

    def mark_accepted(self, batch: str, chunk_key: str, request_id: str) -> None:
        now = utc_now()
        with self._tx() as db:
            holder = db.execute(
                "SELECT chunk_key FROM chunks WHERE request_id = ? AND chunk_key != ?",
                (request_id, chunk_key),
            ).fetchone()
            if holder is not None:
                raise OrderClaimed(
                    f"provider order {request_id} already belongs to chunk {holder[0]}"
                )
            one_pass = self.backend == "sqlite"
            self._set_chunk_state(
                db,
                batch,
                chunk_key,
                "accepted",
                row_state=None if one_pass else "accepted",
                request_id=request_id,
                accepted_at=now,
                error_message=None,
            )
            if one_pass:
                # One pass over the chunk's rows (each rewritten once, not twice): every
                # row gets the order request; those not settled yet (a resent chunk's
                # rows an incomplete answer settled stay as they are) become `accepted`.
                # PostgreSQL keeps the two statements: the planner's estimates on a
                # fresh ledger, and so its plans for the next chunks' statements, follow
                # the table's churn (tests/test_ledger_plans_pg.py).
                db.execute(
                    "UPDATE rows SET order_request_id = ?,"
                    " state = CASE WHEN state IN ('succeeded', 'failed') THEN state"
                    " ELSE 'accepted' END,"
                    " updated_at = CASE WHEN state IN ('succeeded', 'failed')"
                    " THEN updated_at ELSE ? END"
                    " WHERE batch = ? AND chunk_key = ?",
                    (request_id, now, batch, chunk_key),
                )
            else:
                db.execute(
                    "UPDATE rows SET order_request_id = ? WHERE batch = ? AND chunk_key = ?",
                    (request_id, batch, chunk_key),
                )
            self._event(batch, "chunk_accepted", chunk_key=chunk_key, request_id=request_id)

    def count_poll(self, chunk_key: str) -> None:
        with self._polls_lock:
            self._polls_to_record[chunk_key] = self._polls_to_record.get(chunk_key, 0) + 1

    def settle_chunk(
        self,
        batch: str,
        chunk_key: str,
        chunk_state: str,
        outcomes: Sequence[RowOutcome],
        *,
        error_code: str | None = None,
        error_message: str | None = None,
    ) -> None:
        """Record a definite answer for a chunk and each of its rows, atomically."""
        now = utc_now()
        with self._tx() as db:
            self._set_chunk_state(
                db,
                batch,
                chunk_key,
                chunk_state,
                finished_at=now,
                error_code=error_code,
                error_message=error_message,
            )
            # One statement per kind of row, run over the whole chunk.
            for release in (False, True):
                db.executemany(
                    _SETTLE_RELEASED_ROW if release else _SETTLE_ROW,
                    [
                        _settle_values(out, now, chunk_key, batch)
                        for out in outcomes
                        if bool(out.release) == release
                    ],
                )
            # A row that failed or goes back to pending no longer holds its reference.
            self._release_claims(
                db, batch, [out.row_key for out in outcomes if out.state not in CLAIMING_STATES]
            )
            # One clock reading for the chunk's rows' events, as for their `updated_at`.
            run_id = self.run_id
            db.executemany(
                INSERT_EVENT,
                [
                    (now, batch, run_id, "row_settled", chunk_key, out.row_key,
                     settled_detail(out.state, out.error_code, out.order_id))
                    for out in outcomes
                ],
            )  # fmt: skip
            self._event(batch, "chunk_settled", chunk_key=chunk_key, state=chunk_state)


_json_string = cast(Callable[[str], str], encode_basestring_ascii)


def settled_detail(state: Any, code: Any, order_id: Any) -> str:
    """A `row_settled` event's detail, as the ledger's events encode theirs (JSON with
    sorted keys, `connection._event_detail`), spelled out: a chunk's settle writes one
    per row on the runner's commit thread, beside the polls it races for the GIL."""
    values = (code, order_id, state)
    if all(v is None or type(v) is str for v in values):
        code_, order_, state_ = ("null" if v is None else _json_string(v) for v in values)
        return f'{{"code": {code_}, "order_id": {order_}, "state": {state_}}}'
    return _event_detail({"state": state, "code": code, "order_id": order_id})


_SETTLE_SETS = (
    "UPDATE rows SET state = ?, failure_kind = ?, error_code = ?,"
    " error_message = ?, provider_request_id = ?, order_id = ?,"
    " transaction_id = ?, cost = ?, cost_currency = ?, voucher_last4 = ?,"
    " provider_status = ?, updated_at = ?,"
    " succeeded_at = CASE WHEN ? = 'succeeded' THEN ? ELSE succeeded_at END"
)
#: A row that keeps its chunk: chunk_key is not in the SET list, so its index entry
#: (rows_by_chunk) is left alone.
_SETTLE_ROW = _SETTLE_SETS + " WHERE batch = ? AND row_key = ?"
#: A row released for retry leaves its chunk and starts its next attempt in a retry
#: group named by this chunk.
_SETTLE_RELEASED_ROW = (
    _SETTLE_SETS + ", chunk_key = NULL, attempt = attempt + 1, retry_group = ?"
    " WHERE batch = ? AND row_key = ?"
)


def _settle_values(out: RowOutcome, now: str, chunk_key: str, batch: str) -> tuple[Any, ...]:
    """The parameters of _SETTLE_ROW (or _SETTLE_RELEASED_ROW) for one row."""
    return (
        out.state,
        out.failure_kind,
        out.error_code,
        out.error_message,
        out.provider_request_id,
        out.order_id,
        out.transaction_id,
        None if out.cost is None else str(out.cost),
        out.cost_currency,
        out.voucher_last4,
        out.provider_status,
        now,
        out.state,
        now,
        *((chunk_key,) if out.release else ()),
        batch,
        out.row_key,
    )
