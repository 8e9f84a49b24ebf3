"""The per-row sheet sync that `batcher/ledger/sync.py` replaced, kept as the oracle
the bulk sync is held to (tests/test_ledger_sync_bulk.py): one statement per row,
every row rewritten. Frozen: do not change it to make a test pass."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from batcher.core.clock import utc_now
from batcher.core.states import REPLANNABLE_STATES
from batcher.ledger.records import SheetRow, SyncReport
from batcher.ledger.store import Ledger
from batcher.ledger.sync import (
    _INSERT_ROW,
    _conflict,
    _content_values,
    _insert_values,
    _new_row_state,
)


class PerRowLedger(Ledger):
    """A ledger whose sync_rows is the old per-row one."""

    def sync_rows(
        self, batch: str, sheet_rows: Sequence[SheetRow], *, retry_failed: bool
    ) -> SyncReport:
        """The per-row sync, statement by statement (see LedgerSync.sync_rows)."""
        now = utc_now()
        counts = dict.fromkeys(
            ("new", "unchanged", "changed", "conflicts", "skipped_elsewhere", "gone"), 0
        )
        existing = {
            r["row_key"]: r
            for r in self._db.execute(
                "SELECT row_key, content_hash, state, failure_kind, attempt, in_sheet, source_row"
                " FROM rows WHERE batch = ?",
                (batch,),
            )
        }
        done_elsewhere = self._references_succeeded_elsewhere(
            batch, [r.reference for r in sheet_rows if r.reference]
        )
        with self._tx() as db:
            db.execute("UPDATE rows SET in_sheet = 0 WHERE batch = ?", (batch,))
            for row in sheet_rows:
                old = existing.get(row.row_key)
                if old is None:
                    state = _new_row_state(row, done_elsewhere, counts)
                    self._insert_row(db, batch, row, state, now)
                    self._event(batch, "row_added", row_key=row.row_key, state=state)
                    continue
                if (
                    row.valid
                    and row.reference in done_elsewhere
                    and old["state"] in REPLANNABLE_STATES
                ):
                    # Ordered under another batch since (e.g. fed back via failed_rows.csv):
                    # retrying it here would order it twice.
                    counts["skipped_elsewhere"] += 1
                    db.execute(
                        "UPDATE rows SET state = 'skipped', in_sheet = 1, source_row = ?,"
                        " chunk_key = NULL, error_code = 'ordered_in_another_batch',"
                        " error_message = ?, updated_at = ? WHERE batch = ? AND row_key = ?",
                        (
                            row.source_row,
                            "this reference was ordered by another batch",
                            now,
                            batch,
                            row.row_key,
                        ),
                    )
                    self._event(batch, "row_skipped_elsewhere", row_key=row.row_key)
                    continue
                self._sync_existing(db, batch, row, old, retry_failed, counts, now)
            counts["gone"] = db.execute(
                "SELECT COUNT(*) FROM rows WHERE batch = ? AND in_sheet = 0", (batch,)
            ).fetchone()[0]
        return SyncReport(**counts)

    def _insert_row(
        self, db: sqlite3.Connection, batch: str, row: SheetRow, state: str, now: str
    ) -> None:
        db.execute(_INSERT_ROW, _insert_values(batch, row, state, now))

    def _sync_existing(
        self,
        db: sqlite3.Connection,
        batch: str,
        row: SheetRow,
        old: sqlite3.Row,
        retry_failed: bool,
        counts: dict[str, int],
        now: str,
    ) -> None:
        key = row.row_key
        state = old["state"]
        changed = old["content_hash"] != row.content_hash
        common = (
            "source_row = ?, in_sheet = 1, passthrough = ?, updated_at = ?",
            [row.source_row, json.dumps(row.passthrough, ensure_ascii=False), now],
        )
        if not changed:
            counts["unchanged"] += 1
            db.execute(
                f"UPDATE rows SET {common[0]} WHERE batch = ? AND row_key = ?",
                (*common[1], batch, key),
            )
            if state == "invalid" and row.valid:
                # The same content is valid now (the catalog changed): give it a chance.
                self._set_row_state(db, batch, key, "pending", clear_error=True)
            elif state == "failed" and old["failure_kind"] == "permanent" and retry_failed:
                self._release_for_retry(db, batch, key, reason="--retry-failed")
            return
        counts["changed"] += 1
        conflict = _conflict(state)
        if conflict is not None:
            counts["conflicts"] += 1
            db.execute(
                f"UPDATE rows SET {common[0]}, conflict = ? WHERE batch = ? AND row_key = ?",
                (*common[1], conflict, batch, key),
            )
            self._event(batch, "row_conflict", row_key=key, new_content_hash=row.content_hash)
            return
        # pending, planned, failed or invalid: take the new content.
        new_state = "pending" if row.valid else "invalid"
        attempt = old["attempt"] + 1 if state == "failed" else old["attempt"]
        db.execute(
            f"UPDATE rows SET {common[0]}, content_hash = ?, fields = ?, currency = ?,"
            " face_value = ?, est_cost = ?, state = ?, attempt = ?, retry_group = '',"
            " failure_kind = ?, error_code = ?, error_message = ?, chunk_key = NULL,"
            " conflict = NULL WHERE batch = ? AND row_key = ?",
            (*common[1], *_content_values(row, new_state, attempt), batch, key),
        )
        self._event(batch, "row_changed", row_key=key, state=new_state, attempt=attempt)

    def _set_row_state(
        self, db: sqlite3.Connection, batch: str, row_key: str, state: str, *, clear_error: bool
    ) -> None:
        extra = (
            ", error_code = NULL, error_message = NULL, failure_kind = NULL" if clear_error else ""
        )
        db.execute(
            f"UPDATE rows SET state = ?, updated_at = ?{extra} WHERE batch = ? AND row_key = ?",
            (state, utc_now(), batch, row_key),
        )
        self._event(batch, "row_state", row_key=row_key, state=state)

    def _release_for_retry(
        self, db: sqlite3.Connection, batch: str, row_key: str, reason: str
    ) -> None:
        db.execute(
            "UPDATE rows SET state = 'pending', attempt = attempt + 1,"
            " retry_group = COALESCE(chunk_key, ''), chunk_key = NULL,"
            " updated_at = ? WHERE batch = ? AND row_key = ?",
            (utc_now(), batch, row_key),
        )
        self._event(batch, "row_released", row_key=row_key, reason=reason)
