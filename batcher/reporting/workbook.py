"""The reconciliation workbook (and codes.xlsx): what finance opens in the morning.

Sheets: Summary (written by `batcher.reporting.summary_sheet`), Orders (one line per
input row, in source order, with the sheet's pass-through columns), Failures,
Wallet (each transaction matched to an order; flagged ones say why) and Orphans.

- Money cells are numbers (written exactly from Decimal), formatted per currency
  from its minor units: "£"#,##0.00, "€"#,##0.00, "¥"#,##0.
- Dates are real Excel date-times, in UTC (the headers say so).
- Headers are frozen and filtered; columns are sized from a sample of values.
- Every text cell goes through `safe_cell`; voucher codes appear only masked.

The row-heavy sheets are streamed by `batcher.reporting.xlsx_stream` so 100,000 rows
take seconds, not minutes.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from itertools import islice, repeat
from pathlib import Path
from typing import Any

from openpyxl import Workbook
from openpyxl.utils import get_column_letter

from batcher.core.collector import collector_paused
from batcher.core.files import atomic_write
from batcher.core.money import quantum, round_money
from batcher.ledger.events import StoredEvent
from batcher.ledger.queries import LINE_STATE, read_line_values
from batcher.ledger.records import LineValues, line_values
from batcher.ledger.store import Ledger, RowRecord, parse_ts
from batcher.providers.base import Redemption
from batcher.reporting.cells import safe_cell
from batcher.reporting.failures import Failure
from batcher.reporting.reconcile import (
    OrderCheck,
    Reconciliation,
    WalletLine,
)
from batcher.reporting.report_model import ReportModel
from batcher.reporting.row_source import BatchRows, explain_skips
from batcher.reporting.summary_sheet import write_summary
from batcher.reporting.xlsx_stream import (
    EarlyMade,
    EarlyRows,
    IdleSample,
    StreamedSheet,
    Styled,
    excel_datetime,
    prepare,
    register_style,
    save,
)
from batcher.reporting.xlsx_style import (
    DATETIME_FORMAT,
    money_format,
    print_setup,
    style_header_row,
)

MASK = "••••"
SUMMARY, ORDERS, FAILURES, WALLET, ORPHANS = "Summary", "Orders", "Failures", "Wallet", "Orphans"
OUTSTANDING = "Outstanding"
FAILURE_HEADERS = (
    "Source row", "Reference", "Recipient email", "Recipient name", "Product", "Face value",
    "Currency", "State", "Error code", "What went wrong", "Next step", "In failed_rows.csv",
    "Provider request id",
)  # fmt: skip
WALLET_HEADERS = (
    "Time (UTC)", "Type", "Currency", "Amount", "Order id", "Transaction id", "Description",
    "Source row", "Reference", "Ledger cost", "Difference", "Status", "Note",
)  # fmt: skip
ORPHAN_HEADERS = (
    "Created (UTC)", "Order id", "Product", "Currency", "Face value", "Wallet debit",
    "Recipient email", "Recipient name", "Status", "Transaction id", "Note",
)  # fmt: skip
CODES_HEADERS = (
    "Source row", "Reference", "Recipient email", "Recipient name", "Product", "Face value",
    "Currency", "Order id", "Voucher code", "Redemption URL",
)  # fmt: skip


def mask_code(last4: str | None) -> str:
    """What a report shows of a voucher code: enough to tell codes apart, never to redeem."""
    return f"{MASK}-{last4}" if last4 else ""


# ---------------------------------------------------------------------------
# The workbook.


#: at most this many money cells kept for reuse (a few MB)
_AMOUNT_CELLS = 1 << 16


@dataclass
class _Styles:
    """Style ids for the streamed sheets, registered before openpyxl saves."""

    date: int
    money: dict[str, int]
    #: currency -> (its minor unit, its money style): 600,000 money cells at 100k rows
    formats: dict[str, tuple[Decimal, int]] = field(default_factory=dict)
    #: (amount, currency, sign) -> its cell: the rows share a few thousand amounts
    cells: dict[tuple[Decimal, str, bool], Styled] = field(default_factory=dict)
    #: currency -> amount -> its cell, for amounts not zero (one dictionary lookup)
    by_currency: dict[str, dict[Decimal, Styled]] = field(default_factory=dict)

    def amount(self, value: Decimal | None, currency: str | None) -> Styled | None:
        """A money cell: the value rounded half-up to the currency's minor units."""
        if value is None or not currency:
            return None
        # Equal amounts round to the same cell (the quantum fixes the exponent), but
        # for the sign of a zero: a zero is kept under its sign too.
        by_value = self.by_currency.get(currency)
        if by_value is not None and value:
            cell = by_value.get(value)
            if cell is not None:
                return cell
        key = (value, currency, value.is_signed())
        cell = self.cells.get(key)
        if cell is None:
            found = self.formats.get(currency)
            if found is None:
                found = self.formats[currency] = (quantum(currency), self.money_style(currency))
            cell = Styled(value.quantize(found[0], rounding=ROUND_HALF_UP), found[1])
            if value.is_finite():
                if len(self.cells) >= _AMOUNT_CELLS:
                    self.cells.clear()
                    self.by_currency.clear()
                self.cells[key] = cell
                if value:  # not zero: equal values have one sign
                    self.by_currency.setdefault(currency, {})[value] = cell
        return cell

    def money_style(self, currency: str) -> int:
        return self.money.get(currency, self.money[""])


def write_workbook(path: Path, model: ReportModel, early: EarlyOrders | None = None) -> Path:
    """Write reconciliation.xlsx atomically (a temporary file, then a rename).

    `early`: the Orders sheet's rows made by a child forked while the report matched
    (`early_orders`); used when the report bears out what it assumed, else stopped."""
    with collector_paused():
        if early is None:
            return _write_workbook(path, model)
        return _write_workbook(path, model, early)


def _write_workbook(path: Path, model: ReportModel, early: EarlyOrders | None = None) -> Path:
    workbook = Workbook()
    # First, so the ids depend on the rows' currencies alone: an early child made its
    # lines with the ids a workbook registering them first gives (`early_orders`).
    styles = _register_styles(workbook, model)
    summary = workbook.active
    assert summary is not None
    summary.title = SUMMARY
    write_summary(summary, model)
    child = None
    if early is not None:
        if early.fits(model):  # told the ids: its rows are made and deflated by now
            child = early.child.use({"date": styles.date, "money": styles.money})
        else:
            early.close()  # its rows are not the ones the sheet needs
    streamed = [
        _orders_sheet(workbook, model, styles),
        _failures_sheet(workbook, model, styles),
        _wallet_sheet(workbook, model, styles),
        _orphans_sheet(workbook, model, styles),
        _outstanding_sheet(workbook, model, styles),
    ]
    if child is not None:
        child.sheet = streamed[0]
    with atomic_write(path) as tmp:
        save(tmp, workbook, streamed, styles.date, child)
    return path


# ----- The Orders sheet's rows, made while the report matches


@dataclass
class EarlyOrders:
    """The Orders sheet's lines, made by a child forked after the provider's listing
    (`early_orders`), and what it assumed to make them before the matching was done:
    the pass-through headers, and that every succeeded order matched without a problem
    (its Check "OK", its wallet debit its cost)."""

    child: EarlyRows
    rows: BatchRows
    passthrough: list[str]

    def fits(self, model: ReportModel) -> bool:
        """Are the child's lines the ones `model` shows? Else the save makes them."""
        count = self.child.count
        if model.rows is not self.rows or len(model.rows) != count:
            return False
        if model.reconciliation.evidence != "transactions":
            return False
        if list(model.passthrough) != self.passthrough:
            return False
        # A check with a problem (or a debit of zero: its sign is the provider's, the
        # child shows the ledger's cost) is shown as the child did not assume.
        odd = [
            key
            for key, check in model.checks.items()
            if check.problems or (check.debit is not None and not check.debit)
        ]
        return not odd or set(model.rows.keys[:count]).isdisjoint(odd)

    def close(self) -> None:
        self.child.close()


def early_orders(
    ledger: Ledger,
    batch: str,
    rows: BatchRows,
    info: Mapping[str, Any],
    directory: Path,
    idle_since: IdleSample | None = None,
) -> EarlyOrders | None:
    """Fork a child that makes the Orders sheet's lines of `rows` while this process
    matches them (None: no child, when the platform, the ledger or the batch's size
    does not allow one). The child reads the rows from the ledger on a connection of its
    own, and assumes what matching says of nearly every order; `EarlyOrders.fits`
    checks that before its lines are used. `idle_since`: when the parent began the work
    it does before matching (a core idle since then is one the child may have)."""
    if ledger.backend != "sqlite" or not isinstance(rows, BatchRows):
        return None
    count = len(rows)
    mapped = set((info.get("sheet_columns") or {}).values())
    passthrough = [str(h) for h in info.get("sheet_headers") or [] if h not in mapped]

    def make() -> EarlyMade:  # in the child
        ledger.reopen_in_child()
        # The ids the report's workbook will give: it registers the same styles first.
        styles = _registered(Workbook(), ledger.style_currencies(batch))
        context = LineContext({}, passthrough, "not checked", all_matched=True)
        lines = (
            line_of(values, context, styles)
            for values in _early_line_values(ledger, batch, rows.keys[:count])
        )

        def fits(real: Any) -> bool:  # every cell made has the style the workbook gives
            given = _Styles(real["date"], real["money"])
            return given.date == styles.date and all(
                given.money_style(c) == styles.money_style(c) for c in styles.formats
            )

        return styles.date, lines, fits

    columns = len(order_headers(passthrough))
    child = EarlyRows.fork(make, columns, count, directory, idle_since)
    return None if child is None else EarlyOrders(child, rows, passthrough)


def _register_styles(workbook: Workbook, model: ReportModel) -> _Styles:
    listed = {line.currency for line in model.reconciliation.wallet_lines if line.currency}
    listed |= {o.order.currency for o in model.reconciliation.orphans if o.order.currency}
    return _registered(workbook, model.facts.style_currencies, listed)


def _registered(
    workbook: Workbook, in_rows: Collection[str], listed: Collection[str] = ()
) -> _Styles:
    """The streamed sheets' styles, registered in an order that depends only on their
    currencies: the date; money in each currency the batch's rows name, sorted; money
    in a currency the provider did not name; then money in the currencies only the
    provider's listings name, sorted. On a new workbook (`_write_workbook` registers
    them first) the ids are the same for the same currencies."""
    date = register_style(workbook, DATETIME_FORMAT)
    money = {c: register_style(workbook, money_format(c)) for c in sorted(in_rows)}
    money[""] = register_style(workbook, "#,##0.00")  # a currency the provider did not name
    for currency in sorted(set(listed) - set(in_rows)):
        money[currency] = register_style(workbook, money_format(currency))
    return _Styles(date, money)


def _streamed(
    workbook: Workbook,
    title: str,
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]] | Iterator[Sequence[Any]],
    widths: Sequence[float],
    freeze: str = "A2",
    row_count: int | None = None,  # required when `rows` is an iterator
    part: Callable[[int, int | None], Iterator[Sequence[Any]]] | None = None,
    in_memory: int = 0,
    weight: float = 1.0,
) -> StreamedSheet:
    if row_count is None:
        assert not isinstance(rows, Iterator), "an iterator of rows needs its row_count"
        row_count = len(rows)
    sheet = workbook.create_sheet(title)
    prepare(sheet, headers, row_count)
    style_header_row(sheet, len(headers))
    sheet.freeze_panes = freeze
    for i, width in enumerate(widths, 1):
        sheet.column_dimensions[get_column_letter(i)].width = width
    print_setup(sheet, pages_tall=0)
    sheet.print_title_rows = "1:1"
    return StreamedSheet(sheet, rows, row_count, len(headers), part, in_memory, weight)


_WIDTH_SAMPLE = 300  # rows whose values size the columns
#: what a Wallet line costs to make, in Orders lines (measured at 100k rows)
_WALLET_LINE = 0.4


def _widths(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], sample: int = _WIDTH_SAMPLE
) -> list[float]:
    """Sensible column widths: the header and a sample of values, capped."""
    widths = [max(8, len(h) + 2) for h in headers]
    for row in rows[:sample]:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], _shown_length(value) + 2)
    return [min(w, 60) for w in widths]


def _shown_length(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, Styled):
        return 19 if isinstance(value.value, datetime) else len(f"{value.value:,}") + 2
    if isinstance(value, datetime):
        return 19
    return len(str(value))


@lru_cache(maxsize=1 << 14)
def _ts(text: str | None) -> datetime | None:
    moment = parse_ts(text)
    return excel_datetime(moment) if moment else None


# ----- Orders


def order_headers(passthrough: Sequence[str]) -> list[str]:
    return [
        "Source row", "Reference", *passthrough, "Recipient email", "Recipient name",
        "Product", "Face value", "Currency", "Cost", "Cost currency", "State", "Order id",
        "Transaction id", "Order request id", "Idempotency key", "Attempts", "Voucher",
        "Last error", "Wallet debit", "Check", "Created (UTC)", "Updated (UTC)",
        "Succeeded (UTC)",
    ]  # fmt: skip


@dataclass(frozen=True)
class LineContext:
    """What an Orders line takes from the report besides its row: the orders' checks,
    the pass-through headers, and the Check of a succeeded order with no check.

    `all_matched`: what an early child assumes (`early_orders`): every succeeded order
    with no check in `checks` matched without a problem, its wallet debit its cost (as
    `OrderCheck(key, True, cost, charged currency)` would show it), not unchecked."""

    checks: Mapping[str, OrderCheck]
    passthrough: Sequence[str]
    unchecked: str
    all_matched: bool = False

    @classmethod
    def of(cls, model: ReportModel) -> LineContext:
        return cls(model.checks, model.passthrough, _unchecked(model))


def order_line(row: RowRecord, model: ReportModel, styles: _Styles) -> list[Any]:
    return line_of(line_values(row), LineContext.of(model), styles)


def line_of(values: LineValues, model: LineContext, styles: _Styles) -> list[Any]:
    """A row's line on the Orders sheet, from its `LineValues` (read from the ledger
    without a whole record per row, or taken from one: `order_line`). 100,000 lines
    at 100k rows: the common cases are written out here, not in calls per cell."""
    (
        row_key, source_row, reference, fields, passthrough, face_value, currency, cost,
        cost_currency, state, order_id, transaction_id, order_request_id, chunk_key, attempt,
        voucher_last4, error_code, error_message, conflict, in_sheet, created_at, updated_at,
        succeeded_at,
    ) = values  # fmt: skip
    check = model.checks.get(row_key)
    amount = styles.amount
    # money cells by one lookup when kept (`_Styles.amount` makes and keeps the others)
    kept = styles.by_currency.get(currency) or _NO_CELLS
    charged = cost_currency or currency  # as `charged_currency`
    cost_cell = (kept if charged == currency else _NO_CELLS).get(cost) or amount(cost, charged)
    debit = None
    ordered = check is None and state == "succeeded" and order_id
    if ordered and model.all_matched:  # as a check of no problem, its debit the cost
        debit = cost_cell
        checked = "OK"
        if not in_sheet:
            ordered_at = succeeded_at or updated_at
            checked = _check_of(False, state, order_id, ordered_at, _MATCHED, "")
    elif ordered and in_sheet:
        checked = model.unchecked  # as `_check_of` says
    else:
        checked = _check_of(
            in_sheet, state, order_id, succeeded_at or updated_at, check, model.unchecked
        )
        if check is not None:
            paid, paid_currency = check.debit, check.debit_currency
            debit = (kept if paid_currency == currency else _NO_CELLS).get(paid) or amount(  # type: ignore[arg-type]
                paid, paid_currency
            )
    get = fields.get
    return [
        source_row,
        reference or get("reference", ""),  # `_reference`
        *map(passthrough.get, model.passthrough, repeat("")),
        # recipient and card, as `_recipient_and_card`
        get("recipient_email", ""),
        get("recipient_name", ""),
        get("product_code", ""),
        None if state == "invalid" else kept.get(face_value) or amount(face_value, currency),
        currency,
        cost_cell,
        cost_currency or "",
        state,
        order_id,
        transaction_id,
        order_request_id,
        chunk_key,
        attempt,
        f"{MASK}-{voucher_last4}" if voucher_last4 else "",  # `mask_code`
        _error_text(error_code, error_message, conflict)
        if error_code or error_message or conflict
        else "",
        debit,
        checked,
        _ts(created_at),
        _ts(updated_at),
        _ts(succeeded_at),
    ]


#: the check `LineContext.all_matched` assumes: listed, no problem (its debit aside)
_MATCHED = OrderCheck("", True, None, None, ())


def _unchecked(model: ReportModel) -> str:
    """The Check of a succeeded order the reconciliation has no check for."""
    if model.reconciliation.evidence == "balances":
        return "checked against the wallet balance only"
    return "not checked"


def _reference(reference: str | None, fields: Mapping[str, str]) -> str:
    return reference or fields.get("reference", "")


def _recipient_and_card(
    fields: Mapping[str, str], state: str, face_value: Decimal, currency: str, styles: _Styles
) -> list[Any]:
    """Recipient email and name, product, face value and currency: as the sheet gave them."""
    # an invalid row's face value may be anything the sheet held: not shown as money
    face = None if state == "invalid" else styles.amount(face_value, currency)
    return [
        fields.get("recipient_email", ""),
        fields.get("recipient_name", ""),
        fields.get("product_code", ""),
        face,
        currency,
    ]


def _error_text(error_code: str | None, error_message: str | None, conflict: str | None) -> str:
    parts = [p for p in (error_code, error_message) if p]
    text = ": ".join(parts)
    if conflict:
        text = f"{text}; {conflict}" if text else conflict
    return text


def _check_of(
    in_sheet: bool,
    state: str,
    order_id: str | None,
    ordered_at: str | None,
    check: OrderCheck | None,
    unchecked: str,
) -> str:
    """The Check column; `ordered_at`: when the row succeeded, else its last update;
    `unchecked`: a succeeded order's with no check (`_unchecked`)."""
    prefix = "" if in_sheet else f"{_earlier_sheet_note(ordered_at)}; "
    if state != "succeeded" or not order_id:
        return prefix.rstrip("; ")
    if check is None:
        return prefix + unchecked
    return prefix + ("; ".join(check.problems) if check.problems else "OK")


def _earlier_sheet_note(ordered_at: str | None) -> str:
    """How an order from an earlier sheet of the batch is shown: when it was ordered."""
    moment = parse_ts(ordered_at)
    when = f" on {moment.date().isoformat()}" if moment else ""
    return f"ordered{when}, not in today's sheet"


def _orders_sheet(workbook: Workbook, model: ReportModel, styles: _Styles) -> StreamedSheet:
    headers = order_headers(model.passthrough)
    sample = [order_line(r, model, styles) for r in model.rows.first(_WIDTH_SAMPLE)]

    # Made one at a time as the sheet is written, from rows read a page at a time: all
    # of them at once would take about a kilobyte per row, a gigabyte at a million rows.
    context = LineContext.of(model)

    def part(start: int, stop: int | None) -> Iterator[list[Any]]:
        return (line_of(values, context, styles) for values in model.rows.for_lines(start, stop))

    return _streamed(
        workbook, ORDERS, headers, part(0, None), _widths(headers, sample), "B2",
        len(model.rows), part, model.rows.held_count(),
    )  # fmt: skip


def _early_line_values(ledger: Ledger, batch: str, keys: Sequence[str]) -> Iterator[LineValues]:
    """The rows' `LineValues` in the order of `keys`, as `BatchRows.for_lines` reads them,
    but with only the columns a line shows (`queries.LINE_COLUMNS`). A skipped row is read
    whole and explained (where it was ordered), as there."""
    for raws in ledger.line_rows_in_pages(batch, keys, _EARLY_PAGE):
        skipped = [r[0] for r in raws if r[LINE_STATE] == "skipped"]
        explained: dict[str, LineValues] = {}
        if skipped:
            whole = list(ledger.rows_by_key(batch, skipped).values())
            explained = {r.row_key: line_values(r) for r in explain_skips(ledger, batch, whole)}
        for r in raws:
            found = explained.get(r[0]) if explained else None
            yield found if found is not None else read_line_values(r)


#: rows an early child reads from the ledger at a time
_EARLY_PAGE = 2_000


# ----- Failures


def failure_line(failure: Failure, styles: _Styles) -> list[Any]:
    row = failure.row
    return [
        row.source_row,
        _reference(row.reference, row.fields),
        *_recipient_and_card(row.fields, row.state, row.face_value, row.currency, styles),
        row.state,
        row.error_code or "",
        failure.reason,
        failure.next_step,
        "yes" if failure.refeed else "no",
        row.provider_request_id,
    ]


def _failures_sheet(workbook: Workbook, model: ReportModel, styles: _Styles) -> StreamedSheet:
    """Rows that need a person; rows a rerun settles are on the Outstanding sheet."""
    count = model.failures.tally.needing_action
    return _failure_lines(workbook, FAILURES, model, styles, outstanding=False, count=count)


def _outstanding_sheet(workbook: Workbook, model: ReportModel, styles: _Styles) -> StreamedSheet:
    """Rows not sent yet or still in flight: a rerun of the batch settles them."""
    count = model.failures.tally.outstanding
    return _failure_lines(workbook, OUTSTANDING, model, styles, outstanding=True, count=count)


def _failure_lines(
    workbook: Workbook,
    title: str,
    model: ReportModel,
    styles: _Styles,
    *,
    outstanding: bool,
    count: int,
) -> StreamedSheet:
    """The failures (or the outstanding rows), streamed: their rows are read a page at a
    time as the sheet is written, so a batch that all failed is never held whole."""

    def lines() -> Iterator[list[Any]]:
        for failure in model.failures:
            if failure.outstanding == outstanding:
                yield failure_line(failure, styles)

    sample = list(islice(lines(), _WIDTH_SAMPLE))
    widths = _widths(FAILURE_HEADERS, sample)
    return _streamed(workbook, title, FAILURE_HEADERS, lines(), widths, row_count=count)


# ----- Wallet


def _wallet_sheet(workbook: Workbook, model: ReportModel, styles: _Styles) -> StreamedSheet:
    if model.reconciliation.evidence != "transactions":
        note = [[None] * 11 + ["not fetched", _not_fetched(model.reconciliation)]]
        return _streamed(workbook, WALLET, WALLET_HEADERS, note, _widths(WALLET_HEADERS, note))
    # Made as the sheet is written (the first few for the widths now): when a child
    # writes the Orders sheet (`save`), this process makes them meanwhile.
    lines = model.reconciliation.wallet_lines
    sample = [_wallet_line(line, styles) for line in lines[:_WIDTH_SAMPLE]]
    widths = _widths(WALLET_HEADERS, sample)

    def part(start: int, stop: int | None) -> Iterator[list[Any]]:
        return (_wallet_line(line, styles) for line in islice(lines, start, stop))

    return _streamed(
        workbook, WALLET, WALLET_HEADERS, part(0, None), widths, row_count=len(lines),
        part=part, in_memory=len(lines), weight=_WALLET_LINE,
    )  # fmt: skip


def _not_fetched(rec: Reconciliation) -> str:
    if rec.provider_error:
        return f"the provider's transactions could not be read: {rec.provider_error}"
    return (
        "after a large run the transactions are not listed: the balances each run read "
        "stand in for them (see the Summary); run `batcher report BATCH` to list and match "
        "every one"
    )


#: the transactions of one order request share their moment
_excel_moment = lru_cache(maxsize=1 << 14)(excel_datetime)


def _wallet_line(line: WalletLine, styles: _Styles) -> list[Any]:
    """A wallet line's row: 100,000 at 100k rows, most a matched purchase, written out."""
    tx, row = line.transaction, line.row
    amount, currency = styles.amount, line.currency
    kept = styles.by_currency.get(currency) or _NO_CELLS
    if tx is None:
        moment = line.timestamp
        return [
            _excel_moment(moment) if moment else None,
            "",
            currency,
            None,
            line.order_id,
            row.transaction_id if row else None,
            "",
            row.source_row if row else None,
            (row.reference or "") if row else "",
            amount(line.ledger_cost, currency),
            amount(line.difference, currency),
            line.status,
            line.note,
        ]
    moment = tx.timestamp  # `line.timestamp`
    tx_amount, tx_currency = tx.amount, tx.currency
    ledger_cost, difference = line.ledger_cost, line.difference
    return [
        _excel_moment(moment) if moment else None,
        tx.transaction_type,
        currency,
        (kept if tx_currency == currency else _NO_CELLS).get(tx_amount)
        or amount(tx_amount, tx_currency),
        tx.order_id or (row.order_id if row else None),  # `line.order_id`
        tx.transaction_id,
        tx.description,
        row.source_row if row else None,
        (row.reference or "") if row else "",
        kept.get(ledger_cost) or amount(ledger_cost, currency),  # type: ignore[arg-type]
        kept.get(difference) or amount(difference, currency),  # type: ignore[arg-type]
        line.status,
        line.note,
    ]


#: no money cells kept (yet) for a currency
_NO_CELLS: Mapping[Decimal, Styled] = {}


# ----- Orphans


def _orphans_sheet(workbook: Workbook, model: ReportModel, styles: _Styles) -> StreamedSheet:
    rows = [
        [
            excel_datetime(o.order.created_at) if o.order.created_at else None,
            o.order.order_id,
            o.order.product_code,
            o.order.currency,
            styles.amount(o.order.face_value, o.order.currency),
            styles.amount(o.debit, o.order.currency),
            o.order.recipient_email,
            o.order.recipient_name,
            o.order.status,
            o.order.transaction_id,
            o.note,
        ]
        for o in model.reconciliation.orphans
    ]
    rows += [_orphan_event_line(event) for event in model.orphan_events]
    return _streamed(workbook, ORPHANS, ORPHAN_HEADERS, rows, _widths(ORPHAN_HEADERS, rows))


def _orphan_event_line(event: StoredEvent) -> list[Any]:
    """A webhook event for an order request no batch sent: what the provider told the
    receiver, with no amounts (an event moves no money; the wallet lines show any debit)."""
    received = parse_ts(event.received_at)
    repeats = f", delivered {event.deliveries} times" if event.deliveries > 1 else ""
    return [
        excel_datetime(received) if received else None,
        ", ".join(event.order_ids) or None,
        None,
        None,
        None,
        None,
        None,
        None,
        event.status,
        None,
        f"webhook {event.event or 'event'} for order request {event.request_id}, which no"
        f" batch in this ledger sent (received {event.received_at}{repeats})",
    ]


# ---------------------------------------------------------------------------
# codes.xlsx: live voucher codes, only on request.


def write_codes(path: Path, model: ReportModel, redemptions: Mapping[str, Redemption]) -> Path:
    """codes.xlsx with mode 0600 from the first byte, renamed into place."""
    workbook = Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.title = "Codes"
    sheet.append([safe_cell(h) for h in CODES_HEADERS])
    style_header_row(sheet, len(CODES_HEADERS))
    sheet.freeze_panes = "A2"
    for row in _code_rows(model, redemptions):
        sheet.append([safe_cell(v) if isinstance(v, str) else v for v in row])
    sheet.auto_filter.ref = f"A1:{get_column_letter(len(CODES_HEADERS))}{sheet.max_row}"
    for i, width in enumerate((10, 16, 28, 22, 18, 12, 9, 26, 24, 50), 1):
        sheet.column_dimensions[get_column_letter(i)].width = width
    _save_private(workbook, path)
    return path


def _code_rows(model: ReportModel, redemptions: Mapping[str, Redemption]) -> Iterator[list[Any]]:
    for row in model.rows:  # read a page at a time; only the orders have codes
        if row.state != "succeeded" or not row.order_id:
            continue
        redemption = redemptions.get(row.order_id or "")
        f = row.fields
        face = round_money(row.face_value, row.currency)
        yield [
            row.source_row, row.reference or "", f.get("recipient_email", ""),
            f.get("recipient_name", ""), f.get("product_code", ""), face, row.currency,
            row.order_id, redemption.voucher_code if redemption else "not found at the provider",
            (redemption.redemption_url or "") if redemption else "",
        ]  # fmt: skip


def _save_private(workbook: Workbook, path: Path) -> None:
    with atomic_write(path, private=True) as tmp, tmp.open("wb") as fh:
        workbook.save(fh)
