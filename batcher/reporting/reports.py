"""The reports finance signs off: what goes in them, and where they are written.

`write_batch_report` gathers what it needs (the ledger, and the provider's orders
and wallet transactions over the batch's run windows), reconciles it
(`batcher.reporting.reconcile`), and writes, under `REPORT_DIR/BATCH/`:

- `reconciliation.xlsx`: Summary (verdict per currency, state counts, a chart of
  spend by product), Orders (one line per input row, in source order), Failures
  (a plain-English reason and the next step), Wallet (each transaction matched to
  an order) and Orphans (provider orders no batch placed);
- `failed_rows.csv`: the rows to fix, under the input's own headers, plus `error`;
  fixed and fed to `batcher run` as a new batch, it orders exactly those rows;
- `codes.xlsx`, only when asked (`reveal_codes`): live voucher codes, mode 0600.

Each run's files are also kept under `REPORT_DIR/BATCH/runs/RUN_ID/`, and each
`batcher report` under `REPORT_DIR/BATCH/reports/<UTC time>/`: a report never
overwrites an earlier archive.

The math is in `batcher.reporting.reconcile`, the plain English in `batcher.reporting.failures`,
the layout in `batcher.reporting.workbook`. Every text cell goes through `safe_cell`, and
voucher codes appear only as `••••-1234`. Nothing here ever sees the API key.
"""

from __future__ import annotations

import csv
import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from batcher.core.clock import utc_text
from batcher.core.errors import BatcherError, UsageError
from batcher.core.files import atomic_write
from batcher.ledger.events import StoredEvent, WebhookEvents
from batcher.ledger.records import SettledRow
from batcher.ledger.store import Ledger, RowRecord, parse_ts
from batcher.providers.base import Provider, Redemption
from batcher.reporting.cells import safe_cell
from batcher.reporting.reconcile import (
    ProviderData,
    ReconcileInputs,
    Reconciliation,
    RunWindow,
    Window,
    reconcile_and_sum,
    span,
)
from batcher.reporting.report_model import Failures, ReportModel, RunInfo
from batcher.reporting.report_stamp import ReportStamp, forget_stamp, read_stamp
from batcher.reporting.row_facts import RowFacts
from batcher.reporting.row_source import BatchRows
from batcher.reporting.verdicts import RECONCILED

if TYPE_CHECKING:
    from batcher.reporting.workbook import EarlyOrders
    from batcher.reporting.xlsx_stream import IdleSample

# The workbook's modules (openpyxl, a tenth of a second) are imported where a workbook
# is written, not with this module: `batcher run` imports this at start-up and warms
# them on a side thread while it sends (execute/run.py `_warm_report_imports`).

WORKBOOK_NAME = "reconciliation.xlsx"
FAILED_ROWS_NAME = "failed_rows.csv"
ROWS_NAME = "rows.csv"
CODES_NAME = "codes.xlsx"
ARCHIVE_DIR = "runs"
REPORT_ARCHIVE_DIR = "reports"
#: fetched on each side of the run windows, so a provider clock a little off still matches
CLOCK_MARGIN = timedelta(minutes=2)
#: the ledger cuts timestamps to the millisecond, so a run's window ends one later
TRUNCATION = timedelta(milliseconds=1)
#: How late a provider may deliver a webhook for an order placed during a run
WEBHOOK_DELAY = timedelta(minutes=15)
#: up to this many orders, the report after a run always fetches the provider's listings
AUTO_FETCH_MAX_ORDERS = 2_000
Fetch = Literal["full", "auto", "quick"]
#: "run": archived under runs/RUN_ID (the end of `batcher run`); "report": a new dated folder
ArchiveAs = Literal["run", "report"]
T = TypeVar("T")


@dataclass(frozen=True)
class ReportResult:
    workbook: Path
    failed_rows: Path
    codes: Path | None
    archive: Path | None
    reconciliation: Reconciliation
    webhook_orphans: int = 0


# ---------------------------------------------------------------------------
# The entry point.


def write_batch_report(
    ledger: Ledger,
    batch: str,
    provider: Provider | None,
    report_dir: Path,
    *,
    reveal_codes: bool = False,
    sheet_rows: int | None = None,
    fetch: Fetch = "full",
    rows: BatchRows | None = None,
    facts: RowFacts | None = None,
    archive_as: ArchiveAs = "report",
) -> ReportResult:
    """Reconcile `batch` and write its report files; returns where they are.

    `fetch="auto"` (used at the end of `batcher run`) does not list the provider's
    orders and transactions for a batch of more than `AUTO_FETCH_MAX_ORDERS` orders:
    the balances each run read stand in for them. `"full"` (used by `batcher
    report`) always lists and matches everything. `rows` and `facts` save
    summing the batch's rows again when the caller (the end of a run) has just done so.
    """
    out_dir = report_dir / batch
    early: list[EarlyOrders] = []

    def listed(listed_rows: BatchRows, info: Mapping[str, Any], idle: IdleSample | None) -> None:
        # The Orders sheet's lines, made on the other core while the rows are matched.
        from batcher.reporting.workbook import early_orders

        out_dir.mkdir(parents=True, exist_ok=True)
        found = early_orders(ledger, batch, listed_rows, info, out_dir, idle)
        if found is not None:
            early.append(found)

    try:
        model = collect(
            ledger,
            batch,
            provider,
            sheet_rows=sheet_rows,
            fetch=fetch,
            rows=rows,
            facts=facts,
            on_listed=listed,
            while_listing=_import_workbook,
        )
        from batcher.reporting.workbook import write_workbook

        out_dir.mkdir(parents=True, exist_ok=True)
        forget_stamp(out_dir)  # whoever writes the report next vouches for it, or nobody does
        workbook = write_workbook(out_dir / WORKBOOK_NAME, model, early[0] if early else None)
    finally:
        for child in early:
            child.close()  # stopped if unused; a used one was waited for
    failed = write_failed_rows(out_dir / FAILED_ROWS_NAME, model)
    codes = None
    if reveal_codes:
        from batcher.reporting.workbook import write_codes

        if provider is None:
            raise UsageError("--reveal-codes needs the provider: the codes are not in the ledger")
        codes = write_codes(out_dir / CODES_NAME, model, fetch_redemptions(provider, model.rows))
    keep = archive_run if archive_as == "run" else archive_report
    archive = keep(out_dir, model)
    return ReportResult(
        workbook, failed, codes, archive, model.reconciliation, len(model.orphan_events)
    )


def kept_report(out_dir: Path, ledger_stamp: str | None) -> ReportStamp | None:
    """The report in `out_dir`, when it still shows the ledger as it is (`ledger_stamp`)
    and reconciled: a rerun that sent nothing keeps it rather than writing it again.

    Only a RECONCILED report is kept: any other verdict is worth asking again."""
    stamp = read_stamp(out_dir)
    if stamp is None or ledger_stamp is None or stamp.ledger_stamp != ledger_stamp:
        return None
    if stamp.reconciliation.get("verdict") != RECONCILED:
        return None
    files = (WORKBOOK_NAME, FAILED_ROWS_NAME, ROWS_NAME)
    if not all((out_dir / name).is_file() for name in files):
        return None
    return stamp


def archive_report(out_dir: Path, model: ReportModel) -> Path:
    """Keep this report under reports/<UTC time>/: never over a run's or an earlier report's."""
    from batcher.reporting.xlsx_stream import copy_or_link

    stamp = model.generated_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    base = out_dir / REPORT_ARCHIVE_DIR
    target, n = base / stamp, 1
    while target.exists():
        n += 1
        target = base / f"{stamp}-{n}"
    target.mkdir(parents=True)
    for name in (WORKBOOK_NAME, FAILED_ROWS_NAME):
        copy_or_link(out_dir / name, target / name)
    return target


def archive_run(out_dir: Path, model: ReportModel) -> Path | None:
    """Keep this run's files under runs/RUN_ID/, so a later run never loses them."""
    from batcher.reporting.xlsx_stream import copy_or_link

    run = model.latest_run
    if run is None:
        return None
    target = out_dir / ARCHIVE_DIR / _safe_name(run.run_id)
    target.mkdir(parents=True, exist_ok=True)
    names = [WORKBOOK_NAME, FAILED_ROWS_NAME]
    if _summary_run_id(out_dir / "summary.json") == run.run_id:
        names += ["summary.json", ROWS_NAME]
    for name in names:
        if (out_dir / name).exists():
            copy_or_link(out_dir / name, target / name)
    return target


def _summary_run_id(path: Path) -> str | None:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text) or "run"


# ---------------------------------------------------------------------------
# Gathering: the ledger, the runs, and the provider's side.


def collect(
    ledger: Ledger,
    batch: str,
    provider: Provider | None,
    *,
    sheet_rows: int | None = None,
    fetch: Fetch = "full",
    now: datetime | None = None,
    rows: BatchRows | None = None,
    facts: RowFacts | None = None,
    on_listed: Callable[[BatchRows, Mapping[str, Any], IdleSample | None], None] | None = None,
    while_listing: Callable[[], object] | None = None,
) -> ReportModel:
    """Everything the report shows. The batch's rows are never all held at once: they
    are summed in one pass (`RowFacts`) and read again, a page at a time, by whatever
    writes a line per row (`BatchRows`).

    `on_listed(rows, info, idle)` is called once the provider's listings are in (and
    their threads gone), before the rows are matched to them; `idle`: the machine's idle
    CPU time when the listings were in. `while_listing()` is work of the caller's that
    the main thread does while it waits for them (it is not called when nothing is
    listed)."""
    info = ledger.batch_info(batch)
    if info is None:
        raise UsageError(f"no batch named {batch!r} in the ledger")
    now = now or datetime.now(UTC)
    runs = run_infos(ledger, batch, now)
    windows = [r.window for r in runs]
    # A full report lists the provider's side whatever the rows say: that starts now,
    # in another thread, while the ledger's rows are read (it mostly waits on the network).
    listing = (
        _in_background(fetch_provider_data, provider, windows)
        if provider is not None and fetch == "full"
        else None
    )
    if rows is None:
        rows = BatchRows.from_ledger(ledger, batch)
    data, error = None, None
    listed_at: IdleSample | None = None
    if provider is None:
        error = "no connection to the provider"
    elif listing is not None:
        if while_listing is not None:
            while_listing()
        data, error = listing.result()
        listing.thread.join()
        from batcher.reporting.xlsx_stream import idle_sample

        listed_at = idle_sample()
    else:
        facts = facts if facts is not None else RowFacts.of(rows)
        if not _balances_suffice(fetch, facts):
            data, error = fetch_provider_data(provider, windows)
    if sheet_rows is None and runs:
        sheet_rows = _summary_rows_total(ledger, runs[-1].run_id)
    keys, requests = attempts(ledger, batch)
    other_batches = other_batch_orders(ledger, batch, data)
    if listing is not None and data is not None and on_listed is not None:
        on_listed(rows, info, listed_at)  # a core idle meanwhile is one to use
    inputs = ReconcileInputs(
        rows=rows,
        runs=windows,
        provider=data,
        sheet_rows=sheet_rows,
        other_batches=other_batches,
        provider_error=error,
        attempt_keys=keys,
        request_ids=requests,
    )
    # Matching the listings sums the rows on the way: one read of them, not two.
    reconciliation, facts = reconcile_and_sum(inputs, facts)
    rows.hold(_rows_in_lines(reconciliation))
    available = next((r.available_after for r in reversed(runs) if r.available_after), None)
    return ReportModel(
        batch=batch,
        info=info,
        runs=runs,
        rows=rows,
        facts=facts,
        reconciliation=reconciliation,
        failures=Failures(rows, facts.failures, facts.failures.top_ups(available or {})),
        generated_at=now,
        passthrough=facts.passthrough(info),
        orphan_events=webhook_orphans(ledger, str(info["provider"]), runs),
    )


def _import_workbook() -> None:
    """Load the workbook's code (openpyxl: about a third of a second of imports) while
    the provider's pages are read, rather than before the first of them is asked for."""
    import batcher.reporting.workbook  # noqa: F401


def _rows_in_lines(reconciliation: Reconciliation) -> dict[str, RowRecord | SettledRow]:
    """The batch's rows the wallet lines hold (every matched order's): kept in memory by
    the lines anyway, so the Orders sheet takes them from there, not from the ledger."""
    held: dict[str, RowRecord | SettledRow] = {}
    for line in reconciliation.wallet_lines:
        if line.row is not None:
            held[line.row.row_key] = line.row
        for row in line.rows:
            held[row.row_key] = row
    return held


def webhook_orphans(ledger: Ledger, provider: str, runs: Sequence[RunInfo]) -> list[StoredEvent]:
    """Webhook events for order requests no batch in this ledger sent, received while
    the batch ran: from its first run's start to its last run's end, plus the time a
    provider may take to deliver (WEBHOOK_DELAY). They are kept as evidence by
    `batcher listen`, and shown on the Orphans sheet beside the provider's orphan
    orders. An event received at another time belongs to no batch's report."""
    if not runs:
        return []
    first = utc_text(min(r.window.window.start for r in runs))
    until = utc_text(max(r.window.window.end for r in runs) + WEBHOOK_DELAY)
    evidence = WebhookEvents(ledger.location)
    try:
        return evidence.orphans(provider=provider, since=first, until=until)
    finally:
        evidence.close()


def _balances_suffice(fetch: Fetch, facts: RowFacts) -> bool:
    """After a run, a large batch is checked against the balances only.

    Listing a provider's orders and transactions costs two requests per 100 orders,
    which would add half again to a large run. The balances already read by the run
    prove (or disprove) that the wallet moved by exactly the ledger's costs;
    `batcher report` does the transaction-level matching when finance wants it.
    """
    if fetch == "quick":  # an interrupted run: stopping stays fast
        return True
    return fetch == "auto" and facts.ordered > AUTO_FETCH_MAX_ORDERS


def run_infos(ledger: Ledger, batch: str, now: datetime) -> list[RunInfo]:
    raw = sorted(ledger.runs(batch, limit=1_000_000), key=lambda r: r["started_at"])
    infos: list[RunInfo] = []
    for i, run in enumerate(raw):
        summary = ledger.run_summary(run["run_id"]) or {}
        started = _run_start(run, summary, now)
        finished = parse_ts(run["finished_at"])
        following = parse_ts(raw[i + 1]["started_at"]) if i + 1 < len(raw) else None
        end = finished or following or now
        before, after, available = _run_balances(summary)
        bounds = Window(started, end + TRUNCATION)
        window = RunWindow(run["run_id"], bounds, before, after, _idle(summary))
        infos.append(RunInfo(run["run_id"], started, finished, run["exit_code"], window, available))
    return infos


def _run_start(run: Mapping[str, Any], summary: Mapping[str, Any], now: datetime) -> datetime:
    """The earlier of the ledger's start and the command's: the balances are read in between."""
    moments = [m for m in (parse_ts(run["started_at"]), parse_ts(summary.get("started_at"))) if m]
    return min(moments) if moments else now


def _idle(summary: Mapping[str, Any]) -> bool:
    """A run that sent, polled and looked up nothing cannot have moved the batch's money."""
    requests = summary.get("requests") or {}
    return not any(requests.get(k) for k in ("submits", "polls", "lookups"))


def _run_balances(
    summary: Mapping[str, Any],
) -> tuple[dict[str, Decimal] | None, dict[str, Decimal] | None, dict[str, Decimal] | None]:
    """Balances at the run's start and end; the end only when the run read them again."""
    before = _balances(summary.get("balances_before"), "balance")
    reread = bool((summary.get("requests") or {}).get("submits"))
    after = _balances(summary.get("balances_after"), "balance") if reread else None
    available = _balances(summary.get("balances_after"), "available")
    return before, after, available


def _balances(data: Any, key: str) -> dict[str, Decimal] | None:
    if not isinstance(data, Mapping):
        return None
    found: dict[str, Decimal] = {}
    for currency, values in data.items():
        if isinstance(values, Mapping) and values.get(key) is not None:
            found[str(currency)] = Decimal(str(values[key]))
    return found


def _summary_rows_total(ledger: Ledger, run_id: str) -> int | None:
    value = (ledger.run_summary(run_id) or {}).get("rows_total")
    return value if isinstance(value, int) else None


def fetch_provider_data(
    provider: Provider, windows: Sequence[RunWindow]
) -> tuple[ProviderData | None, str | None]:
    """The provider's orders and transactions over the batch's span, with a margin."""
    whole = span(windows)
    if whole is None:
        return ProviderData((), ()), None
    since, until = whole.start - CLOCK_MARGIN, whole.end + CLOCK_MARGIN
    try:
        # Two lists of pages, read side by side: each waits on the network most of the time.
        listed = _in_background(provider.transactions, since)
        orders = provider.orders(since, until)
        transactions = [
            tx for tx in listed.result() if tx.timestamp is None or tx.timestamp <= until
        ]
        listed.thread.join()
    except BatcherError as exc:
        return None, exc.message  # BatcherError messages never carry a secret
    except OSError as exc:
        return None, f"{type(exc).__name__} while listing orders and transactions"
    return ProviderData(orders, transactions), None


class _Background(Future[T]):
    """A result to come from `thread`, which ends once it is set."""

    thread: threading.Thread


def _in_background(work: Callable[..., T], *args: Any) -> _Background[T]:
    """`work(*args)` in a thread of its own; its result (or its error) from `.result()`."""
    future: _Background[T] = _Background()

    def run() -> None:
        try:
            future.set_result(work(*args))
        except BaseException as exc:  # handed to whoever asks for the result
            future.set_exception(exc)

    future.thread = threading.Thread(target=run, name="report-listing", daemon=True)
    future.thread.start()
    return future


def attempts(ledger: Ledger, batch: str) -> tuple[frozenset[str], frozenset[str]]:
    """The batch's idempotency keys and order request ids, over every attempt.

    A row released for a new attempt gets a new chunk key (and request id), so the
    rows alone do not name the orders of earlier, failed attempts: the `chunks`
    table and the `events` log do. Reconciliation uses them to tell the batch's own
    failed (and refunded) orders from orphans.
    """
    keys: set[str] = set()
    requests: set[str] = set()
    for chunk_key, request_id in ledger.chunk_requests(batch):
        keys.add(chunk_key)
        if request_id:
            requests.add(request_id)
    for event in ledger.events(batch, "chunk_accepted"):
        if event.get("chunk_key"):
            keys.add(event["chunk_key"])
        request = _detail(event).get("request_id")
        if isinstance(request, str) and request:
            requests.add(request)
    return frozenset(keys), frozenset(requests)


def _detail(event: Mapping[str, Any]) -> dict[str, Any]:
    try:
        detail = json.loads(event.get("detail") or "{}")
    except ValueError:
        return {}
    return detail if isinstance(detail, dict) else {}


def other_batch_orders(ledger: Ledger, batch: str, data: ProviderData | None) -> dict[str, str]:
    """Order id (or order request id) -> batch, for the provider's orders another batch
    in this ledger holds. Only the provider's ids and the other batches' ids are read,
    never this batch's rows: reconciliation sets aside any it finds are this batch's own."""
    if data is None:
        return {}
    unknown = {o.order_id for o in data.orders}
    unknown |= {t.order_id for t in data.transactions if t.order_id}
    if not unknown:
        return {}
    found: dict[str, str] = {}
    for other in ledger.batches():
        name = other["batch"]
        if name == batch:
            continue
        for ids in ledger.order_keys(name):
            for key in ids:
                if key and key in unknown:
                    found[key] = name
    return found


# ---------------------------------------------------------------------------
# failed_rows.csv: the input's own columns, ready to fix and feed back.


def failed_rows_headers(
    info: Mapping[str, Any], rows: Iterable[RowRecord] = (), passthrough: Sequence[str] = ()
) -> tuple[list[str], str]:
    """The sheet's headers in file order, and the name of the added error column.

    A ledger from before the sheet layout was kept has no headers: the mapped
    columns and the pass-through ones (`passthrough`, else those the rows name)
    stand in for them.
    """
    headers = [str(h) for h in info.get("sheet_headers") or []]
    if not headers:
        headers = list((info.get("sheet_columns") or {}).values())
        named = passthrough or list(dict.fromkeys(k for r in rows for k in r.passthrough))
        headers += list(named)
    taken = {h.strip().lower() for h in headers}
    error = "error"
    while error in taken:
        error = f"batcher_{error}"
    return headers, error


def failed_row_values(
    row: RowRecord, headers: Sequence[str], columns: Mapping[str, str]
) -> list[str]:
    """The row under the sheet's headers: canonical fields where mapped, else pass-through."""
    field_of = {header: name for name, header in columns.items()}
    values = []
    for header in headers:
        name = field_of.get(header)
        if name is not None:
            values.append(row.fields.get(name, ""))
        else:
            values.append(row.passthrough.get(header, ""))
    return values


def write_failed_rows(path: Path, model: ReportModel) -> Path:
    headers, error = failed_rows_headers(model.info, passthrough=list(model.facts.passthrough_seen))
    columns = model.info.get("sheet_columns") or {}
    with atomic_write(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([safe_cell(h) for h in [*headers, error]])
        for failure in model.failures:
            if not failure.refeed:
                continue
            values = failed_row_values(failure.row, headers, columns)
            note = f"{failure.reason}; next: {failure.next_step}"
            writer.writerow([safe_cell(v) for v in [*values, note]])
    return path


# ---------------------------------------------------------------------------
# codes.xlsx: live voucher codes, only on request.


def fetch_redemptions(provider: Provider, rows: Iterable[RowRecord]) -> dict[str, Redemption]:
    found: dict[str, Redemption] = {}
    for row in rows:
        if row.state != "succeeded" or not row.order_id:
            continue  # not one of the batch's orders
        redemption = provider.redemption(row.order_id)
        if redemption is not None:
            found[row.order_id] = redemption
    return found
