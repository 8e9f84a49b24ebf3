"""Recovery from the provider for a batch new to this ledger: asked once, recorded as found."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from batcher.core.clock import utc_now
from batcher.ledger.connection import LedgerConnection
from batcher.ledger.records import RowOutcome


class LedgerRecovery(LedgerConnection):
    """A new batch's rows the provider already holds orders for, or that need a person."""

    def needs_recovery(self, batch: str) -> bool:
        """True until the provider has been asked about this batch's rows once."""
        row = self._db.execute(
            "SELECT recovered_at FROM batches WHERE batch = ?", (batch,)
        ).fetchone()
        return row is not None and row[0] is None

    def mark_recovered(self, batch: str, **detail: Any) -> None:
        with self._tx() as db:
            db.execute("UPDATE batches SET recovered_at = ? WHERE batch = ?", (utc_now(), batch))
            self._event(batch, "recovery_done", **detail)

    def record_recovered(self, batch: str, found: Sequence[RowOutcome], window: str) -> None:
        """Rows the provider already holds an order for: recorded as ordered, never sent."""
        now = utc_now()
        with self._tx() as db:
            for out in found:
                cursor = db.execute(
                    "UPDATE rows SET state = 'succeeded', order_id = ?, order_request_id = ?,"
                    " cost = ?, cost_currency = ?, provider_status = ?, error_code = NULL,"
                    " error_message = NULL, failure_kind = NULL, chunk_key = NULL,"
                    " updated_at = ?, succeeded_at = ? WHERE batch = ? AND row_key = ?"
                    " AND state = 'pending'",
                    (
                        out.order_id,
                        out.provider_request_id,
                        None if out.cost is None else str(out.cost),
                        out.cost_currency,
                        out.provider_status,
                        now,
                        now,
                        batch,
                        out.row_key,
                    ),
                )
                if cursor.rowcount:
                    # Ordered: the row holds its reference from now on, like a planned one.
                    db.execute(
                        "INSERT INTO reference_claims(provider, account_id, reference, batch,"
                        " row_key, claimed_at) SELECT b.provider, b.account_id, r.reference,"
                        " r.batch, r.row_key, ? FROM rows r JOIN batches b ON b.batch = r.batch"
                        " WHERE r.batch = ? AND r.row_key = ? AND r.reference IS NOT NULL"
                        " ON CONFLICT (provider, account_id, reference) DO NOTHING",
                        (now, batch, out.row_key),
                    )
                    self._event(
                        batch, "row_recovered", row_key=out.row_key, order_id=out.order_id,
                        window=window,
                    )  # fmt: skip

    def hold_rows(self, batch: str, held: Sequence[RowOutcome]) -> None:
        """Rows a person must look at before they are ordered: `held`, with the reason
        and the way out (`--release-held ROW`) in their message."""
        now = utc_now()
        with self._tx() as db:
            for out in held:
                cursor = db.execute(
                    "UPDATE rows SET state = 'held', failure_kind = NULL,"
                    " error_code = ?, error_message = ?, chunk_key = NULL, updated_at = ?"
                    " WHERE batch = ? AND row_key = ? AND state = 'pending'",
                    (out.error_code, out.error_message, now, batch, out.row_key),
                )
                if cursor.rowcount:
                    self._event(batch, "row_held", row_key=out.row_key, code=out.error_code)

    def release_held(
        self, batch: str, source_rows: Collection[int] | None, *, keep: str
    ) -> list[int]:
        """The operator's `--release-held`: held rows of the sheet become pending as a new
        attempt (a new key), so nothing holds them again. Only the sheet rows named, or
        every held row when `source_rows` is None; never rows held with the code `keep`
        (a reference another batch holds is released by that batch finishing, not by a
        person). Returns the sheet rows released."""
        with self._tx() as db:
            found = [
                (r[0], int(r[1]))
                for r in db.execute(
                    "SELECT row_key, source_row FROM rows WHERE batch = ? AND in_sheet = 1"
                    " AND state = 'held' AND (error_code IS NULL OR error_code != ?)",
                    (batch, keep),
                )
                if source_rows is None or int(r[1]) in source_rows
            ]
            for row_key, _row in found:
                db.execute(
                    "UPDATE rows SET state = 'pending', attempt = attempt + 1, error_code = NULL,"
                    " error_message = NULL, failure_kind = NULL, updated_at = ?"
                    " WHERE batch = ? AND row_key = ?",
                    (utc_now(), batch, row_key),
                )
                self._event(batch, "row_released", row_key=row_key, reason="--release-held")
        return sorted(row for _key, row in found)
