"""The end of a run's read of its rows, in two parts: what the sheet gave them, early.

After `runner.execute()` the run reads every row of its batch once, for rows.csv,
summary.json and the workbook (`execute.run.read_batch`): a second of one core at
20,000 rows, most of it decoding the cells each row's sheet gave it and rendering
them. Those (`queries.STATIC_COLUMNS`: reference, content hash, cells, pass-through
cells, currency, amounts, place in the sheet) are written only by the sheet sync,
which a run does in `prepare`, before its first send, under the batch's lock; sending
and settling a row write only `queries.DYNAMIC_COLUMNS`. So once the last request is
sent they are what they will be at the end, and a thread of the run reads them
(`read_early`, through a read-only connection of its own: SQLite's WAL gives it one
consistent snapshot and never blocks the runner's writes) while the run waits on the
provider to create its orders.

At the end `combine` reads only what sending and settling wrote, with the values
that show a row is still the one read early (key, place, in-sheet, content hash,
pass-through cells; `queries.EARLY_CHECK`). A row the early read did not see, or
whose values differ, is read whole, as before: the records are always the ledger's
at the end, the early read only saves decoding what did not change. A batch of
more than `EARLY_ROWS` rows is not read early: its end keeps to pages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from batcher.core.collector import collector_paused
from batcher.ledger.backend import connect
from batcher.ledger.location import LedgerLocation
from batcher.ledger.queries import EARLY_CHECK, finish_record, read_static_rows, static_record
from batcher.ledger.store import Ledger, RowRecord
from batcher.reporting.outputs import LineParts, static_line_parts
from batcher.reporting.row_source import explain_skips

#: rows the early read decodes between two looks at whether to stop (`read_early`)
EARLY_SLICE = 50
#: the most rows read early: as many as a run plans at once (`runner.PLAN_PAGE_ROWS`),
#: so what the early read holds is bounded as planning's memory is
EARLY_ROWS = 50_000


@dataclass(frozen=True, slots=True)
class EarlyRow:
    check: tuple[Any, ...]  # what the end compares (`queries.EARLY_CHECK`)
    record: RowRecord  # `queries.static_record` of the row: finished by `combine`
    parts: LineParts | None  # its rows.csv cells from the sheet; None: not in the sheet


class EarlyRows:
    """What the early read found: each row's static part, by key. Taken once (`take`):
    the end finishes the records it holds."""

    def __init__(self, batch: str, rows: dict[str, EarlyRow]) -> None:
        self.batch = batch
        self._rows: dict[str, EarlyRow] | None = rows

    def take(self) -> dict[str, EarlyRow]:
        rows, self._rows = self._rows, None
        if rows is None:
            raise RuntimeError("the early read of the rows was taken already")
        return rows


def read_early(
    location: LedgerLocation,
    batch: str,
    limit: int = EARLY_ROWS,
    cancelled: Callable[[], bool] = lambda: False,
) -> EarlyRows | None:
    """The static part of every row a report of `batch` shows, read through a
    read-only connection of its own (SQLite only), decoded and its rows.csv cells
    rendered; None for a PostgreSQL ledger, more than `limit` rows, or when
    `cancelled()` turns true on the way.

    `cancelled` is asked every `EARLY_SLICE` rows: a caller running this beside
    other threads may also give them the interpreter there (`execute.run._EarlyRead`)."""
    if location.backend != "sqlite":
        return None
    db = connect(location, timeout=5.0)
    try:
        db.execute("PRAGMA query_only=ON")
        raws = read_static_rows(db, batch, limit, cancelled, EARLY_SLICE * 4)
    finally:
        db.close()
    if raws is None:
        return None
    rows: dict[str, EarlyRow] = {}
    headers: list[str] | None = None  # as rows.csv's: the first row in the sheet's
    with collector_paused():
        for at, raw in enumerate(raws):
            if at % EARLY_SLICE == 0 and cancelled():
                return None
            record = static_record(raw)
            parts = None
            if record.in_sheet:  # a line of rows.csv
                if headers is None:
                    headers = list(record.passthrough)
                parts = static_line_parts(
                    record.source_row, record.row_key, record.reference, record.fields,
                    record.face_value, record.currency, record.passthrough, headers,
                )  # fmt: skip
            rows[record.row_key] = EarlyRow(EARLY_CHECK(raw), record, parts)
    return EarlyRows(batch, rows)


@dataclass(frozen=True)
class EndRows:
    """The batch's rows in report order as the ledger holds them at the end."""

    records: list[RowRecord]
    #: each record's rows.csv cells from the early read (None: render them whole)
    parts: list[LineParts | None]
    keys: list[str]
    in_sheet: int
    #: how many rows were read whole (not seen early, or changed since)
    read_whole: int


def combine(ledger: Ledger, batch: str, early: EarlyRows) -> EndRows:
    """Every row a report of `batch` shows, in its order, as the ledger holds it now:
    what sending and settling wrote read now (`end_rows`), the rest from `early`."""
    assert early.batch == batch
    known = early.take()
    same = _as_read_early(known, ledger.end_rows(batch, in_order=False))
    if same is not None:
        return EndRows(explain_skips(ledger, batch, same[0]), same[1], list(known), same[2], 0)
    records: list[RowRecord | None] = []
    parts: list[LineParts | None] = []
    keys: list[str] = []
    in_sheet = 0
    whole: list[str] = []
    whole_in_sheet: dict[str, int] = {}  # of the rows read whole: in the sheet (1) or not
    for end in ledger.end_rows(batch):
        key = end[0]
        keys.append(key)
        in_sheet += end[2]
        got = known.get(key)
        if got is not None and got.check == end[:5]:
            records.append(finish_record(got.record, end))
            parts.append(got.parts)
        else:
            whole.append(key)
            whole_in_sheet[key] = end[2]
            records.append(None)
            parts.append(None)
    if whole:
        found = ledger.rows_by_key(batch, whole)
        # a key no longer in the ledger is left out (its key and in-sheet count too), as
        # a paged read leaves it out
        kept = [r is not None or k in found for r, k in zip(records, keys, strict=True)]
        in_sheet -= sum(whole_in_sheet[k] for k, stays in zip(keys, kept, strict=True) if not stays)
        parts = [p for p, stays in zip(parts, kept, strict=True) if stays]
        records = [r if r is not None else found.get(k) for r, k in zip(records, keys, strict=True)]
        records = [r for r in records if r is not None]
        keys = [k for k, stays in zip(keys, kept, strict=True) if stays]
    done = explain_skips(ledger, batch, records)  # type: ignore[arg-type]
    return EndRows(done, parts, keys, in_sheet, len(whole))


def _as_read_early(
    known: dict[str, EarlyRow], ends: list[tuple[Any, ...]]
) -> tuple[list[RowRecord], list[LineParts | None], int] | None:
    """The records, line parts and in-sheet count of the rows in the early read's order,
    when `ends` (read in no order) are the rows the early read saw, each with the same
    check values: the keys, in-sheet flags and places that order a report are then
    those it was read in. None otherwise: the end reads its rows in order."""
    if len(ends) != len(known):
        return None
    by_key = {end[0]: end for end in ends}
    records: list[RowRecord] = []
    parts: list[LineParts | None] = []
    in_sheet = 0
    for key, got in known.items():
        end = by_key.get(key)
        if end is None or got.check != end[:5]:
            return None  # its records finished so far are finished again, the same
        records.append(finish_record(got.record, end))
        parts.append(got.parts)
        in_sheet += end[2]
    return records, parts, in_sheet
