"""The batch's rows as the end of a run and the reports read them: a page at a time.

At a million rows, every row of the batch held at once as a `RowRecord` is over a
gigabyte and a half. `BatchRows` holds only the rows' keys, in report order, and
reads the rows themselves from the ledger a page at a time each time it is
iterated; whoever reads it keeps aggregates (`batcher.reporting.row_facts`), not
rows. A batch that fits in one page is read once and kept, so a small batch costs
what it did when it was read whole.

Rows skipped as already ordered in another batch are explained here, page by
page: with where and when they were ordered (finance needs the batch, the order
id and the date to find the card).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import islice

from batcher.ledger.queries import (
    ROW_KEY,
    ROW_STATE,
    raw_line_values,
    row_record,
    settled_line_values,
)
from batcher.ledger.records import LineValues, SettledRow, line_values
from batcher.ledger.store import Ledger, RowRecord, parse_ts
from batcher.ledger.sync import SKIPPED_ELSEWHERE

#: rows read from the ledger at a time: a few tens of megabytes of `RowRecord`s
ROW_PAGE = 20_000
#: rows read undecoded at a time, for the lines of a sheet (`BatchRows.for_lines`)
RAW_PAGE = 1_000

#: reads the rows of some keys, in that order, a page at a time
ReadPages = Callable[[Sequence[str]], Iterator[Sequence[RowRecord]]]
#: the same, for a reader that only sums them: settled rows come light (`SettledRow`)
ReadFactPages = Callable[[Sequence[str]], Iterator[Sequence[RowRecord | SettledRow]]]
#: the same, for a reader that writes a line per row: each row's `LineValues`
ReadLinePages = Callable[[Sequence[str]], Iterator[Sequence[LineValues]]]


class BatchRows:
    """The rows a report shows, in its order: the sheet's rows in sheet order, then the
    orders of rows no longer in the sheet (a batch name reused over several sheets).

    Iterable as often as needed; each iteration reads the ledger again, a page at a
    time, unless the whole batch fits in one page."""

    def __init__(
        self,
        keys: Sequence[str],
        in_sheet: int,
        read: ReadPages,
        page: int,
        read_facts: ReadFactPages | None = None,
        read_lines: ReadLinePages | None = None,
        *,
        in_memory: bool = False,
    ) -> None:
        self.keys = keys
        self.in_sheet_count = in_sheet
        self._read = read
        self._read_facts = read_facts
        self._read_lines = read_lines
        self._page = page
        #: `read` reads no ledger: the rows were given (`from_rows`)
        self._in_memory = in_memory
        self._whole: list[RowRecord] | None = None
        self._whole_by_key: dict[str, RowRecord] | None = None
        self._held: Mapping[str, RowRecord] = {}
        self._held_light: Mapping[str, SettledRow] = {}

    @classmethod
    def from_ledger(
        cls,
        ledger: Ledger,
        batch: str,
        page: int | None = None,
        *,
        read: tuple[list[str], int, list[RowRecord]] | None = None,
    ) -> BatchRows:
        """The batch's rows in the ledger. `read`: its keys in report order, how many are
        in the sheet, and their records, read just now (`early_rows.combine`): kept when
        they fit in a page, as the first iteration would keep them."""
        page = page or ROW_PAGE
        keys, in_sheet = ledger.report_keys(batch) if read is None else read[:2]

        def read_rows(wanted: Sequence[str]) -> Iterator[list[RowRecord]]:
            for rows in ledger.rows_in_pages(batch, wanted, page):
                yield explain_skips(ledger, batch, rows)

        def read_facts(wanted: Sequence[str]) -> Iterator[list[RowRecord | SettledRow]]:
            for rows in ledger.fact_rows_in_pages(batch, wanted, page):
                whole = [r for r in rows if isinstance(r, RowRecord)]
                if not any(r.state == "skipped" for r in whole):
                    yield rows  # nothing to explain (as good as always)
                    continue
                explained = iter(explain_skips(ledger, batch, whole))
                yield [next(explained) if isinstance(r, RowRecord) else r for r in rows]

        def read_lines(wanted: Sequence[str]) -> Iterator[list[LineValues]]:
            # Undecoded rows weigh more than records: a smaller page of them at a time.
            for raws in ledger.raw_rows_in_pages(batch, wanted, min(page, RAW_PAGE)):
                # a skipped row is explained (where it was ordered) from its record
                skipped = [row_record(r) for r in raws if r[ROW_STATE] == "skipped"]
                explained = {r.row_key: r for r in explain_skips(ledger, batch, skipped)}
                yield [
                    line_values(explained[r[ROW_KEY]])
                    if r[ROW_STATE] == "skipped"
                    else raw_line_values(r)
                    for r in raws
                ]

        rows = cls(keys, in_sheet, read_rows, page, read_facts, read_lines)
        if read is not None and len(keys) <= page:
            rows._whole = read[2]
        return rows

    @classmethod
    def from_rows(cls, rows: Iterable[RowRecord], page: int = ROW_PAGE) -> BatchRows:
        """Rows already in memory (tests, small tools), put in report order."""
        ordered = report_order(rows)
        by_key = {r.row_key: r for r in ordered}

        def read(wanted: Sequence[str]) -> Iterator[list[RowRecord]]:
            for start in range(0, len(wanted), page):
                yield [by_key[k] for k in wanted[start : start + page] if k in by_key]

        in_sheet = sum(1 for r in ordered if r.in_sheet)
        return cls([r.row_key for r in ordered], in_sheet, read, page, in_memory=True)

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[RowRecord]:
        if self._whole is not None:
            yield from self._whole
            return
        if len(self.keys) <= self._page:
            # One page is the whole batch: kept, so the next reader need not read it again.
            self._whole = [row for rows in self._read(self.keys) for row in rows]
            yield from self._whole
            return
        if not self._held:
            for rows in self._read(self.keys):
                yield from rows
            return
        for start in range(0, len(self.keys), self._page):
            yield from self._page_of(self.keys[start : start + self._page])

    def for_sums(self) -> Iterator[RowRecord | SettledRow]:
        """Every row, in report order, for a reader that only sums them (`RowFacts`) and
        matches them to the provider's listings (reconciliation): rows settled without
        a question may come as `SettledRow`s, cheaper to read."""
        if self._whole is not None or self._read_facts is None or self._held:
            yield from self
            return
        if len(self.keys) <= self._page:
            yield from self  # one page: read whole and kept for the next reader
            return
        for rows in self._read_facts(self.keys):
            yield from rows

    def for_lines(self, start: int = 0, stop: int | None = None) -> Iterator[LineValues]:
        """Every row's `LineValues`, in report order, for a line per row (the Orders
        sheet): read from the ledger without building whole records where it can.
        `start` and `stop` give a part of them (rows `start` to `stop`, as a slice):
        rows held in memory (`held_count`) are never read from the ledger."""
        keys = self.keys[start:stop]
        if self._whole is not None or self._read_lines is None:
            yield from map(line_values, islice(self, start, stop))
            return
        if len(self.keys) <= self._page:
            yield from map(line_values, islice(self, start, stop))  # one page: read whole, kept
            return
        if not (self._held or self._held_light):
            for lines in self._read_lines(keys):
                yield from lines
            return
        held, light, page = self._held, self._held_light, min(self._page, RAW_PAGE)
        for at in range(0, len(keys), page):
            part = keys[at : at + page]
            missing = [k for k in part if k not in held and k not in light]
            read = (
                {v[0]: v for lines in self._read_lines(missing) for v in lines} if missing else {}
            )
            for key in part:
                row = held.get(key)
                if row is not None:
                    yield line_values(row)
                    continue
                settled = light.get(key)
                values = settled_line_values(settled) if settled is not None else read.get(key)
                if values is not None:
                    yield values

    def held_count(self) -> int:
        """How many of the first rows are in memory (held, or the batch read whole):
        their lines (`for_lines(0, count)`) need no read of the ledger."""
        if self._whole is not None:
            return len(self._whole)
        if self._in_memory:
            return len(self.keys)
        if self._read_lines is None or len(self.keys) <= self._page:
            return 0  # not read yet
        held, light, count = self._held, self._held_light, 0
        for key in self.keys:
            if key not in held and key not in light:
                break
            count += 1
        return count

    def hold(self, rows: Mapping[str, RowRecord | SettledRow]) -> None:
        """Rows (by key) a reader already holds anyway, as read from this batch: the
        next iterations take them from here and read only the others from the ledger.
        A light row (`SettledRow`) serves only the lines (`for_lines`): whoever reads
        whole records reads it from the ledger.

        Reconciliation keeps each matched order's row in its wallet lines; with them
        held, the Orders sheet does not read those rows from the ledger a second time.
        """
        self._held = {k: r for k, r in rows.items() if isinstance(r, RowRecord)}
        self._held_light = {k: r for k, r in rows.items() if isinstance(r, SettledRow)}

    def _page_of(self, keys: Sequence[str]) -> Iterator[RowRecord]:
        held = self._held
        missing = [k for k in keys if k not in held]
        read = {r.row_key: r for rows in self._read(missing) for r in rows} if missing else {}
        for key in keys:
            row = held.get(key) or read.get(key)
            if row is not None:
                yield row

    def in_sheet(self) -> Iterator[RowRecord]:
        """The rows in the sheet, in sheet order."""
        if self._whole is not None:
            yield from self._whole[: self.in_sheet_count]
            return
        for rows in self._read(self.keys[: self.in_sheet_count]):
            yield from rows

    def only(self, keys: Sequence[str]) -> Iterator[RowRecord]:
        """The rows of `keys`, in that order (a few of the batch's, such as its failures)."""
        if not keys:
            return  # most batches: no failures, nothing outstanding
        if self._whole is not None:
            if self._whole_by_key is None:  # made once, for every reader of a few rows
                self._whole_by_key = {r.row_key: r for r in self._whole}
            by_key = self._whole_by_key
            yield from (by_key[k] for k in keys if k in by_key)
            return
        for rows in self._read(keys):
            yield from rows

    def first(self, count: int) -> list[RowRecord]:
        """The first `count` rows (a sample that sizes the columns of a sheet)."""
        if self._whole is not None:
            return self._whole[:count]
        if self._held:
            return list(self._page_of(self.keys[:count]))
        return list(self.only(self.keys[:count]))


def report_order(rows: Iterable[RowRecord]) -> list[RowRecord]:
    """Rows in the sheet in source order, then orders whose row left the sheet."""
    every = list(rows)
    in_sheet = sorted((r for r in every if r.in_sheet), key=_place)
    gone = sorted((r for r in every if not r.in_sheet and r.order_id), key=_place)
    return in_sheet + gone


def _place(row: RowRecord) -> tuple[int, str]:
    return row.source_row, row.row_key


def explain_skips(ledger: Ledger, batch: str, rows: Sequence[RowRecord]) -> list[RowRecord]:
    """Rows skipped as already ordered elsewhere, with where and when it was ordered.

    The ledger records only that a reference was done in another batch; finance
    needs the batch, the order id and the date to find the card.
    """
    skipped = [r.reference for r in rows if r.state == "skipped" and r.reference]
    if not skipped:
        return list(rows)
    found = ledger.orders_elsewhere(batch, skipped)
    explained = []
    for row in rows:
        where = found.get(row.reference or "") if row.state == "skipped" else None
        if where is not None:
            row = dataclasses.replace(
                row,
                error_code=row.error_code or SKIPPED_ELSEWHERE,
                error_message=skip_reason(*where),
            )
        elif row.state == "skipped" and not row.error_message:
            row = dataclasses.replace(
                row,
                error_code=row.error_code or SKIPPED_ELSEWHERE,
                error_message="already ordered in another batch (its order is not in this ledger)",
            )
        explained.append(row)
    return explained


def skip_reason(batch: str, order_id: str | None, succeeded_at: str | None) -> str:
    moment = parse_ts(succeeded_at)
    when = f" on {moment.date().isoformat()}" if moment else ""
    order = f" as order {order_id}" if order_id else ""
    return f"already ordered in batch {batch}{order}{when}; not ordered again"
