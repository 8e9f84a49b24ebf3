"""Recovery from the provider for a batch new to this ledger: asked once, recorded as found."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

from batcher.core.clock import utc_now
from batcher.ledger.backend import Database
from batcher.ledger.connection import LedgerConnection
from batcher.ledger.records import RowOutcome

#: failure_kind of a row `--release-held` released in a run not yet confirmed
RELEASE_UNCONFIRMED = "release_unconfirmed"


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

    def record_recovery(
        self,
        batch: str,
        provider: str,
        account_id: str,
        decide: Callable[[set[str]], tuple[Sequence[RowOutcome], Sequence[RowOutcome]]],
        window: str,
    ) -> tuple[Sequence[RowOutcome], Sequence[RowOutcome]]:
        """Record what the provider's orders say about the batch's pending rows, in one
        write transaction: `decide(claimed)` is given the orders some row of this
        account already stands for, read inside that transaction (so another run cannot
        tie one of them to its row in between), and returns (found, held). Found rows
        are recorded as ordered and never sent; held rows wait for a person."""
        with self._tx() as db:
            claimed = {
                r[0]
                for r in db.execute(
                    "SELECT r.order_id FROM rows r JOIN batches b ON b.batch = r.batch"
                    " WHERE r.order_id IS NOT NULL AND b.provider = ? AND b.account_id = ?",
                    (provider, account_id),
                )
            }
            found, held = decide(claimed)
            self._record_found(db, batch, found, window)
            self._hold(db, batch, held)
        return found, held

    def _record_found(
        self, db: Database, batch: str, found: Sequence[RowOutcome], window: str
    ) -> None:
        now = utc_now()
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
        with self._tx() as db:
            self._hold(db, batch, held)

    def _hold(self, db: Database, batch: str, held: Sequence[RowOutcome]) -> None:
        now = utc_now()
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
        """The operator's `--release-held`, asked for: held rows of the sheet become
        pending as a new attempt (a new key), so this run can plan and show them. Only
        the sheet rows named, or every held row when `source_rows` is None; never rows
        held with the code `keep` (a reference another batch holds is released by that
        batch finishing, not by a person). Returns the sheet rows released.

        The release is only asked for until `confirm_release`: the rows keep their hold's
        reason and are marked `RELEASE_UNCONFIRMED`, and a run that is declined, refused
        or killed before it sends anything puts them back (`undo_unconfirmed_release`)."""
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
                    "UPDATE rows SET state = 'pending', attempt = attempt + 1,"
                    " failure_kind = ?, updated_at = ? WHERE batch = ? AND row_key = ?",
                    (RELEASE_UNCONFIRMED, utc_now(), batch, row_key),
                )
                self._event(batch, "row_release_asked", row_key=row_key, reason="--release-held")
        return sorted(row for _key, row in found)

    def confirm_release(self, batch: str) -> int:
        """The run was confirmed: the rows `release_held` released are released for good."""
        if not self._unconfirmed(self._db, batch):
            return 0  # the usual run: no write transaction (and no commit) for nothing
        with self._tx() as db:
            keys = self._unconfirmed(db, batch)
            db.execute(
                "UPDATE rows SET error_code = NULL, error_message = NULL, failure_kind = NULL,"
                " updated_at = ? WHERE batch = ? AND failure_kind = ?",
                (utc_now(), batch, RELEASE_UNCONFIRMED),
            )
            for row_key in keys:
                self._event(batch, "row_released", row_key=row_key, reason="--release-held")
        return len(keys)

    def undo_unconfirmed_release(self, batch: str) -> int:
        """Rows a run released but never confirmed (declined at the prompt, refused by a
        spend limit, or killed before it) are held again, with their reason; the unsent
        chunks planned around them are discarded (their other rows planned again).
        Returns how many rows are held again."""
        if not self._unconfirmed(self._db, batch):
            return 0
        with self._tx() as db:
            marked = [
                (r[0], r[1])
                for r in db.execute(
                    "SELECT row_key, chunk_key FROM rows WHERE batch = ? AND failure_kind = ?",
                    (batch, RELEASE_UNCONFIRMED),
                )
            ]
            if not marked:
                return 0
            now = utc_now()
            sent: set[str] = set()
            for key in sorted({c for _, c in marked if c}):
                state = db.execute(
                    "SELECT state FROM chunks WHERE chunk_key = ?", (key,)
                ).fetchone()
                if state is not None and state[0] != "planned":
                    sent.add(key)  # executed without confirming: never undo a send
                    continue
                db.execute(
                    "UPDATE rows SET state = 'pending', chunk_key = NULL, updated_at = ?"
                    " WHERE batch = ? AND chunk_key = ? AND state = 'planned'",
                    (now, batch, key),
                )
                db.execute("DELETE FROM chunk_rows WHERE chunk_key = ?", (key,))
                db.execute("DELETE FROM chunks WHERE chunk_key = ?", (key,))
                self._event(batch, "chunk_discarded", chunk_key=key)
            back = 0
            for row_key, chunk in marked:
                if chunk in sent:  # the release stands: what the provider holds stays
                    db.execute(
                        "UPDATE rows SET error_code = NULL, error_message = NULL,"
                        " failure_kind = NULL WHERE batch = ? AND row_key = ?",
                        (batch, row_key),
                    )
                    self._event(batch, "row_released", row_key=row_key, reason="--release-held")
                    continue
                db.execute(
                    "UPDATE rows SET state = 'held', attempt = attempt - 1, failure_kind = NULL,"
                    " chunk_key = NULL, updated_at = ? WHERE batch = ? AND row_key = ?",
                    (now, batch, row_key),
                )
                self._event(batch, "row_held", row_key=row_key, code="release_not_confirmed")
                back += 1
        return back

    def _unconfirmed(self, db: Database, batch: str) -> list[str]:
        return [
            r[0]
            for r in db.execute(
                "SELECT row_key FROM rows WHERE batch = ? AND failure_kind = ?",
                (batch, RELEASE_UNCONFIRMED),
            )
        ]
