"""Planning: chunks saved, discarded, held back for references and funds, and order claims."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from typing import Any, NamedTuple

from batcher.core.clock import utc_now
from batcher.core.states import CLAIMING_STATES, HELD_ELSEWHERE
from batcher.ledger.backend import Database, plain_rows
from batcher.ledger.connection import LedgerConnection, in_pages, in_slices
from batcher.ledger.schema import held_elsewhere_message, in_claiming_states

__all__ = ["HELD_ELSEWHERE", "LedgerPlanning", "PlanningRow"]


class PlanningRow(NamedTuple):
    """What the funds rule and planning read of a row to send (`planning_rows_in_pages`):
    the same values as the row's `RowRecord` holds, without the rest of it."""

    row_key: str
    source_row: int
    currency: str
    face_value: Decimal
    est_cost: Decimal | None
    attempt: int
    retry_group: str
    fields: dict[str, str]


_PLANNING_COLUMNS = (
    "row_key, source_row, currency, face_value, est_cost, attempt, retry_group, fields"
)


def _planning_row(r: Any, decoded: dict[str, dict[str, str]]) -> PlanningRow:
    """A row read with `_PLANNING_COLUMNS`; its fields' JSON text taken from `decoded`
    (text -> the dict it encodes, see `FieldsDecoded`) when there, else decoded."""
    key, source_row, currency, face, cost, attempt, group, fields = r
    known = decoded.pop(fields, None) if decoded else None
    return PlanningRow(
        key, source_row, currency, Decimal(face), None if cost is None else Decimal(cost),
        attempt, group, json.loads(fields) if known is None else dict(known),
    )  # fmt: skip


#: at most this many rows' fields are kept decoded by a sheet sync (`FieldsDecoded`): as
#: many as planning reads at once (execute.runner.PLAN_PAGE_ROWS); a larger sheet keeps none
FIELDS_DECODED_ROWS = 50_000


class FieldsDecoded:
    """The sheet sync's new rows' `fields`, by the JSON text it stored them as: planning
    reads those rows right back (the funds rule, then the chunks), and taking the dict
    the text was made from is a dictionary look-up instead of a JSON decode (20,000
    rows: about a fifth of a second). Only a text's own dict is ever returned for it
    (`json.loads(text) == dict`, the text being `json.dumps(dict)` of a flat dict of
    text), so it is exact whatever the ledger holds; each entry is taken once."""

    def __init__(self) -> None:
        self.by_text: dict[str, dict[str, str]] = {}
        self.full = False

    def clear(self) -> None:
        self.by_text.clear()
        self.full = False

    def keeping(self) -> dict[str, dict[str, str]] | None:
        """Where to add (text, fields) pairs; None once more were added than a plan page
        holds: a sheet that large keeps none (planning reads it in pages anyway)."""
        if len(self.by_text) > FIELDS_DECODED_ROWS:
            self.by_text.clear()
            self.full = True
        return None if self.full else self.by_text


#: row key -> (the batch holding its reference, that batch's row state, the reference)
Taken = dict[str, tuple[str, str, str]]

_CLAIM = (
    "INSERT INTO reference_claims(provider, account_id, reference, batch, row_key, claimed_at)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (provider, account_id, reference) DO NOTHING"
)


#: SQLite: `_CLAIM` for a JSON array of [reference, row key] bound once (`_plan_writes`);
#: `WHERE true` tells the parser the upsert's ON belongs to the INSERT, not to a join
_CLAIM_JSON = (
    "INSERT INTO reference_claims(provider, account_id, reference, batch, row_key, claimed_at)"
    " SELECT ?, ?, value ->> 0, ?, value ->> 1, ? FROM json_each(?) WHERE true"
    " ON CONFLICT (provider, account_id, reference) DO NOTHING"
)
#: SQLite: mark rows planned from a JSON array of [rowid, row key, chunk key], in its
#: order, each found by its rowid alone (read in the same transaction: it is that row).
#: Another term on `rows` (batch = ?) lets the planner drive the join from the batch's
#: rows instead, and read the whole array once per row.
_PLANNED_JSON = (
    "UPDATE rows SET state = 'planned', chunk_key = p.value ->> 2, updated_at = ?"
    " FROM json_each(?) AS p WHERE rows.rowid = p.value ->> 0"
)
#: SQLite has JSON functions built in, `->>` and UPDATE ... FROM from 3.38 on: older
#: ones write a plan a row per statement, payloads first (`save_plan`)
_SQLITE_JSON = sqlite3.sqlite_version_info >= (3, 38, 0)
#: a CPU to write a plan's rows on while the payloads are made on another (`save_plan`)
_SPARE_CPU = (
    len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
) > 1


def _planned_rows(
    found: dict[str, tuple[int, str | None]], chunks: Sequence[tuple[str, Sequence[str]]]
) -> list[tuple[int, str, str]]:
    """(place, row key, chunk key) of the rows of `chunks` (key, row keys) in `found`
    (key -> (place, reference)), in the order they are stored in."""
    planned = [(found[k][0], k, key) for key, keys in chunks for k in keys if k in found]
    planned.sort()
    return planned


def _all_new(db: Database, insert: Callable[[], int], expected: int) -> bool:
    """Run `insert` (it returns how many claims it inserted) in a savepoint: kept when
    every one of the `expected` claims was new, else undone. True when kept."""
    db.execute("SAVEPOINT claim_page")
    inserted = insert()
    if inserted != expected:
        db.execute("ROLLBACK TO SAVEPOINT claim_page")
    db.execute("RELEASE SAVEPOINT claim_page")
    return inserted == expected


class _Steps:
    """Steps of one transaction, run in order, one at a time, by a thread of their own
    and by the caller once it has done its own work (`finish`): whichever is free takes
    the next step, so on a busy machine, where the thread may wait for a CPU, the caller
    does not wait for it to start what the caller could run itself. A step returning
    False stops the steps after it (nothing of them is run); `finish` returns False then.
    """

    def __init__(self, steps: Sequence[Callable[[], bool]]) -> None:
        self._steps = list(steps)
        self._done = 0  # steps taken so far
        self._stopped = False
        self._error: BaseException | None = None
        self._running = threading.Lock()  # held while a step runs: one thread at a time

        def run() -> None:
            try:
                while self._run_next():
                    pass
            except BaseException as exc:  # raised again by `finish`
                self._error = exc

        self._thread = threading.Thread(target=run, name="batcher-plan-writes", daemon=True)

    def start(self) -> None:
        """Start the thread. Called inside the caller's `try` whose handler calls
        `finish(run_rest=False)`: a Ctrl-C while it starts must still stop its steps
        before the transaction ends (a step starts only under `_running`, and none once
        `finish` has stopped them)."""
        self._thread.start()

    def _run_next(self) -> bool:
        """Run the next step, if there is one to run; False once there is none."""
        with self._running:
            if self._stopped or self._error is not None or self._done == len(self._steps):
                return False
            step = self._steps[self._done]
            self._done += 1
            try:
                if not step():
                    self._stopped = True
            except BaseException:
                self._stopped = True
                raise
        return True

    def finish(self, *, run_rest: bool = True) -> bool:
        """Run the steps left on this thread (`run_rest`; else none is started any
        more), then wait for the thread's step to end, even when interrupted meanwhile
        (raised after): the steps are part of the caller's transaction, which must not
        end before they do. Raises what a step raised; False when a step stopped the
        rest."""
        failure: BaseException | None = None
        try:
            if not run_rest:
                with self._running:
                    self._stopped = True
            while self._run_next():
                pass
        except BaseException as exc:
            failure = exc
        while self._thread.is_alive():
            try:
                self._thread.join()
            except BaseException as exc:  # KeyboardInterrupt: wait all the same
                failure = failure or exc
        if failure is not None:
            raise failure
        if self._error is not None:
            raise self._error
        return not self._stopped


def _references_in(
    row_keys: Sequence[str], found: dict[str, tuple[int, str | None]]
) -> dict[str, list[str]]:
    """reference -> the keys among `row_keys` that carry it (`found`: key -> (place,
    reference))."""
    mine: dict[str, list[str]] = {}
    for key in row_keys:
        reference = found[key][1] if key in found else None
        if reference is not None:
            mine.setdefault(reference, []).append(key)
    return mine


def fields_decoded(ledger: LedgerConnection) -> FieldsDecoded:
    """The ledger's last sheet sync's new rows' fields, decoded (`FieldsDecoded`)."""
    memo = ledger._fields_decoded
    if memo is None:
        memo = ledger._fields_decoded = FieldsDecoded()
    return memo


class LedgerPlanning(LedgerConnection):
    """What gets planned, what is held back, which provider orders are taken."""

    def planning_rows_in_pages(
        self, batch: str, keys: Sequence[str], page: int = 5_000
    ) -> Iterator[list[PlanningRow]]:
        """As `rows_in_pages`, only the columns the funds rule and planning use: a
        20,000-row plan reads them in a third of the time a whole `RowRecord` takes
        (its pass-through cells, timestamps and provider answers are not decoded)."""
        decoded = fields_decoded(self).by_text
        for part in in_pages(keys, page):
            found = {
                r[0]: _planning_row(r, decoded)
                for r in self._by_key(batch, part, _PLANNING_COLUMNS)
            }
            yield [found[k] for k in part if k in found]

    def forget_decoded_fields(self) -> None:
        """Planning is done: the sync's decoded fields not taken are let go."""
        fields_decoded(self).clear()

    def planning_rows_in_state(self, batch: str, state: str) -> list[PlanningRow]:
        """As `planning_rows_in_pages` for every row of `batch` in `state` in the sheet,
        in sheet order, read in one statement rather than by key: for a state whose
        rows the caller knows are few enough to hold at once (one plan page)."""
        decoded = fields_decoded(self).by_text
        return [
            _planning_row(r, decoded)
            for r in plain_rows(
                self._db,
                f"SELECT {_PLANNING_COLUMNS} FROM rows WHERE batch = ? AND state = ?"
                " AND in_sheet = 1 ORDER BY source_row",
                (batch, state),
            )
        ]

    def save_plan(
        self,
        batch: str,
        chunks: Sequence[tuple[str, str, int, Sequence[str], bytes | None]],
        payloads: Callable[[], Sequence[bytes]] | None = None,
    ) -> set[str]:
        """Record planned chunks (key, currency, attempt, row keys, payload) and their rows.

        A chunk holding a reference that another batch of the same account has planned,
        in flight or ordered is not saved: those rows are held (`held`, `HELD_ELSEWHERE`)
        and their keys returned, so the caller plans the rest again. The check and the
        save are one transaction, so two runs started at once cannot both plan it.

        Each saved row's reference is claimed in `reference_claims` in that same
        transaction (one claim per account and reference: its primary key). The claim
        is the backstop for any writer the check did not see (another machine, another
        version): if another batch's claim is found when claiming, no claim, chunk or
        row of this chunk is written, and the rows are held exactly as above.

        `payloads`, when given, makes the chunks' payloads (one per chunk, in order; the
        chunks' own payload entries are then not read) on the calling thread while the
        transaction's claims and row writes run (SQLite with a second CPU: on a thread of
        their own, as a few statements that release the GIL; see `_plan_writes`; with
        one CPU, the same statements after the payloads). It must not use the
        ledger. The payloads are in the transaction all the same: nothing is committed
        before they are, and an error making them rolls the whole plan back.
        """
        now = utc_now()
        held: set[str] = set()
        overlap = payloads is not None and self.backend == "sqlite" and _SQLITE_JSON
        if payloads is not None and not overlap:
            made = list(payloads())
            chunks = [(c[0], c[1], c[2], c[3], made[i]) for i, c in enumerate(chunks)]
            payloads = None
        with self._tx() as db:
            owner = self._owner(db, batch) or ("", "")
            fresh: list[int] = []  # indexes of the chunks not saved before
            existing: dict[int, bytes] = {}  # index -> the payload saved before
            for i, chunk in enumerate(chunks):
                found_chunk = db.execute(
                    "SELECT state, payload FROM chunks WHERE chunk_key = ?", (chunk[0],)
                ).fetchone()
                if found_chunk is None:
                    fresh.append(i)
                else:
                    existing[i] = bytes(found_chunk["payload"])
            # The rows, the other batches' holds and the claims are read and written for
            # all the chunks at once, each in its own index's order: a large batch's
            # chunks are scattered over those indexes, and a chunk at a time visited
            # their pages at random. Another batch's rows do not change within this
            # transaction, so checking them up front is checking them chunk by chunk.
            found = self._sheet_rows_of(db, batch, sorted(k for i in fresh for k in chunks[i][3]))
            elsewhere = self._held_elsewhere(db, batch, owner, _references_in(list(found), found))
            saving: list[tuple[int, dict[str, list[str]]]] = []
            for i in fresh:
                keys = chunks[i][3]
                mine = _references_in(keys, found)
                taken = {k: elsewhere[k] for k in keys if k in elsewhere}
                if taken:
                    self._hold_taken(db, batch, taken, now)
                    held.update(taken)
                else:
                    saving.append((i, mine))
            claims = sorted((ref, keys[0]) for _, mine in saving for ref, keys in mine.items())
            planned = _planned_rows(found, [(chunks[i][0], chunks[i][3]) for i, _ in saving])
            made_payloads: Sequence[bytes] | None = None
            if overlap and any("\x00" in reference for reference, _ in claims):
                # SQLite's `->>` ends text at a NUL: a reference holding one is claimed
                # through bound parameters, the payloads made first (as without them).
                assert payloads is not None
                overlap = False
                made_payloads = payloads()
            if overlap:
                assert payloads is not None
                # The statements' values are encoded here, before the writes start: the
                # writing thread then needs the GIL only between its few statements.
                members = json.dumps(
                    [(chunks[i][0], k, n) for i, _ in saving for n, k in enumerate(chunks[i][3])]
                )
                claims_json, planned_json = json.dumps(claims), json.dumps(planned)

                steps = self._plan_writes(
                    db, batch, owner, (claims_json, len(claims)), members, planned_json, now
                )
                if _SPARE_CPU:
                    writes = _Steps(steps)
                    try:
                        writes.start()
                        made_payloads = payloads()
                    except BaseException:
                        writes.finish(run_rest=False)  # the transaction rolls back
                        raise
                    claimed_all = writes.finish()
                else:  # one CPU: the two would only take turns
                    made_payloads = payloads()
                    claimed_all = all(step() for step in steps)
            else:
                claimed_all = self._claim_all(db, batch, owner, claims, now)
            bytes_of = (
                (lambda i: made_payloads[i])
                if made_payloads is not None
                else (lambda i: chunks[i][4])
            )
            for i, before in existing.items():
                # The same rows and attempt were planned before: the key is a promise
                # to the provider, so the bytes must match what may have been sent.
                if before != bytes_of(i):
                    raise RuntimeError(f"chunk {chunks[i][0]} re-planned with different bytes")
            if not claimed_all:
                # Another batch's claim among them (rare): claim chunk by chunk instead,
                # so only the chunks holding such a reference are held back.
                kept = []
                for i, mine in saving:
                    taken = self._claim_references(db, batch, owner, mine, now)
                    if taken:
                        self._hold_taken(db, batch, taken, now)
                        held.update(taken)
                    else:
                        kept.append((i, mine))
                saving = kept
                planned = _planned_rows(found, [(chunks[i][0], chunks[i][3]) for i, _ in saving])
            saved = [
                (chunks[i][0], chunks[i][1], chunks[i][2], chunks[i][3], bytes_of(i))
                for i, _ in saving
            ]
            for key, currency, attempt, keys, payload in saved:
                db.execute(
                    "INSERT INTO chunks(chunk_key, batch, currency, attempt, state, payload,"
                    " row_count, created_at) VALUES (?, ?, ?, ?, 'planned', ?, ?, ?)",
                    (key, batch, currency, attempt, payload, len(keys), now),
                )
                if not (overlap and claimed_all):  # else written with the claims
                    db.executemany(
                        "INSERT INTO chunk_rows(chunk_key, row_key, position) VALUES (?, ?, ?)",
                        [(key, rk, i) for i, rk in enumerate(keys)],
                    )
                self._event(batch, "chunk_planned", chunk_key=key, rows=len(keys), attempt=attempt)
            if not (overlap and claimed_all):
                self._mark_planned(db, batch, planned, now)
        return held

    def _plan_writes(
        self,
        db: Database,
        batch: str,
        owner: tuple[str, str],
        claims: tuple[str, int],
        members: str,
        planned: str,
        now: str,
    ) -> list[Callable[[], bool]]:
        """SQLite: `save_plan`'s claims, chunk rows and planned rows, as steps to run in
        order (`_Steps`), each one statement over a JSON array bound once (`json_each`),
        so SQLite runs it with the GIL released, start to end, while the caller makes the
        payloads: per-row statements (`executemany`) would take the GIL back after every
        row, and wait for it behind the caller each time. The claims step returns False,
        with nothing written, when a claim was not new (another batch's: the caller then
        claims chunk by chunk and writes the rest itself), and the other steps do not run.

        The chunk rows precede their chunks (written once the payloads are made), so the
        foreign key to `chunks` is checked at the commit (`defer_foreign_keys`, which
        SQLite resets when the transaction ends)."""
        provider, account = owner
        claims_json, claim_count = claims

        def claim() -> bool:
            def insert() -> int:
                return int(
                    db.execute(_CLAIM_JSON, (provider, account, batch, now, claims_json)).rowcount
                )

            if not _all_new(db, insert, claim_count):
                return False
            db.execute("PRAGMA defer_foreign_keys = ON")
            return True

        def chunk_rows() -> bool:
            db.execute(
                "INSERT INTO chunk_rows(chunk_key, row_key, position)"
                " SELECT value ->> 0, value ->> 1, value ->> 2 FROM json_each(?)",
                (members,),
            )
            return True

        def mark_planned() -> bool:
            db.execute(_PLANNED_JSON, (now, planned))
            return True

        return [claim, chunk_rows, mark_planned]

    def _mark_planned(
        self, db: Database, batch: str, planned: list[tuple[int, str, str]], now: str
    ) -> None:
        """Mark the rows planned, in the order they are stored in (`_planned_rows`)."""
        # In that order (on SQLite, by rowid: no search of the key's index either), the
        # table's and the batch indexes' pages are visited in one sweep rather than once
        # per chunk at random (the chunks hold rows in key order, scattered over a large
        # batch's table).
        if self.backend == "sqlite":
            db.executemany(
                "UPDATE rows SET state = 'planned', chunk_key = ?, updated_at = ?"
                " WHERE rowid = ? AND batch = ? AND row_key = ?",
                [(chunk, now, place, batch, key) for place, key, chunk in planned],
            )
        else:
            db.executemany(
                "UPDATE rows SET state = 'planned', chunk_key = ?, updated_at = ?"
                " WHERE batch = ? AND row_key = ?",
                [(chunk, now, batch, key) for _, key, chunk in planned],
            )

    def discard_unsent_plans(
        self, batch: str, chunk_keys: Sequence[str] | None = None, *, stale_only: bool = False
    ) -> int:
        """Planned chunks that never left can be re-planned freely: nothing was sent.

        All of the batch's planned chunks, only those of `chunk_keys`, or (stale_only)
        only those that no longer hold exactly their rows as planned (a row changed,
        left the sheet or was held). The others keep their composition and key, so a
        row added to the sheet later never re-slices them: if a restored ledger calls a
        sent chunk `planned`, it goes out again under the key the provider knows.
        """
        with self._tx() as db:
            if stale_only:
                planned = [
                    r[0]
                    for r in db.execute(
                        "SELECT c.chunk_key FROM chunks c WHERE c.batch = ? AND c.state = 'planned'"
                        " AND (c.row_count != (SELECT COUNT(*) FROM rows r WHERE r.batch = c.batch"
                        " AND r.chunk_key = c.chunk_key AND r.state = 'planned' AND r.in_sheet = 1)"
                        " OR c.row_count != (SELECT COUNT(*) FROM chunk_rows cr"
                        " WHERE cr.chunk_key = c.chunk_key))",
                        (batch,),
                    )
                ]
            else:
                planned = [
                    r[0]
                    for r in db.execute(
                        "SELECT chunk_key FROM chunks WHERE batch = ? AND state = 'planned'",
                        (batch,),
                    )
                ]
            keys = planned if chunk_keys is None else [k for k in planned if k in set(chunk_keys)]
            for key in keys:
                db.execute(
                    "UPDATE rows SET state = 'pending', chunk_key = NULL, updated_at = ?"
                    " WHERE batch = ? AND chunk_key = ? AND state = 'planned'",
                    (utc_now(), batch, key),
                )
                members = [
                    r[0]
                    for r in db.execute(
                        "SELECT row_key FROM chunk_rows WHERE chunk_key = ?", (key,)
                    )
                ]
                self._release_claims(db, batch, members)
                db.execute("DELETE FROM chunk_rows WHERE chunk_key = ?", (key,))
                db.execute("DELETE FROM chunks WHERE chunk_key = ?", (key,))
                self._event(batch, "chunk_discarded", chunk_key=key)
        return len(keys)

    def clear_reference_holds(self, batch: str) -> None:
        """Rows held because another batch had their reference: ask again this run."""
        with self._tx() as db:
            cleared = db.execute(
                "UPDATE rows SET state = 'pending', error_code = NULL, error_message = NULL,"
                " failure_kind = NULL WHERE batch = ? AND state = 'held' AND error_code = ?",
                (batch, HELD_ELSEWHERE),
            ).rowcount
            if cleared:  # every change to a row leaves an event (see `change_stamp`)
                self._event(batch, "holds_cleared", count=cleared)

    def references_taken_elsewhere(self, batch: str, row_keys: Sequence[str]) -> set[str]:
        """Row keys of `batch` whose reference another batch of the account holds."""
        owner = self._owner(self._db, batch)
        if owner is None:
            return set()
        return set(
            self._held_elsewhere(
                self._db, batch, owner, self._references_of(self._db, batch, row_keys)
            )
        )

    def pending_taken_elsewhere(self, batch: str) -> set[str]:
        """`references_taken_elsewhere` for every pending row of `batch` in the sheet
        (recovery's rows): their references read in one statement, not a key list's
        slices (a new 20,000-row sheet is 50 of them)."""
        owner = self._owner(self._db, batch)
        if owner is None:
            return set()
        mine: dict[str, list[str]] = {}
        for key, reference in plain_rows(
            self._db,
            "SELECT row_key, reference FROM rows WHERE batch = ? AND state = 'pending'"
            " AND in_sheet = 1 AND reference IS NOT NULL",
            (batch,),
        ):
            mine.setdefault(str(reference), []).append(str(key))
        return set(self._held_elsewhere(self._db, batch, owner, mine))

    @staticmethod
    def _owner(db: Database, batch: str) -> tuple[str, str] | None:
        """The batch's account: (provider, account id); None for a batch not recorded."""
        found = db.execute(
            "SELECT provider, account_id FROM batches WHERE batch = ?", (batch,)
        ).fetchone()
        return None if found is None else (str(found[0]), str(found[1]))

    @staticmethod
    def _references_of(db: Database, batch: str, row_keys: Sequence[str]) -> dict[str, list[str]]:
        """reference -> the row keys among `row_keys` (rows of `batch`) that carry it."""
        mine: dict[str, list[str]] = {}
        for part, marks in in_slices(row_keys, 400):
            for r in db.execute(
                f"SELECT row_key, reference FROM rows WHERE batch = ? AND row_key IN ({marks})"
                " AND reference IS NOT NULL",
                (batch, *part),
            ):
                mine.setdefault(str(r[1]), []).append(str(r[0]))
        return mine

    def _sheet_rows_of(
        self, db: Database, batch: str, row_keys: Sequence[str]
    ) -> dict[str, tuple[int, str | None]]:
        """row key -> (place, reference) of the rows of `batch` among `row_keys`; the
        place is where the row is stored: SQLite's rowid (the order the sync inserted
        the rows in), else its sheet position."""
        found: dict[str, tuple[int, str | None]] = {}
        place = "rowid" if self.backend == "sqlite" else "source_row"
        for part, marks in in_slices(row_keys, 400):
            found.update(
                (key, (place_of, reference))
                for key, place_of, reference in plain_rows(
                    db,
                    f"SELECT row_key, {place}, reference FROM rows"
                    f" WHERE batch = ? AND row_key IN ({marks})",
                    (batch, *part),
                )
            )
        return found

    def _hold_taken(self, db: Database, batch: str, taken: Taken, now: str) -> None:
        """Hold the rows whose reference another batch holds (`HELD_ELSEWHERE`)."""
        for row_key, (other, state, reference) in taken.items():
            db.execute(
                "UPDATE rows SET state = 'held', error_code = ?, error_message = ?,"
                " failure_kind = NULL, updated_at = ? WHERE batch = ? AND row_key = ?",
                (
                    HELD_ELSEWHERE,
                    held_elsewhere_message(reference, state, other),
                    now,
                    batch,
                    row_key,
                ),
            )
            self._event(batch, "row_held", row_key=row_key, code=HELD_ELSEWHERE,
                        other_batch=other)  # fmt: skip

    @staticmethod
    def _claim_all(
        db: Database,
        batch: str,
        owner: tuple[str, str],
        claims: Sequence[tuple[str, str]],
        now: str,
    ) -> bool:
        """Claim every reference of `claims` ((reference, row key of `batch`), in the
        claims' key order) at once. True when every claim was new, so none can be
        another batch's; otherwise nothing is claimed (a savepoint undoes it) and False.
        """
        if not claims:
            return True
        provider, account = owner

        def insert() -> int:
            inserted = 0
            for start in range(0, len(claims), 400):
                inserted += db.executemany(
                    _CLAIM,
                    [
                        (provider, account, ref, batch, key, now)
                        for ref, key in claims[start : start + 400]
                    ],
                ).rowcount
            return inserted

        return _all_new(db, insert, len(claims))

    def _claim_references(
        self,
        db: Database,
        batch: str,
        owner: tuple[str, str],
        mine: dict[str, list[str]],
        now: str,
    ) -> Taken:
        """Claim the references `mine` (reference -> row keys of `batch`) for the batch's
        account, `owner` (provider, account id).

        Returns the rows whose reference another batch has claimed, and then claims
        nothing (a savepoint undoes this chunk's claims). A claim whose holding row
        is known and has left CLAIMING_STATES is stale and taken over (releasing it
        happens with the row's transition; this only keeps a missed release from
        holding rows forever). A claim whose row this ledger cannot see is never
        taken over: it may be another writer's, so the row is held.

        The common case costs one pipelined insert: when every claim was new (the
        insert's row count is the number of references), no claim can be another
        batch's, so the existing claims are not read back.
        """
        refused: Taken = {}
        if not mine:
            return refused
        provider, account = owner
        db.execute("SAVEPOINT claim_chunk")
        for part, marks in in_slices(list(mine), 400):
            inserted = db.executemany(
                _CLAIM, [(provider, account, ref, batch, mine[ref][0], now) for ref in part]
            ).rowcount
            if inserted == len(part):
                continue  # all new: each is ours
            for claim in db.execute(
                "SELECT c.reference, c.batch, c.row_key, r.state FROM reference_claims c"
                " LEFT JOIN rows r ON r.batch = c.batch AND r.row_key = c.row_key"
                f" WHERE c.provider = ? AND c.account_id = ? AND c.reference IN ({marks})",
                (provider, account, *part),
            ).fetchall():
                reference, other, other_key, state = claim[0], claim[1], claim[2], claim[3]
                row_key = mine[reference][0]
                if (other, other_key) == (batch, row_key):
                    continue  # ours: just claimed, or kept from an earlier plan
                if other == batch or (state is not None and state not in CLAIMING_STATES):
                    db.execute(
                        "UPDATE reference_claims SET batch = ?, row_key = ?, claimed_at = ?"
                        " WHERE provider = ? AND account_id = ? AND reference = ?",
                        (batch, row_key, now, provider, account, reference),
                    )
                    continue
                for key in mine[reference]:
                    refused[key] = (other, state or "claimed", reference)
        if refused:
            db.execute("ROLLBACK TO SAVEPOINT claim_chunk")
        db.execute("RELEASE SAVEPOINT claim_chunk")
        return refused

    @staticmethod
    def _held_elsewhere(
        db: Database, batch: str, owner: tuple[str, str], mine: dict[str, list[str]]
    ) -> Taken:
        """row key -> (other batch, its row's state, reference) for the references of
        `mine` (reference -> row keys of `batch`) that another batch of the same account,
        `owner`, has planned, in flight or succeeded (CLAIMING_STATES).

        Driven by the references themselves (an index search per reference on
        `rows_by_reference`), so its cost does not grow with the batch, whatever the
        planner's statistics say about a freshly filled table."""
        found: list[tuple[str, str, str]] = []
        for part, marks in in_slices(sorted(mine), 400):  # the index's order
            found += plain_rows(
                db,
                "SELECT reference, batch, state FROM rows"
                f" WHERE reference IN ({marks}) AND batch != ?"
                f" AND state IN ({in_claiming_states()})",
                (*part, batch),
            )
        if not found:
            return {}
        # Which of those batches are this account's: few, and asked once, so the
        # statement above stays a search of `rows_by_reference` alone (joined to
        # `batches`, a planner without statistics drives it from the batch instead).
        same_account: set[str] = set()
        for part, marks in in_slices(sorted({other for _, other, _ in found}), 400):
            same_account.update(
                str(r[0])
                for r in db.execute(
                    "SELECT batch FROM batches WHERE provider = ? AND account_id = ?"
                    f" AND batch IN ({marks})",
                    (*owner, *part),
                )
            )
        taken: Taken = {}
        for reference, other, state in found:
            if other in same_account:
                for key in mine[reference]:
                    taken.setdefault(key, (other, state, reference))
        return taken

    def mark_pending_reason(self, batch: str, currency: str, code: str, message: str) -> int:
        """Annotate the pending rows paid from a wallet (e.g. insufficient funds)."""
        with self._tx() as db:
            # The paying wallet is the row's payment_currency, else its currency; read
            # in Python so the SQL stays free of a dialect's JSON functions.
            keys = [
                r[0]
                for r in db.execute(
                    "SELECT row_key, currency, fields FROM rows WHERE batch = ?"
                    " AND in_sheet = 1 AND state = 'pending'"
                    " AND (failure_kind IS NULL OR failure_kind != 'release_unconfirmed')",
                    (batch,),
                )
                if (json.loads(r[2]).get("payment_currency") or r[1]) == currency
            ]
            now = utc_now()
            for part, marks in in_slices(keys):
                db.execute(
                    "UPDATE rows SET error_code = ?, error_message = ?,"
                    f" failure_kind = 'retryable', updated_at = ? WHERE batch = ?"
                    f" AND row_key IN ({marks})",
                    (code, message, now, batch, *part),
                )
            self._event(batch, "rows_held", currency=currency, code=code, count=len(keys))
            return len(keys)

    def claimed_request_ids(self, batch: str, except_chunk: str | None = None) -> frozenset[str]:
        """Provider order requests already tied to a chunk of this batch's account."""
        return frozenset(
            r[0]
            for r in self._db.execute(
                "SELECT c.request_id FROM chunks c JOIN batches b ON b.batch = c.batch"
                " JOIN batches mine ON mine.batch = ?"
                " WHERE c.request_id IS NOT NULL AND b.provider = mine.provider"
                " AND b.account_id = mine.account_id AND c.chunk_key != ?",
                (batch, except_chunk or ""),
            )
        )
