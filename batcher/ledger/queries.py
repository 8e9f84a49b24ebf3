"""Reads for reports, status and the runner: nothing here writes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from decimal import Decimal
from itertools import islice
from operator import itemgetter
from typing import Any, TypeVar, cast

import msgspec

from batcher.core.states import ROW_STATES
from batcher.ledger.backend import plain_rows
from batcher.ledger.connection import LedgerConnection, in_pages, in_slices
from batcher.ledger.records import (
    ChunkRecord,
    LineValues,
    RowRecord,
    SettledRow,
    _cells,
    _decimal,
)

#: every column of `rows`, in the order of `RowRecord`'s fields: a row read with them
#: is built positionally (`row_record`), a few times faster than `RowRecord.from_sql`
ROW_COLUMNS = ", ".join(f.name for f in dataclasses.fields(RowRecord))
#: where a row read with `ROW_COLUMNS` holds its key and state
ROW_KEY, ROW_STATE = 8, 11
#: what `settled_row` reads of a row (its key, state and conflict first)
_FACT_COLUMNS = (
    "row_key, state, conflict, source_row, in_sheet, reference, currency, face_value, cost,"
    " cost_currency, order_id, order_request_id, transaction_id, chunk_key, retry_group,"
    " attempt, voucher_last4, error_code, error_message, created_at, updated_at,"
    " succeeded_at, fields, passthrough"
)

#: the cell naming the wallet that pays (`cost_lines`), and how it appears in the JSON
_PAYING = "payment_currency"
_PAYING_KEY = json.dumps(_PAYING)


class LedgerQueries(LedgerConnection):
    """Read-only questions to the ledger."""

    def batch_info(self, batch: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM batches WHERE batch = ?", (batch,)).fetchone()
        if row is None:
            return None
        info = dict(row)
        info["sheet_headers"] = json.loads(info["sheet_headers"])
        info["sheet_columns"] = json.loads(info["sheet_columns"])
        return info

    def change_stamp(self, batch: str) -> str | None:
        """What the batch's rows, chunks and sheet look like, in a few characters: equal
        stamps mean nothing a report shows has changed in between. None: no such batch.

        Every write to a batch's rows or chunks appends an event, so the last event id
        (runs starting and finishing aside: they change no row) stands for them; the
        batch's own record (created_at tells a replaced ledger apart) covers the rest.
        Webhook evidence counts too: an event for an order request no batch sent shows
        on the report of every batch that ran when it arrived (its Orphans sheet), so a
        new event or a new delivery of one changes every stamp.
        """
        info = self._db.execute(
            "SELECT created_at, source_sha256, sheet_headers, sheet_columns FROM batches"
            " WHERE batch = ?",
            (batch,),
        ).fetchone()
        if info is None:
            return None
        last = self._db.execute(
            "SELECT MAX(id) FROM events WHERE batch = ?"
            " AND kind NOT IN ('run_started', 'run_finished')",
            (batch,),
        ).fetchone()[0]
        evidence = self._db.execute(
            "SELECT MAX(id), SUM(deliveries) FROM webhook_events"
        ).fetchone()
        text = json.dumps([last, *info, *evidence], ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]

    def run_summary(self, run_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT summary FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return json.loads(row[0]) if row and row[0] else None

    def batches(self) -> list[dict[str, Any]]:
        return [
            dict(r)
            for r in self._db.execute(
                "SELECT batch, provider, account_id, source_path, source_sha256, created_at,"
                " updated_at FROM batches ORDER BY updated_at DESC"
            )
        ]

    def runs(self, batch: str, limit: int = 10) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT run_id, command, pid, host, started_at, finished_at, exit_code FROM runs"
            " WHERE batch = ? ORDER BY started_at DESC LIMIT ?",
            (batch, limit),
        )
        return [dict(r) for r in rows]

    def events(self, batch: str, kind: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM events WHERE batch = ?"
        params: list[Any] = [batch]
        if kind:
            sql += " AND kind = ?"
            params.append(kind)
        return [dict(r) for r in self._db.execute(sql + " ORDER BY id", params)]

    def rows(
        self, batch: str, *, in_sheet_only: bool = True, state: str | None = None
    ) -> list[RowRecord]:
        """The batch's rows in sheet order; only those in the latest sheet unless told,
        and only those in `state` if given."""
        sql, args = "SELECT * FROM rows WHERE batch = ?", [batch]
        if in_sheet_only:
            sql += " AND in_sheet = 1"
        if state is not None:
            sql += " AND state = ?"
            args.append(state)
        return [RowRecord.from_sql(r) for r in self._db.execute(sql + " ORDER BY source_row", args)]

    def row_keys(self, batch: str, state: str, *, by: str = "source_row") -> list[str]:
        """Keys of the batch's rows in `state` in the sheet, in sheet order or, with
        `by="row_key"`, in key order: the light first half of a paged read (`rows_in_pages`)."""
        order = {"source_row": "source_row", "row_key": "row_key"}[by]
        return [
            r[0]
            for r in self._db.execute(
                "SELECT row_key FROM rows WHERE batch = ? AND state = ? AND in_sheet = 1"
                f" ORDER BY {order}",
                (batch, state),
            )
        ]

    def report_keys(self, batch: str) -> tuple[list[str], int]:
        """Keys of the rows a report shows, in its order: the sheet's rows in sheet order,
        then the orders of rows no longer in it; and how many of them are in the sheet.

        Only keys: a report reads the rows themselves a page at a time (`rows_in_pages`),
        so its memory does not grow by a whole row per row of the batch."""
        # One statement, one search of the batch: the sheet's rows first (in_sheet 1
        # sorts before 0), each part in sheet order.
        keys: list[str] = []
        in_sheet = 0
        for key, sheet in plain_rows(
            self._db,
            "SELECT row_key, in_sheet FROM rows WHERE batch = ? AND (in_sheet = 1"
            " OR (in_sheet = 0 AND order_id IS NOT NULL AND order_id != ''))"
            " ORDER BY in_sheet DESC, source_row, row_key",
            (batch,),
        ):
            keys.append(key)
            in_sheet += sheet
        return keys, in_sheet

    def style_currencies(self, batch: str) -> set[str]:
        """Every currency the rows a report shows name, as their card's or what paid for
        it (`RowFacts.style_currencies` of them): the money styles their lines use."""
        found: set[str] = set()
        for currency, paid_in in plain_rows(
            self._db, f"SELECT DISTINCT currency, cost_currency{_REPORT_ROWS_ANY_ORDER}", (batch,)
        ):
            found.update(c for c in (currency, paid_in) if c)
        return found

    def end_rows(self, batch: str, *, in_order: bool = True) -> list[tuple[Any, ...]]:
        """`END_COLUMNS` of the rows a report shows, in its order (`report_keys`'), or in
        none (`in_order` false: no sort of the whole rows): what the end of a run reads
        of each row when their static part was read early."""
        rows = _REPORT_ROWS if in_order else _REPORT_ROWS_ANY_ORDER
        return list(plain_rows(self._db, f"SELECT {END_COLUMNS}{rows}", (batch,)))

    def order_keys(self, batch: str) -> Iterator[tuple[str | None, str | None]]:
        """(order id, order request id) of the batch's rows that hold either."""
        for r in self._db.execute(
            "SELECT order_id, order_request_id FROM rows WHERE batch = ?"
            " AND (order_id IS NOT NULL OR order_request_id IS NOT NULL)",
            (batch,),
        ):
            yield r[0], r[1]

    def rows_in_pages(
        self, batch: str, keys: Sequence[str], page: int = 5_000
    ) -> Iterator[list[RowRecord]]:
        """The rows of `keys`, in that order, a page at a time: memory is bounded by the
        page, not the batch. A key no longer in the ledger is left out."""
        for part in in_pages(keys, page):
            found = self.rows_by_key(batch, part)
            yield [found[k] for k in part if k in found]

    def raw_rows_in_pages(
        self, batch: str, keys: Sequence[str], page: int = 5_000
    ) -> Iterator[list[Any]]:
        """As `rows_in_pages`, each row as read with `ROW_COLUMNS`, not decoded: for a
        reader that decodes only what it shows (`raw_line_values`)."""
        for part in in_pages(keys, page):
            found = {r[ROW_KEY]: r for r in self._by_key(batch, part, ROW_COLUMNS)}
            yield [found[k] for k in part if k in found]

    def line_rows_in_pages(
        self, batch: str, keys: Sequence[str], page: int = 5_000
    ) -> Iterator[list[Any]]:
        """As `raw_rows_in_pages`, each row read with `LINE_COLUMNS` only: what a line of
        the Orders sheet shows (`read_line_values`), a third less to read; read in the
        report's order where it can (`_in_report_order`)."""
        return self._in_report_order(batch, keys, page, LINE_COLUMNS)

    def fact_rows_in_pages(
        self, batch: str, keys: Sequence[str], page: int = 5_000
    ) -> Iterator[list[RowRecord | SettledRow]]:
        """As `rows_in_pages`, for a reader that only sums the rows: a row settled
        without a question (succeeded, no conflict) comes as a `SettledRow`, read from a
        few columns, and only the others as whole `RowRecord`s. Read in the report's
        order where it can (`_in_report_order`)."""
        for raws in self._in_report_order(batch, keys, page, _FACT_COLUMNS):
            whole = [r[0] for r in raws if not _settled_plainly(r)]
            if not whole:  # as good as always
                yield [settled_row(r) for r in raws]
                continue
            records = self.rows_by_key(batch, whole)
            yield [
                settled_row(r) if _settled_plainly(r) else records[r[0]]
                for r in raws
                if r[0] in records or _settled_plainly(r)
            ]

    def _in_report_order(
        self, batch: str, keys: Sequence[str], page: int, columns: str
    ) -> Iterator[list[Any]]:
        """`columns` (the row key first) of the rows of `keys`, in that order, a page at a
        time; a key no longer in the ledger is left out.

        Keys in the report's order (`report_keys`, or its first ones: an early child's)
        are read on SQLite by one statement in that order, not looked up one by one: two
        thirds of the CPU at 100k rows. From the first row where the ledger's differ from
        `keys` (a row gone or added since, keys in another order), the rest is read by
        key, as it all is on PostgreSQL (whose driver would fetch the whole result at
        once) and for more than `ORDERED_READ_MAX_ROWS` keys. The statement stays open
        while its pages are used (a WAL reader: writers go on)."""
        done = 0
        if keys and self.backend == "sqlite" and len(keys) <= ORDERED_READ_MAX_ROWS:
            # a generator: closed when done with, which ends its statement
            ordered = cast(
                Generator[Any, None, None],
                plain_rows(self._db, f"SELECT {columns}{_REPORT_ROWS}", (batch,)),
            )
            try:
                while done < len(keys):
                    wanted = list(keys[done : done + page])
                    read = list(islice(ordered, len(wanted)))
                    same = _same_keys(read, wanted)
                    if same:
                        yield read[:same]
                        done += same
                    if same < len(wanted):
                        break
            finally:
                ordered.close()
        for part in in_pages(keys[done:], page):
            found = {r[0]: r for r in self._by_key(batch, part, columns)}
            yield [found[k] for k in part if k in found]

    def amounts(self, batch: str, state: str) -> list[tuple[str, Decimal, Decimal | None]]:
        """(currency, face value, estimated cost) of the batch's rows in `state` in the
        sheet: the plan's totals without decoding every row."""
        return [
            (r[0], Decimal(r[1]), None if r[2] is None else Decimal(r[2]))
            for r in self._db.execute(
                "SELECT currency, face_value, est_cost FROM rows"
                " WHERE batch = ? AND state = ? AND in_sheet = 1",
                (batch, state),
            )
        ]

    def cost_lines(
        self, batch: str, state: str
    ) -> Iterator[tuple[int, str, str, Decimal, Decimal | None, str | None]]:
        """(sheet row, row key, card currency, face value, estimated cost, the
        `payment_currency` cell or None) of the batch's rows in `state` in the sheet, in
        sheet order: what the funds rule reads, without decoding whole rows (a million
        pending rows would otherwise be decoded once for it and once for planning)."""
        for source_row, row_key, currency, face_value, est_cost, fields in self._db.execute(
            "SELECT source_row, row_key, currency, face_value, est_cost, fields FROM rows"
            " WHERE batch = ? AND state = ? AND in_sheet = 1 ORDER BY source_row",
            (batch, state),
        ):
            # The cells are JSON we wrote (plain keys): a row without the key is not decoded.
            paying = json.loads(fields).get(_PAYING) if _PAYING_KEY in fields else None
            yield (
                source_row, row_key, sys.intern(currency), _decimal(face_value),
                None if est_cost is None else _decimal(est_cost), paying,
            )  # fmt: skip

    def has_new_unreferenced_rows(self, batch: str) -> bool:
        """Whether a pending first-attempt row without a reference is in the sheet: only
        such a row can be an edit of an ordered row (execute/recovery.py)."""
        return (
            self._db.execute(
                "SELECT 1 FROM rows WHERE batch = ? AND state = 'pending' AND in_sheet = 1"
                " AND attempt = 1 AND reference IS NULL LIMIT 1",
                (batch,),
            ).fetchone()
            is not None
        )

    def rows_by_key(self, batch: str, keys: Iterable[str]) -> dict[str, RowRecord]:
        found: dict[str, RowRecord] = {}
        for r in self._by_key(batch, list(keys), ROW_COLUMNS):
            record = row_record(r)
            found[record.row_key] = record
        return found

    def orders_elsewhere(
        self, batch: str, references: Sequence[str]
    ) -> dict[str, tuple[str, str | None, str | None]]:
        """Reference -> (batch, order id, succeeded at) of its order in another batch.

        Read-only: says where a row skipped as "ordered in another batch" was ordered.
        """
        found: dict[str, tuple[str, str | None, str | None]] = {}
        wanted = sorted(set(references))
        for part, marks in in_slices(wanted):
            for r in self._db.execute(
                "SELECT reference, batch, order_id, succeeded_at FROM rows"
                f" WHERE reference IN ({marks}) AND state = 'succeeded' AND batch != ?"
                " ORDER BY succeeded_at",
                (*part, batch),
            ):
                found.setdefault(r[0], (r[1], r[2], r[3]))
        return found

    def orders_not_in_sheet(self, batch: str) -> int:
        """Orders the batch paid for rows no longer in its sheet (earlier sheets, same name)."""
        row = self._db.execute(
            "SELECT COUNT(*) FROM rows WHERE batch = ? AND in_sheet = 0 AND state = 'succeeded'"
            " AND order_id IS NOT NULL",
            (batch,),
        ).fetchone()
        return int(row[0])

    def batches_ordering_between(self, start: str, end: str) -> list[str]:
        """Batches with an order that succeeded in [start, end) (ledger timestamps, UTC)."""
        return [
            r[0]
            for r in self._db.execute(
                "SELECT DISTINCT batch FROM rows WHERE state = 'succeeded'"
                " AND succeeded_at >= ? AND succeeded_at < ? ORDER BY batch",
                (start, end),
            )
        ]

    def count_by_state(self, batch: str) -> dict[str, int]:
        counts: dict[str, int] = dict.fromkeys(map(str, ROW_STATES), 0)
        for r in self._db.execute(
            "SELECT state, COUNT(*) FROM rows WHERE batch = ? AND in_sheet = 1 GROUP BY state",
            (batch,),
        ):
            counts[r[0]] = r[1]
        return counts

    def chunk(self, chunk_key: str) -> ChunkRecord:
        row = self._db.execute("SELECT * FROM chunks WHERE chunk_key = ?", (chunk_key,)).fetchone()
        if row is None:
            raise KeyError(chunk_key)
        keys = [
            r[0]
            for r in self._db.execute(
                "SELECT row_key FROM chunk_rows WHERE chunk_key = ? ORDER BY position", (chunk_key,)
            )
        ]
        return ChunkRecord.from_sql(row, keys)

    def chunk_requests(self, batch: str) -> list[tuple[str, str | None]]:
        """(chunk key, order request id) of every chunk of the batch: what names its
        orders, without the chunks' payloads and rows (a million rows' worth of them)."""
        return [
            (r[0], r[1])
            for r in self._db.execute(
                "SELECT chunk_key, request_id FROM chunks WHERE batch = ?"
                " ORDER BY created_at, chunk_key",
                (batch,),
            )
        ]

    def chunk_keys(self, batch: str, states: Sequence[str]) -> list[str]:
        """The keys of the batch's chunks in `states`, in planned order: what a queue of
        sends needs, without each chunk's payload and rows."""
        marks = ",".join("?" * len(states))
        return [
            r[0]
            for r in self._db.execute(
                f"SELECT chunk_key FROM chunks WHERE batch = ? AND state IN ({marks})"
                " ORDER BY created_at, chunk_key",
                (batch, *states),
            )
        ]

    def chunk_count(self, batch: str, state: str) -> int:
        row = self._db.execute(
            "SELECT COUNT(*) FROM chunks WHERE batch = ? AND state = ?", (batch, state)
        ).fetchone()
        return int(row[0])

    def chunks(self, batch: str, states: Sequence[str]) -> list[ChunkRecord]:
        return [self.chunk(k) for k in self.chunk_keys(batch, states)]


def row_record(r: Any) -> RowRecord:
    """A row read with `ROW_COLUMNS`, as `RowRecord.from_sql` would make it from `SELECT *`:
    the same values, the shared text interned and the amounts shared Decimals.

    Built field by field through the slots (`RowRecord(...)` goes through the frozen
    dataclass's `object.__setattr__` per field): a report reads 100,000 rows twice.
    One decoding of each column: what the sheet gave (`static_record`), then what
    sending and settling wrote (`finish_record`), as the end of a run reads them."""
    row = tuple(r)
    return finish_record(static_record(row[:11]), _UNCHECKED + row[11:])


#: each field's slot, in `ROW_COLUMNS` order: sets it on a frozen record without
#: the dataclass's per-field `object.__setattr__`
_SLOTS = tuple(getattr(RowRecord, f.name).__set__ for f in dataclasses.fields(RowRecord))
_new = object.__new__


T = TypeVar("T")

#: the most texts a `_KeptByText` keeps before it starts again
_PASSTHROUGH_KEPT = 1 << 12


class _KeptByText(dict[str, T]):
    """What `make(text)` gives, made once per text and kept (a page's rows share a few
    pass-through cells: cost centres, teams); cleared when it holds `_PASSTHROUGH_KEPT`
    texts. A text already met is a plain dictionary lookup."""

    def __init__(self, make: Callable[[str], T]) -> None:
        super().__init__()
        self._make = make

    def __missing__(self, text: str) -> T:
        if len(self) >= _PASSTHROUGH_KEPT:
            self.clear()
        value = self[text] = self._make(text)
        return value


#: a row's pass-through cells, decoded once per text (every row gets a dictionary
#: of its own from them: `_passthrough`)
_PASSTHROUGH_ITEMS: _KeptByText[tuple[tuple[str, str], ...]] = _KeptByText(
    lambda text: tuple(_cells(text).items())
)


def _passthrough(text: str) -> dict[str, str]:
    return dict(_PASSTHROUGH_ITEMS[text])


def _settled_plainly(r: Any) -> bool:
    """A row read with `_FACT_COLUMNS` succeeded without a conflict: read light."""
    return bool(r[1] == "succeeded" and not r[2])


def settled_row(r: Any) -> SettledRow:
    """A succeeded row read with `_FACT_COLUMNS`: its amounts, product, pass-through
    headers, what names its order and what its line shows, the same values `row_record`
    gives (the sums, the matches and the lines over either are equal); its cells are
    kept undecoded."""
    (
        row_key, _state, _conflict, source_row, in_sheet, reference, currency, face_value,
        cost, cost_currency, order_id, order_request_id, transaction_id, chunk_key,
        retry_group, attempt, voucher_last4, error_code, error_message, created_at,
        updated_at, succeeded_at, fields, passthrough,
    ) = r  # fmt: skip
    intern = sys.intern
    product = product_code(fields)
    return SettledRow(
        row_key, source_row, bool(in_sheet), reference, intern(currency),
        _decimal(face_value), None if cost is None else _decimal(cost),
        None if cost_currency is None else intern(cost_currency), order_id,
        None if order_request_id is None else intern(order_request_id), transaction_id,
        None if chunk_key is None else intern(chunk_key), intern(retry_group),  # NOT NULL
        attempt, voucher_last4, None if error_code is None else intern(error_code),
        None if error_message is None else intern(error_message), intern(created_at),
        intern(updated_at), None if succeeded_at is None else intern(succeeded_at),
        intern(product) if isinstance(product, str) else product, _HEADERS[passthrough],
        fields, intern(passthrough),
    )  # fmt: skip


def settled_line_values(row: SettledRow) -> LineValues:
    """`records.line_values` of the row's whole record, from the `SettledRow` read of it:
    its cells decoded now, for its line (the Orders sheet)."""
    return (
        row.row_key, row.source_row, row.reference, json.loads(row.fields_json),
        _passthrough(row.passthrough_json), row.face_value, row.currency, row.cost,
        row.cost_currency, row.state, row.order_id, row.transaction_id, row.order_request_id,
        row.chunk_key, row.attempt, row.voucher_last4, row.error_code, row.error_message,
        row.conflict, row.in_sheet, row.created_at, row.updated_at, row.succeeded_at,
    )  # fmt: skip


_PRODUCT_KEY = '"product_code": "'


def product_code(fields: str) -> Any:
    """`json.loads(fields).get("product_code", "")`, without decoding the other cells
    when the product code is plain text (as good as always).

    In JSON text a quote inside a string is escaped, so `"product_code": "` can only
    be that key and the opening of its string value; a value with no backslash ends at
    the next quote and is its own text. Anything else (escapes, another type, the key
    twice, another layout) is decoded whole."""
    start = fields.find(_PRODUCT_KEY)
    if start > 0:
        start += len(_PRODUCT_KEY)
        end = fields.find('"', start)
        if end > 0 and "\\" not in fields[start:end] and fields.find(_PRODUCT_KEY, end) < 0:
            return fields[start:end]
    return json.loads(fields).get("product_code", "")


#: the pass-through headers a row's cells name, in its order, per text
_HEADERS: _KeptByText[tuple[str, ...]] = _KeptByText(
    lambda text: tuple(name for name, _ in _PASSTHROUGH_ITEMS[text])
)


#: what a line of the Orders sheet shows of a row, in `LineValues` order
LINE_COLUMNS = (
    "row_key, source_row, reference, fields, passthrough, face_value, currency, cost,"
    " cost_currency, state, order_id, transaction_id, order_request_id, chunk_key, attempt,"
    " voucher_last4, error_code, error_message, conflict, in_sheet, created_at, updated_at,"
    " succeeded_at"
)
#: where a row read with `LINE_COLUMNS` holds its state
LINE_STATE = 9


def _same_keys(rows: Sequence[Any], keys: Sequence[str]) -> int:
    """How many of the first rows (keys first) are those of `keys`, in that order."""
    if len(rows) == len(keys) and list(map(_FIRST, rows)) == keys:
        return len(keys)  # as good as always: one comparison in C
    same = 0
    for row, key in zip(rows, keys, strict=False):
        if row[0] != key:
            break
        same += 1
    return same


_FIRST = itemgetter(0)


def read_line_values(r: Any) -> LineValues:
    """`raw_line_values` of a row read with `LINE_COLUMNS`: the same values (but its
    pass-through cells: a dictionary shared with the rows of the same cells, read only)."""
    (
        row_key, source_row, reference, fields, passthrough, face_value, currency, cost,
        cost_currency, state, order_id, transaction_id, order_request_id, chunk_key, attempt,
        voucher_last4, error_code, error_message, conflict, in_sheet, created_at, updated_at,
        succeeded_at,
    ) = r  # fmt: skip
    return (
        row_key, source_row, reference, line_fields(fields), _LINE_PASSTHROUGH[passthrough],
        _decimal(face_value), currency, None if cost is None else _decimal(cost),
        cost_currency, state, order_id, transaction_id, order_request_id, chunk_key, attempt,
        voucher_last4, error_code, error_message, conflict, bool(in_sheet), created_at,
        updated_at, succeeded_at,
    )  # fmt: skip


#: a row's cells as the sheet gave them: text names, text values (as good as always)
_TEXT_CELLS = msgspec.json.Decoder(dict[str, str])


def line_fields(text: str) -> Any:
    """`json.loads(text)`, decoded in C when the cells are all text: 100,000 rows' cells
    for the Orders sheet, four times faster. msgspec gives the same dictionary as
    `json.loads` for any JSON object of text names and values it decodes (the same
    escapes, the last of a repeated name); what it refuses (another type of value, a
    lone surrogate, text `json.loads` may take or refuse) goes to `json.loads`, which
    says what it always said (tests/test_lines_fast.py holds them together)."""
    try:
        return _TEXT_CELLS.decode(text)
    except Exception:  # anything: json.loads decides, and raises what it raises
        return json.loads(text)


#: a line's pass-through cells, one dictionary for every line of the same cells,
#: never changed by its readers (the Orders sheet only reads them)
_LINE_PASSTHROUGH: _KeptByText[dict[str, str]] = _KeptByText(_passthrough)


def raw_line_values(r: Any) -> LineValues:
    """`records.line_values(row_record(r))` for a row read with `ROW_COLUMNS`, decoding
    only what a line shows, and nothing kept (the Orders sheet's 100,000 rows)."""
    return read_line_values(_LINE_OF_ROW(r))


#: a row read with `ROW_COLUMNS`, as read with `LINE_COLUMNS`
_LINE_OF_ROW = itemgetter(
    *(ROW_COLUMNS.split(", ").index(name) for name in LINE_COLUMNS.split(", "))
)


# --------------------------------------------------------------- the end of a run, early
#
# A run's end reads every row of its batch (`execute.run.read_batch`). What a row's
# sheet put in it, `STATIC_COLUMNS`, is written only by the sheet sync (and at insert),
# which a run does in `prepare`, before its first send, holding the batch's lock: from
# the last send on it is fixed, and may be read and decoded early, while the run waits
# on the provider (`reporting.early_rows`). The end reads only `END_COLUMNS`: what a
# row's sending and settling write, and the values (`EARLY_CHECK`) that show it is
# still the row read early.

#: what a row's sheet gave it: the first eleven columns of `ROW_COLUMNS`, in that order
STATIC_COLUMNS = ", ".join(ROW_COLUMNS.split(", ")[:11])
#: the rest of `ROW_COLUMNS`, in that order: what sending and settling a row write
DYNAMIC_COLUMNS = ", ".join(ROW_COLUMNS.split(", ")[11:])
#: what the end reads of each row: the check (key, sheet place, content, pass-through
#: cells, as read early), then `DYNAMIC_COLUMNS`
END_COLUMNS = "row_key, source_row, in_sheet, content_hash, passthrough, " + DYNAMIC_COLUMNS
#: where a row read with `STATIC_COLUMNS` holds the values the end checks, in the order
#: a row read with `END_COLUMNS` holds them first
EARLY_CHECK = itemgetter(8, 9, 10, 1, 3)
#: the check's place in a row read with `END_COLUMNS`, for a whole row (`row_record`)
_UNCHECKED = (None,) * 5
#: the most keys `_in_report_order` reads by one ordered statement: SQLite sorts the
#: rows for it (about 40 MB more at 100k rows: in its page cache, then in temporary
#: files), and an early child reads at most 200,000; a larger batch (a run's end at a
#: million rows) is looked up by key, page by page, as measured at that size
ORDERED_READ_MAX_ROWS = 200_000
#: a report's rows in its order (`report_keys`): the sheet's rows, then earlier orders
_REPORT_ROWS = (
    " FROM rows WHERE batch = ? AND (in_sheet = 1"
    " OR (in_sheet = 0 AND order_id IS NOT NULL AND order_id != ''))"
    " ORDER BY in_sheet DESC, source_row, row_key"
)
#: the same rows in no order (no sort of the whole rows)
_REPORT_ROWS_ANY_ORDER = _REPORT_ROWS[: _REPORT_ROWS.index(" ORDER BY")]


def read_static_rows(
    db: Any,
    batch: str,
    limit: int,
    cancelled: Callable[[], bool] = lambda: False,
    at_once: int = 1_000,
) -> list[tuple[Any, ...]] | None:
    """`STATIC_COLUMNS` of the rows a report of `batch` shows, in its order, through
    `db` (a connection of the caller's own: one statement, one snapshot); None when
    there are more than `limit` of them or `cancelled()` (asked every `at_once` rows)
    turns true on the way."""
    cursor = db.cursor()
    cursor.row_factory = None
    cursor.execute(f"SELECT {STATIC_COLUMNS}{_REPORT_ROWS}", (batch,))
    found: list[tuple[Any, ...]] = []
    while rows := cursor.fetchmany(at_once):
        found += rows
        if len(found) > limit or cancelled():
            cursor.close()
            return None
    return found


def static_record(r: tuple[Any, ...]) -> RowRecord:
    """A row read with `STATIC_COLUMNS`, decoded as `row_record` decodes those columns,
    into a record whose other fields are not set yet: `finish_record` sets them, once."""
    (
        reference, content_hash, fields, passthrough, currency, face_value, est_cost,
        batch, row_key, source_row, in_sheet,
    ) = r  # fmt: skip
    values = (
        reference, content_hash, _cells(fields), _passthrough(passthrough),
        sys.intern(currency), _decimal(face_value),
        None if est_cost is None else _decimal(est_cost), sys.intern(batch), row_key,
        source_row, bool(in_sheet),
    )  # fmt: skip
    record: RowRecord = _new(RowRecord)
    for put, value in zip(_SLOTS[:11], values, strict=True):
        put(record, value)
    return record


(
    _STATE, _ATTEMPT, _RETRY_GROUP, _FAILURE_KIND, _ERROR_CODE, _ERROR_MESSAGE,
    _PROVIDER_REQUEST_ID, _CONFLICT, _CHUNK_KEY, _ORDER_REQUEST_ID, _ORDER_ID,
    _TRANSACTION_ID, _COST, _COST_CURRENCY, _VOUCHER_LAST4, _PROVIDER_STATUS, _CREATED_AT,
    _UPDATED_AT, _SUCCEEDED_AT,
) = _SLOTS[11:]  # fmt: skip


def finish_record(record: RowRecord, end: tuple[Any, ...]) -> RowRecord:
    """`record` (`static_record`, not finished before) with the rest of its fields from
    its row read with `END_COLUMNS`: then the record `row_record` makes of the whole row.
    One call per field, without a tuple of them: the end of a run finishes every row."""
    (
        _key, _source_row, _in_sheet, _hash, _passthrough_text, state, attempt, retry_group,
        failure_kind, error_code, error_message, provider_request_id, conflict, chunk_key,
        order_request_id, order_id, transaction_id, cost, cost_currency, voucher_last4,
        provider_status, created_at, updated_at, succeeded_at,
    ) = end  # fmt: skip
    intern = sys.intern
    _STATE(record, intern(state))
    _ATTEMPT(record, attempt)
    _RETRY_GROUP(record, None if retry_group is None else intern(retry_group))
    _FAILURE_KIND(record, None if failure_kind is None else intern(failure_kind))
    _ERROR_CODE(record, None if error_code is None else intern(error_code))
    _ERROR_MESSAGE(record, None if error_message is None else intern(error_message))
    _PROVIDER_REQUEST_ID(
        record, None if provider_request_id is None else intern(provider_request_id)
    )
    _CONFLICT(record, conflict)
    _CHUNK_KEY(record, None if chunk_key is None else intern(chunk_key))
    _ORDER_REQUEST_ID(record, None if order_request_id is None else intern(order_request_id))
    _ORDER_ID(record, order_id)
    _TRANSACTION_ID(record, transaction_id)
    _COST(record, None if cost is None else _decimal(cost))
    _COST_CURRENCY(record, None if cost_currency is None else intern(cost_currency))
    _VOUCHER_LAST4(record, voucher_last4)
    _PROVIDER_STATUS(record, None if provider_status is None else intern(provider_status))
    _CREATED_AT(record, None if created_at is None else intern(created_at))
    _UPDATED_AT(record, None if updated_at is None else intern(updated_at))
    _SUCCEEDED_AT(record, None if succeeded_at is None else intern(succeeded_at))
    return record
