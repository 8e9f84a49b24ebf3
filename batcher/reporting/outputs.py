"""What every run leaves behind for the operator: summary.json and rows.csv.

Written after every run, whether it ended well or not. One line per input row;
every cell goes through `safe_cell` so a report cannot run formulas in Excel.
"""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from itertools import repeat
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batcher.core.files import atomic_write
from batcher.core.money import money_str
from batcher.core.states import HELD_STATES, SETTLED_STATES, UNFINISHED_STATES
from batcher.reporting.cells import safe_cell, safe_texts

if TYPE_CHECKING:  # types only: `batcher validate` loads neither the ledger nor reconciliation
    from batcher.intake.validate import ValidationResult
    from batcher.ledger.records import SettledRow
    from batcher.ledger.store import Ledger, RowRecord
    from batcher.reporting.verdicts import Reconciliation

ROWS_CSV_COLUMNS = (
    "source_row",
    "row_key",
    "state",
    "attempts",
    "idempotency_key",
    "order_id",
    "order_request_id",
    "transaction_id",
    "error_code",
    "error_message",
    "provider_request_id",
    "failure_kind",
    "conflict",
    "reference",
    "recipient_email",
    "recipient_name",
    "product_code",
    "amount",
    "currency",
    "cost",
    "cost_currency",
)


def batch_outcome(by_state: Mapping[str, int]) -> str:
    """One word for a batch: done, held_rows (some held for a person), failed_rows (some
    failed, none left) or unfinished."""
    if any(by_state.get(s, 0) for s in UNFINISHED_STATES):
        return "unfinished"
    if any(by_state.get(s, 0) for s in HELD_STATES):
        return "held_rows"
    if by_state.get("failed", 0):
        return "failed_rows"
    return "done" if any(by_state.get(s, 0) for s in SETTLED_STATES) else "empty"


def batch_counts(ledger: Ledger, batch: str) -> dict[str, Any]:
    """What the ledger holds for a batch: its rows by state, what it paid per currency
    (earlier sheets of a reused name included), its paid orders and one outcome word."""
    by_state = ledger.count_by_state(batch)
    earlier = ledger.orders_not_in_sheet(batch)
    in_sheet = by_state.get("succeeded", 0)
    return {
        "by_state": by_state,
        "rows_total": sum(by_state.values()),
        # every order the batch ever paid, earlier sheets of a reused name included
        "totals_by_currency": totals_by_currency(ledger.rows(batch, in_sheet_only=False)),
        "paid_orders": {
            "in_sheet": in_sheet,
            "earlier_sheets": earlier,
            "total": in_sheet + earlier,
        },
        "outcome": batch_outcome(by_state),
    }


def totals_by_currency(rows: Iterable[RowRecord]) -> dict[str, dict[str, str | int]]:
    """Per currency, as exact decimal text: the cards with a face value in it
    (`orders`, `face_value`) and what its wallet paid (`wallet_orders`, `cost`).

    The two counts differ for cross-currency orders: a USD card paid from the GBP
    wallet counts under USD `orders` and under GBP `wallet_orders`.
    """
    totals = CurrencyTotals()
    for row in rows:
        totals.add(row)
    return totals.as_json()


_ZERO = Decimal(0)


class CurrencyTotals:
    """`totals_by_currency`, one row at a time: sums, never the rows."""

    def __init__(self) -> None:
        self.face: dict[str, Decimal] = {}
        self.cost: dict[str, Decimal] = {}
        self.orders: dict[str, int] = {}
        self.paid: dict[str, int] = {}

    def add(self, row: RowRecord | SettledRow) -> None:
        if row.state != "succeeded":
            return
        currency = row.currency
        self.face[currency] = self.face.get(currency, _ZERO) + row.face_value
        self.orders[currency] = self.orders.get(currency, 0) + 1
        charged_in = row.cost_currency or currency
        self.paid[charged_in] = self.paid.get(charged_in, 0) + 1
        if row.cost is not None:
            self.cost[charged_in] = self.cost.get(charged_in, _ZERO) + row.cost

    def as_json(self) -> dict[str, dict[str, str | int]]:
        result: dict[str, dict[str, str | int]] = {}
        for currency in sorted(set(self.face) | set(self.cost) | set(self.paid)):
            result[currency] = {
                "orders": self.orders.get(currency, 0),
                "face_value": money_str(self.face.get(currency, Decimal(0)), currency),
                "wallet_orders": self.paid.get(currency, 0),
                "cost": money_str(self.cost.get(currency, Decimal(0)), currency),
            }
        return result


def verdict_json(rec: Reconciliation) -> dict[str, Any]:
    """The reconciliation's verdict for summary.json: the batch's, and each currency's."""

    def money(amount: Decimal | None, currency: str) -> str | None:
        return None if amount is None else money_str(amount, currency)

    return {
        "verdict": rec.verdict,
        "reason": rec.reason,
        "evidence": rec.evidence,
        "currencies": {
            c.currency: {
                "verdict": c.verdict,
                "reason": c.reason,
                "orders": c.orders,
                "cost": money(c.cost, c.currency),
                "wallet_debits": money(c.wallet_debits, c.currency),
                "fx_fees": money(c.fx_fees, c.currency),
                "in_flight": c.unsettled.in_flight,
                "in_flight_debits": money(c.unsettled.in_flight_debits, c.currency),
                "unexplained": money(
                    c.movement.unexplained if c.movement is not None else None, c.currency
                ),
                "orphans": c.orphans,
            }
            for c in rec.currencies
        },
    }


#: the text columns of rows.csv sending and settling a row write, after `state` and
#: `attempt`, in one C call
_SENT_IDS = attrgetter(
    "chunk_key", "order_id", "order_request_id", "transaction_id", "error_code",
    "error_message", "provider_request_id", "failure_kind", "conflict",
)  # fmt: skip

#: a row's rows.csv cells its sheet gave it, formula-guarded (`static_line_parts`): its
#: place and key, then `reference` to `currency`, then its pass-through cells under
#: the headers it was rendered for (the first of the four)
LineParts = tuple[Sequence[str], list[str], list[str], list[str]]


def static_line_parts(
    source_row: int,
    row_key: str,
    reference: str | None,
    fields: dict[str, Any],
    face_value: Decimal,
    currency: str,
    passthrough: dict[str, str],
    passthrough_headers: Sequence[str],
) -> LineParts:
    """The cells of a row's rows.csv line that only its sheet gives (what the sheet sync
    writes), rendered once, so the line is `line_of_parts` of the row as it ends up."""
    tail: list[str] = []
    if passthrough_headers:
        tail = safe_texts(list(map(str, map(passthrough.get, passthrough_headers, repeat("")))))
    return (
        passthrough_headers,
        safe_texts([str(source_row), row_key]),
        safe_texts(
            [
                reference or "",
                str(fields.get("recipient_email", "")),
                str(fields.get("recipient_name", "")),
                str(fields.get("product_code", "")),
                str(fields.get("amount", face_value)),
                currency,
            ]
        ),
        tail,
    )


def line_of_parts(row: RowRecord, parts: LineParts) -> list[str]:
    """The rows.csv line of a row whose `static_line_parts` (from the same sheet
    values) are `parts`: only what sending and settling wrote is rendered here."""
    cost = row.cost
    sent = [row.state, str(row.attempt)]
    sent += [v or "" for v in _SENT_IDS(row)]
    sent += ("" if cost is None else str(cost), row.cost_currency or "")
    sent = safe_texts(sent)
    return [*parts[1], *sent[:11], *parts[2], *sent[11:], *parts[3]]


def row_line(row: RowRecord, passthrough_headers: Sequence[str]) -> list[str]:
    """A row's rows.csv line: `ROWS_CSV_COLUMNS`, then its `passthrough_headers` cells,
    each as text through the formula guard (`safe_texts`: one test for plain cells).
    One order of the columns: its sheet's cells (`static_line_parts`) around what
    sending and settling wrote (`line_of_parts`), as the end of a run joins them."""
    parts = static_line_parts(
        row.source_row, row.row_key, row.reference, row.fields, row.face_value, row.currency,
        row.passthrough, passthrough_headers,
    )  # fmt: skip
    return line_of_parts(row, parts)


def write_rows_csv(
    path: Path, rows: Iterable[RowRecord], extra: Sequence[str] | None = None
) -> Path:
    """One line per row. Given `extra` (the pass-through headers, in the order the rows
    first name them), `rows` are streamed as they come, in sheet order; without it they
    are read whole and sorted."""
    if extra is None:
        from batcher.ledger.records import passthrough_headers  # not loaded by `validate`

        every = sorted(rows, key=lambda r: r.source_row)
        rows, extra = every, passthrough_headers(every)
    with atomic_write(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([*ROWS_CSV_COLUMNS, *(safe_cell(h) for h in extra)])
        for row in rows:
            writer.writerow(row_line(row, extra))
    return path


#: rows.csv lines a draft keeps before it writes them to its file
_LINES_AT_ONCE = 4_096


class _Appender:
    """A "file" whose `write` appends to a list: a `csv.writer` on it renders a line."""

    def __init__(self, lines: list[str]) -> None:
        self.write = lines.append


class RowsCsvDraft:
    """rows.csv written as the end of a run reads the rows (once, for everything), in
    sheet order, into an anonymous temporary file; `commit` puts it in place.

    The pass-through headers are those of the first row; a later row naming one it
    does not (rare: the sheet's rows share its columns) has rows.csv written again
    from the rows at commit, so the file is always as `write_rows_csv` writes it."""

    def __init__(self, folder: Path) -> None:
        # Anonymous: closed by `commit`, and gone with the process if the run dies first.
        self._body = tempfile.TemporaryFile(  # noqa: SIM115
            "w+", newline="", encoding="utf-8", dir=folder
        )
        #: lines not written yet: written a few thousand at a time (`_put`)
        self._lines: list[str] = []
        self._writer = csv.writer(_Appender(self._lines))
        self._extra: Sequence[str] | None = None
        self._known: frozenset[str] = frozenset()
        self.whole = True

    def add(self, row: RowRecord, parts: LineParts | None = None) -> None:
        """The row's line, from its `parts` (`static_line_parts`) when they were
        rendered for this file's pass-through headers."""
        if not row.in_sheet or not self.whole:
            return
        if self._extra is None:
            self._extra = list(row.passthrough)
            self._known = frozenset(self._extra)
        elif not self._known.issuperset(row.passthrough):
            self.whole = False  # a column the header does not have: written again at commit
            return
        if parts is not None and (parts[0] is self._extra or parts[0] == self._extra):
            self._extra = parts[0]  # the same headers: the next test is one `is`
            self._put(line_of_parts(row, parts))
        else:
            self._put(row_line(row, self._extra))

    def _put(self, line: list[str]) -> None:
        """`line` as `csv.writer` writes it: its cells joined by commas when none needs
        quoting (no comma, quote or line break in any: as good as always), else by the
        writer; into `_lines`, written to the file a few thousand at a time."""
        text = ",".join(line)
        if (
            text.count(",") == len(line) - 1
            and '"' not in text
            and "\n" not in text
            and "\r" not in text
        ):
            self._lines.append(text + "\r\n")
        else:
            self._writer.writerow(line)
        if len(self._lines) >= _LINES_AT_ONCE:
            self._flush()

    def _flush(self) -> None:
        self._body.write("".join(self._lines))
        self._lines.clear()

    def commit(
        self, path: Path, rows: Callable[[], Iterable[RowRecord]], extra: Sequence[str]
    ) -> Path:
        """Put rows.csv in place; `rows` (the sheet's rows in sheet order, read again) and
        `extra` (every pass-through header, in the order the rows name them) are used
        only when the first row's headers did not cover every row."""
        try:
            if not self.whole:
                return write_rows_csv(path, rows(), extra)
            self._flush()
            with atomic_write(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
                csv.writer(fh).writerow([*ROWS_CSV_COLUMNS, *(safe_cell(h) for h in extra)])
                self._body.seek(0)
                shutil.copyfileobj(self._body, fh, 1 << 20)
            return path
        finally:
            self._body.close()


def write_json(path: Path, data: dict[str, Any]) -> Path:
    with atomic_write(path) as tmp:
        tmp.write_text(
            json.dumps(data, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8"
        )
    return path


def write_validation_csv(result: ValidationResult, path: Path) -> Path:
    """Every validation error, one per line; cells neutralised so Excel never runs them."""
    # Here, not at the top: validation brings polars, which a report never needs (its
    # import is a fifth of a second, and it starts threads of its own)
    from batcher.intake.validate import REPORT_COLUMNS, report_records

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8-sig") as handle:  # BOM: Excel reads UTF-8
        writer = csv.writer(handle)
        writer.writerow(REPORT_COLUMNS)
        for record in report_records(result):
            writer.writerow([safe_cell(record[column]) for column in REPORT_COLUMNS])
    return path
