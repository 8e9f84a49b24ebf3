"""Sheet sync: the ledger follows the current sheet without losing any row's history.

The sheet is compared with the ledger in memory (one read of the batch's keys and
content hashes) and only what differs is written, a statement per kind of change
(`executemany`): a rerun of an unchanged 100,000-row sheet writes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, NamedTuple

from batcher.core.clock import utc_now
from batcher.core.states import IN_FLIGHT_STATES, REPLANNABLE_STATES
from batcher.ledger.backend import Database, plain_rows, refresh_statistics
from batcher.ledger.connection import INSERT_EVENT, LedgerConnection, in_slices
from batcher.ledger.planning import HELD_ELSEWHERE, fields_decoded
from batcher.ledger.records import SheetRow, SyncReport

# Into `rows` in chunk order when the transaction ends (connection._store_staged_rows).
_INSERT_ROW = (
    "INSERT INTO rows_staging(batch, row_key, source_row, in_sheet, reference, content_hash,"
    " fields, passthrough, currency, face_value, est_cost, state, error_code,"
    " error_message, failure_kind, created_at, updated_at)"
    " VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_PLACE = "source_row = ?, in_sheet = 1, passthrough = ?, updated_at = ?"
_TOUCH = f"UPDATE rows SET {_PLACE} WHERE batch = ? AND row_key = ?"
#: a row skipped because another batch ordered its reference: its error code and
#: message, whether the row was new to the ledger or known to it (readers add where and
#: when it was ordered: `reporting.row_source.explain_skips`)
SKIPPED_ELSEWHERE = "ordered_in_another_batch"
_SKIPPED_ELSEWHERE_MESSAGE = "this reference was ordered by another batch"
_SKIP_ELSEWHERE = (
    "UPDATE rows SET state = 'skipped', in_sheet = 1, source_row = ?,"
    " chunk_key = NULL, error_code = ?, error_message = ?, updated_at = ?"
    " WHERE batch = ? AND row_key = ?"
)
_CONFLICT = f"UPDATE rows SET {_PLACE}, conflict = ? WHERE batch = ? AND row_key = ?"
_TAKE_CONTENT = (
    f"UPDATE rows SET {_PLACE}, content_hash = ?, fields = ?, currency = ?,"
    " face_value = ?, est_cost = ?, state = ?, attempt = ?, retry_group = '',"
    " failure_kind = ?, error_code = ?, error_message = ?, chunk_key = NULL,"
    " conflict = NULL WHERE batch = ? AND row_key = ?"
)
# A held row's new content: it stays held, with its reason, until a person releases it.
_TAKE_CONTENT_HELD = (
    f"UPDATE rows SET {_PLACE}, content_hash = ?, fields = ?, currency = ?,"
    " face_value = ?, est_cost = ?, conflict = NULL WHERE batch = ? AND row_key = ?"
)
_VALID_AGAIN = (
    "UPDATE rows SET state = 'pending', updated_at = ?, error_code = NULL,"
    " error_message = NULL, failure_kind = NULL WHERE batch = ? AND row_key = ?"
)
_RELEASE = (
    "UPDATE rows SET state = 'pending', attempt = attempt + 1,"
    " retry_group = COALESCE(chunk_key, ''), chunk_key = NULL,"
    " updated_at = ? WHERE batch = ? AND row_key = ?"
)
_LEFT_SHEET = "UPDATE rows SET in_sheet = 0 WHERE batch = ? AND row_key = ?"


def _one_shot_encoder() -> Callable[[Any], str]:
    """json.dumps(..., ensure_ascii=False) for the rows' flat dicts of text: the C
    encoder made once, not once per row as `JSONEncoder.encode` does (a 20,000-row
    sheet is 40,000 of them). The same text either way; without the C encoder, the
    plain one."""
    encoder = json.JSONEncoder(ensure_ascii=False)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return encoder.encode
    iterencode = make(
        None, encoder.default, json.encoder.encode_basestring, None, ": ", ", ",
        False, False, True,
    )  # fmt: skip

    def encode(value: Any) -> str:
        return "".join(iterencode(value, 0))

    probe = {"a": 'é"\u2028', "b": ""}
    return encode if encode(probe) == encoder.encode(probe) else encoder.encode


_json = _one_shot_encoder()


class _Known(NamedTuple):
    """What the sync needs of a row the ledger already holds."""

    content_hash: str
    state: str
    failure_kind: str | None
    attempt: int
    in_sheet: int
    source_row: int
    passthrough: str  # as stored: JSON text
    error_code: str | None


@dataclass
class _SyncWrites:
    """What one sync writes, gathered first and then written a statement at a time."""

    batch: str
    now: str
    statements: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    events: list[tuple[str, str | None, dict[str, Any]]] = field(default_factory=list)
    #: rows that may leave a claiming state (a planned row changed or skipped)
    unclaimed: list[str] = field(default_factory=list)
    #: stored JSON text -> the fields it encodes, of the new rows (`FieldsDecoded`)
    decoded: dict[str, dict[str, str]] | None = None

    def add(self, sql: str, *values: Any) -> None:
        self.statements.setdefault(sql, []).append(values)

    def event(self, kind: str, row_key: str | None, **detail: Any) -> None:
        self.events.append((kind, row_key, detail))


class LedgerSync(LedgerConnection):
    """Rows in, changed, released for retry."""

    def sync_rows(
        self, batch: str, sheet_rows: Iterable[SheetRow], *, retry_failed: bool
    ) -> SyncReport:
        """Bring the ledger in line with the current sheet, without losing history.

        - new rows are inserted as pending (or invalid);
        - a row whose reference already succeeded in another batch is skipped;
        - a changed row that had not been sent is updated; one that failed is
          released for a new attempt; one that succeeded is flagged as a conflict
          and never ordered again;
        - rows no longer in the sheet stay in the ledger with in_sheet = 0;
        - a row whose content, place and other columns are unchanged is not written.

        `sheet_rows` is read once, a slice at a time, and each slice's writes are made
        before the next is read, all in one transaction: memory is bounded by the
        slice and by what the ledger already holds of the batch, not by the sheet.
        """
        counts = dict.fromkeys(("new", "unchanged", "changed", "conflicts", "skipped_elsewhere"), 0)
        existing = {
            r[0]: _Known._make(r[1:])
            for r in plain_rows(
                self._db,
                "SELECT row_key, content_hash, state, failure_kind, attempt, in_sheet,"
                " source_row, passthrough, error_code FROM rows WHERE batch = ?",
                (batch,),
            )
        }
        # Only a batch with rows in its last sheet can have rows that left it.
        in_sheet: set[str] | None = set() if any(r.in_sheet for r in existing.values()) else None
        now = utc_now()
        moved = 0
        rows = iter(sheet_rows)
        decoded = fields_decoded(self)
        decoded.clear()
        with self._tx() as db:
            while part := list(islice(rows, SYNC_SLICE_ROWS)):
                writes = _SyncWrites(batch, now, decoded=decoded.keeping())
                done_elsewhere = self._references_succeeded_elsewhere(
                    batch, [r.reference for r in part if r.reference]
                )
                for row in part:
                    moved += _sync_row(writes, row, existing.get(row.row_key), done_elsewhere,
                                       retry_failed, counts)  # fmt: skip
                if in_sheet is not None:
                    in_sheet.update(r.row_key for r in part)
                self._write(db, writes)
            decoded.keeping()  # more than a plan page of new rows: none are kept
            writes = _SyncWrites(batch, now)
            left = [
                k for k, r in existing.items() if r.in_sheet and in_sheet is not None
                and k not in in_sheet
            ]  # fmt: skip
            for key in left:
                writes.add(_LEFT_SHEET, batch, key)
            if moved or left:
                # Not a state change, but the report shows it: record that the sheet moved.
                writes.event("rows_resynced", None, moved=moved, left_sheet=len(left))
            self._write(db, writes)
            gone = db.execute(
                "SELECT COUNT(*) FROM rows WHERE batch = ? AND in_sheet = 0", (batch,)
            ).fetchone()[0]
        refresh_statistics(self._db, self.backend, "rows", counts["new"])
        return SyncReport(**counts, gone=gone)

    def _write(self, db: Database, writes: _SyncWrites) -> None:
        """One slice's writes: a statement per kind of change, then its events."""
        for sql, values in writes.statements.items():
            db.executemany(sql, values)
        if writes.events:
            # With the sync's one clock reading (the rows' own timestamp): a new sheet
            # is an event per row.
            batch, now = writes.batch, writes.now
            # A new row's event differs from the next one's only by its key: its detail
            # (the row's state) is encoded once per state, not once per row.
            added: dict[str, tuple[Any, ...]] = {}
            values = []
            for kind, key, d in writes.events:
                if kind != "row_added":
                    values.append(self._event_values(batch, kind, None, key, d, now))
                    continue
                like = added.get(d["state"])
                if like is None:
                    like = added[d["state"]] = self._event_values(batch, kind, None, key, d, now)
                values.append((*like[:5], key, *like[6:]))  # [5]: the row key
            db.executemany(INSERT_EVENT, values)
        self._release_claims(db, writes.batch, writes.unclaimed)

    def _references_succeeded_elsewhere(self, batch: str, references: list[str]) -> set[str]:
        found: set[str] = set()
        for part, marks in in_slices(references):
            found.update(
                r[0]
                for r in self._db.execute(
                    f"SELECT reference FROM rows WHERE reference IN ({marks})"
                    " AND state = 'succeeded' AND batch != ?",
                    (*part, batch),
                )
            )
        return found

    def _release_for_retry(self, db: Database, batch: str, row_key: str, reason: str) -> None:
        db.execute(_RELEASE, (utc_now(), batch, row_key))
        self._event(batch, "row_released", row_key=row_key, reason=reason)

    def release_retryable(self, batch: str) -> int:
        """Failed rows whose failure is retryable become pending for the next attempt."""
        with self._tx() as db:
            keys = [
                r[0]
                for r in db.execute(
                    "SELECT row_key FROM rows WHERE batch = ? AND in_sheet = 1 AND state = 'failed'"
                    " AND failure_kind = 'retryable'",
                    (batch,),
                )
            ]
            for key in keys:
                self._release_for_retry(db, batch, key, reason="retryable failure")
        return len(keys)


#: sheet rows compared and written at a time by `sync_rows`
SYNC_SLICE_ROWS = 20_000


def _sync_row(
    writes: _SyncWrites,
    row: SheetRow,
    old: _Known | None,
    done_elsewhere: set[str],
    retry_failed: bool,
    counts: dict[str, int],
) -> int:
    """Record what one sheet row needs; returns 1 when only its place moved."""
    batch = writes.batch
    if old is None:
        state = _new_row_state(row, done_elsewhere, counts)
        values = _insert_values(batch, row, state, writes.now)
        writes.add(_INSERT_ROW, *values)
        if writes.decoded is not None and state == "pending":  # only these are planned
            writes.decoded[values[5]] = row.fields
        writes.event("row_added", row.row_key, state=state)
        return 0
    if row.valid and row.reference in done_elsewhere and old.state in REPLANNABLE_STATES:
        # Ordered under another batch since (e.g. fed back via failed_rows.csv):
        # retrying it here would order it twice.
        counts["skipped_elsewhere"] += 1
        writes.add(
            _SKIP_ELSEWHERE,
            row.source_row,
            SKIPPED_ELSEWHERE,
            _SKIPPED_ELSEWHERE_MESSAGE,
            writes.now,
            batch,
            row.row_key,
        )
        writes.event("row_skipped_elsewhere", row.row_key)
        writes.unclaimed.append(row.row_key)
        return 0
    return _sync_existing(writes, row, old, retry_failed, counts)


def _new_row_state(row: SheetRow, done_elsewhere: set[str], counts: dict[str, int]) -> str:
    """A row new to the ledger: pending, invalid, or skipped when its reference was
    ordered by another batch; counted."""
    counts["new"] += 1
    if not row.valid:
        return "invalid"
    if row.reference and row.reference in done_elsewhere:
        counts["skipped_elsewhere"] += 1
        return "skipped"
    return "pending"


def _insert_values(batch: str, row: SheetRow, state: str, now: str) -> tuple[Any, ...]:
    return (
        batch,
        row.row_key,
        row.source_row,
        row.reference,
        row.content_hash,
        _json(row.fields),
        _json(row.passthrough),
        row.currency,
        str(row.face_value),
        None if row.est_cost is None else str(row.est_cost),
        state,
        SKIPPED_ELSEWHERE if state == "skipped" else row.error_code or None,
        _SKIPPED_ELSEWHERE_MESSAGE if state == "skipped" else row.error_message or None,
        "permanent" if state == "invalid" else None,
        now,
        now,
    )


def _sync_existing(
    writes: _SyncWrites,
    row: SheetRow,
    old: _Known,
    retry_failed: bool,
    counts: dict[str, int],
) -> int:
    """Record what a row the ledger knows needs; returns 1 when only its place or
    other columns changed (nothing else records that), else 0."""
    batch, key, now, state = writes.batch, row.row_key, writes.now, old.state
    passthrough = _json(row.passthrough)
    place = (row.source_row, passthrough, now)
    if old.content_hash == row.content_hash:
        counts["unchanged"] += 1
        if state == "invalid" and row.valid:
            # The same content is valid now (the catalog changed): give it a chance.
            writes.add(_VALID_AGAIN, now, batch, key)
            writes.event("row_state", key, state="pending")
        elif state == "failed" and old.failure_kind == "permanent" and retry_failed:
            writes.add(_RELEASE, now, batch, key)
            writes.event("row_released", key, reason="--retry-failed")
        if (old.source_row, old.passthrough, old.in_sheet) == (
            row.source_row,
            passthrough,
            1,
        ):
            return 0
        writes.add(_TOUCH, *place, batch, key)
        return 1
    counts["changed"] += 1
    conflict = _conflict(state)
    if conflict is not None:
        counts["conflicts"] += 1
        writes.add(_CONFLICT, *place, conflict, batch, key)
        writes.event("row_conflict", key, new_content_hash=row.content_hash)
        return 0
    if state == "held" and old.error_code != HELD_ELSEWHERE:
        # Held for a person (a possible duplicate, an ambiguous provider match): an edit
        # is not that person's decision, so the row stays held with the new content.
        # (A reference another batch holds is asked again every run instead.)
        if not row.valid:
            writes.add(_CONFLICT, *place, _HELD_INVALID, batch, key)
            writes.event("row_conflict", key, new_content_hash=row.content_hash)
            return 0
        writes.add(_TAKE_CONTENT_HELD, *place, *_content_values(row, state, 0)[:5], batch, key)
        writes.event("row_changed", key, state=state)
        return 0
    # pending, planned, failed or invalid: take the new content.
    new_state = "pending" if row.valid else "invalid"
    attempt = old.attempt + 1 if state in ("failed", "held") else old.attempt
    writes.add(_TAKE_CONTENT, *place, *_content_values(row, new_state, attempt), batch, key)
    writes.event("row_changed", key, state=new_state, attempt=attempt)
    writes.unclaimed.append(key)
    return 0


def _content_values(row: SheetRow, state: str, attempt: int) -> tuple[Any, ...]:
    """The values of `_TAKE_CONTENT` after the row's place: the sheet's new content."""
    return (
        row.content_hash,
        _json(row.fields),
        row.currency,
        str(row.face_value),
        None if row.est_cost is None else str(row.est_cost),
        state,
        attempt,
        "permanent" if state == "invalid" else None,
        row.error_code or None,
        row.error_message or None,
    )


_HELD_INVALID = (
    "the sheet changed this held row to content that is not valid; it keeps its recorded"
    " content and stays held"
)


def _conflict(state: str) -> str | None:
    """Why a changed row keeps its recorded content, or None when it takes the new one."""
    if state in ("succeeded", "skipped"):
        return "the sheet changed this row after it was ordered; it will not be ordered again"
    if state in IN_FLIGHT_STATES:
        # Frozen: the sent bytes decide. Record the change but order what was sent.
        return "the sheet changed this row while its order was in flight"
    return None
