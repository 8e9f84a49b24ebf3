"""The reconciliation workbook, failed_rows.csv and codes.xlsx, from a real ledger.

The provider is a small in-memory fake here; tests/e2e/test_report.py drives the
real CLI against the real sandbox.
"""

from __future__ import annotations

import csv
import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from openpyxl import Workbook, load_workbook
from openpyxl.worksheet.worksheet import Worksheet

from batcher.core.clock import utc_now
from batcher.core.files import atomic_write
from batcher.core.models import WalletTransaction
from batcher.ledger.events import WebhookEvents
from batcher.ledger.store import Ledger, RowOutcome, SheetRow
from batcher.providers.base import ProviderOrder, Redemption
from batcher.reporting import reports
from batcher.reporting.cells import FORMULA_TRIGGERS
from batcher.reporting.reconcile import IN_PROGRESS, MISMATCH, NOT_VERIFIED, RECONCILED
from batcher.reporting.reports import FAILED_ROWS_NAME, write_batch_report
from batcher.reporting.summary_sheet import CURRENCY_HEADERS
from batcher.reporting.workbook import ORDERS
from batcher.reporting.xlsx_stream import StreamedSheet, prepare, register_style, save
from batcher.reporting.xlsx_style import money_format

HEADERS = ["Reference", "Email", "Name", "Product", "Amount", "Currency", "Cost centre"]
COLUMNS = {
    "reference": "Reference",
    "recipient_email": "Email",
    "recipient_name": "Name",
    "product_code": "Product",
    "amount": "Amount",
    "currency": "Currency",
}
NASTY_NAMES = [
    '=HYPERLINK("http://evil.example","x")',
    "+1",
    "@SUM(A1:A9)",
    "-2+3",
    "\tTab",
    "\rCR",
]
CODE = "ABCD-EFGH-JKLM-AB12"


@dataclass
class Spec:
    """One sheet row and what became of it."""

    n: int
    currency: str = "GBP"
    face: str = "50.00"
    cost: str | None = "48.75"
    state: str = "succeeded"  # succeeded | invalid | funds | failed | unknown
    name: str = ""
    product: str = "AMAZON_UK_STD"
    cost_centre: str = "CC-1"


@dataclass
class FakeProvider:
    """Lists what the ledger says was ordered; records calls."""

    orders_: list[ProviderOrder] = field(default_factory=list)
    transactions_: list[WalletTransaction] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)

    def orders(self, since: datetime, until: datetime | None = None) -> list[ProviderOrder]:
        self.calls.append("orders")
        return [o for o in self.orders_ if o.created_at and since <= o.created_at]

    def transactions(self, since: datetime | None = None) -> list[WalletTransaction]:
        self.calls.append("transactions")
        return list(self.transactions_)

    def redemption(self, order_id: str) -> Redemption | None:
        self.calls.append("redemption")
        return Redemption(order_id, CODE, f"https://redeem.example/{order_id}")


def sheet_row(spec: Spec) -> SheetRow:
    face = Decimal(spec.face)
    return SheetRow(
        row_key=f"k{spec.n}",
        source_row=spec.n + 1,
        reference=f"R-{spec.n}",
        content_hash=f"h{spec.n}",
        fields={
            "reference": f"R-{spec.n}",
            "recipient_email": f"p{spec.n}@example.com",
            "recipient_name": spec.name or f"Person {spec.n}",
            "product_code": spec.product,
            "amount": spec.face,
            "currency": spec.currency,
        },
        passthrough={"Cost centre": spec.cost_centre},
        currency=spec.currency,
        face_value=face if spec.state != "invalid" else Decimal(0),
        est_cost=Decimal(spec.cost) if spec.cost else None,
        valid=spec.state != "invalid",
        error_code="unknown_product" if spec.state == "invalid" else "",
        error_message=f"column Product: there is no product '{spec.product}'"
        if spec.state == "invalid"
        else "",
    )


def outcome(spec: Spec) -> RowOutcome:
    key = f"k{spec.n}"
    if spec.state == "succeeded":
        return RowOutcome(
            key, "succeeded", order_id=f"o{spec.n}", transaction_id=f"txn_{spec.n}",
            cost=Decimal(spec.cost) if spec.cost else None, cost_currency=spec.currency,
            voucher_last4="AB12", provider_status="active",
        )  # fmt: skip
    if spec.state == "funds":
        return RowOutcome(
            key, "pending", failure_kind="retryable", error_code="insufficient_funds",
            error_message="insufficient funds in the GBP wallet", release=True,
        )  # fmt: skip
    if spec.state == "failed":
        return RowOutcome(
            key, "failed", failure_kind="permanent", error_code="item_rejected",
            error_message="Product is inactive",
        )  # fmt: skip
    return RowOutcome(key, "unknown", error_code="no_result", error_message="no answer")


def build(
    tmp_path: Path,
    specs: list[Spec],
    *,
    balances: dict[str, tuple[str, str]] | None = None,
    batch: str = "nightly",
    strangers: tuple[Spec, ...] = (),
) -> tuple[Ledger, FakeProvider]:
    """A ledger after one run over `specs`, and a provider that agrees with it.

    `strangers` are orders placed at the provider during the run, outside batcher.
    """
    ledger = Ledger.open(tmp_path / "state")
    ledger.ensure_batch(
        batch, provider="ugiftme", account_id="acct-1", source_path="/in/nightly.csv",
        source_sha256="ab" * 32, sheet_headers=HEADERS, sheet_columns=COLUMNS,
    )  # fmt: skip
    run_id = ledger.start_run(batch, "run")
    started = utc_now()
    ledger.sync_rows(batch, [sheet_row(s) for s in specs], retry_failed=False)
    sent = [s for s in specs if s.state != "invalid"]
    provider = FakeProvider()
    for spec in sent:
        key = f"chunk-{spec.n}"
        ledger.save_plan(batch, [(key, spec.currency, 1, [f"k{spec.n}"], b"{}")])
        ledger.mark_sending(batch, key)
        ledger.settle_chunk(batch, key, "succeeded", [outcome(spec)])
        if spec.state == "succeeded":
            provider.orders_.append(provider_order(spec))
            provider.transactions_.append(debit(spec))
    for stranger in strangers:
        provider.orders_.append(provider_order(stranger))
        provider.transactions_.append(debit(stranger))
    summary = {
        "run_id": run_id,
        "started_at": started,
        "rows_total": len(specs),
        "requests": {"submits": len(sent), "polls": 0, "lookups": 0},
        "balances_before": _balances(balances, 0),
        "balances_after": _balances(balances, 1),
    }
    ledger.finish_run(run_id, batch, 0, summary)
    return ledger, provider


def _balances(balances: dict[str, tuple[str, str]] | None, i: int) -> dict[str, Any] | None:
    if balances is None:
        return None
    return {c: {"balance": v[i], "available": v[i]} for c, v in balances.items()}


def provider_order(spec: Spec) -> ProviderOrder:
    return ProviderOrder(
        order_id=f"o{spec.n}", product_code=spec.product, currency=spec.currency,
        face_value=Decimal(spec.face), status="active", created_at=datetime.now(UTC),
        recipient_email=f"p{spec.n}@example.com", recipient_name=spec.name or f"Person {spec.n}",
    )  # fmt: skip


def debit(spec: Spec) -> WalletTransaction:
    assert spec.cost is not None
    return WalletTransaction(
        transaction_type="purchase", amount=-Decimal(spec.cost), currency=spec.currency,
        order_id=f"o{spec.n}", transaction_id=f"t{spec.n}", timestamp=datetime.now(UTC),
        description="purchase",
    )  # fmt: skip


MIXED = [
    Spec(1, face="25.50", cost="24.86", name=NASTY_NAMES[0], cost_centre="=1+2"),
    Spec(2, face="10.00", cost="9.75", name=NASTY_NAMES[1]),
    Spec(
        3, currency="EUR", face="30.00", cost="29.25", product="AMAZON_DE_STD", name=NASTY_NAMES[2]
    ),
    Spec(4, state="invalid", product="NOPE_UK", name=NASTY_NAMES[3]),
    Spec(5, currency="JPY", face="5000", cost="4875", product="AMAZON_JP", name=NASTY_NAMES[4]),
    Spec(6, state="funds", face="200.00", cost="195.00", name=NASTY_NAMES[5]),
    Spec(7, state="failed", product="TESCO_UK", face="20.00", cost="19.20"),
    Spec(8, state="unknown", face="15.00", cost="14.63"),
    Spec(9, face="0.10", cost="0.10"),
    Spec(10, face="0.20", cost="0.20"),
]


@pytest.fixture
def mixed(tmp_path: Path) -> Iterator[tuple[Ledger, FakeProvider, reports.ReportResult]]:
    balances = {"GBP": ("100.00", "65.09"), "EUR": ("500.00", "470.75"), "JPY": ("9000", "4125")}
    ledger, provider = build(tmp_path, MIXED, balances=balances)
    result = write_batch_report(ledger, "nightly", provider, tmp_path / "reports")  # type: ignore[arg-type]
    yield ledger, provider, result
    ledger.close()


def table(sheet: Worksheet) -> list[dict[str, Any]]:
    rows = list(sheet.iter_rows(values_only=True))
    return [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]


def summary_block(sheet: Worksheet, first_header: str) -> list[dict[str, Any]]:
    """The rows of a Summary table, from its header row to the next blank row."""
    cells = list(sheet.iter_rows(values_only=True))
    start = next(i for i, r in enumerate(cells) if r[0] == first_header)
    header = [h for h in cells[start] if h is not None]
    block = []
    for r in cells[start + 1 :]:
        if r[0] is None:
            break
        block.append(dict(zip(header, r[: len(header)], strict=True)))
    return block


def dec(value: Any) -> Decimal:
    return Decimal(str(value))


# ---------------------------------------------------------------------------


def test_money_formats_follow_the_currency() -> None:
    assert money_format("GBP") == '"£"#,##0.00'
    assert money_format("EUR") == '"€"#,##0.00'
    assert money_format("JPY") == '"¥"#,##0'
    assert money_format("USD") == '"$"#,##0.00'
    assert money_format("KWD") == '#,##0.000 "KWD"'
    assert money_format("CHF") == '#,##0.00 "CHF"'


def test_orders_sheet_has_one_line_per_row_in_source_order(mixed: Any) -> None:
    _ledger, _, result = mixed
    wb = load_workbook(result.workbook)
    assert wb.sheetnames == ["Summary", "Orders", "Failures", "Wallet", "Orphans", "Outstanding"]
    orders = wb[ORDERS]
    lines = table(orders)
    assert [line["Source row"] for line in lines] == [s.n + 1 for s in MIXED]
    header = [c.value for c in orders[1]]
    assert header[:3] == ["Source row", "Reference", "Cost centre"]
    for wanted in ("Recipient email", "Recipient name", "Product", "Face value", "Cost",
                   "Currency", "State", "Order id", "Transaction id", "Order request id",
                   "Idempotency key", "Attempts", "Last error", "Created (UTC)"):  # fmt: skip
        assert wanted in header
    by_row = {line["Source row"]: line for line in lines}
    assert by_row[2]["Voucher"] == "••••-AB12"
    assert by_row[2]["Order id"] == "o1" and by_row[2]["Idempotency key"] == "chunk-1"
    assert by_row[5]["State"] == "invalid" and by_row[5]["Face value"] is None
    assert "there is no product" in by_row[5]["Last error"]
    assert isinstance(by_row[2]["Created (UTC)"], datetime)
    assert by_row[2]["Created (UTC)"].tzinfo is None, "Excel dates carry no zone: UTC by header"
    assert orders.freeze_panes == "B2"
    assert orders.auto_filter.ref == f"A1:{orders.cell(1, orders.max_column).column_letter}11"
    assert orders.column_dimensions["B"].width >= 10


def test_money_cells_are_numbers_with_currency_formats_exact_to_the_cent(mixed: Any) -> None:
    ledger, _, result = mixed
    orders = load_workbook(result.workbook)[ORDERS]
    header = [c.value for c in orders[1]]
    cost_col, face_col = header.index("Cost") + 1, header.index("Face value") + 1
    ledger_rows = {r.source_row: r for r in ledger.rows("nightly")}
    seen_formats = set()
    for line in orders.iter_rows(min_row=2):
        source = ledger_rows[line[0].value]
        cost = line[cost_col - 1]
        if source.cost is None:
            assert cost.value is None
            continue
        assert cost.data_type == "n", "money is a number, never text"
        assert dec(cost.value) == source.cost
        assert cost.number_format == money_format(source.currency)
        assert dec(line[face_col - 1].value) == source.face_value
        seen_formats.add(cost.number_format)
    assert seen_formats == {'"£"#,##0.00', '"€"#,##0.00', '"¥"#,##0'}


def test_summary_totals_equal_their_lines_and_the_wallet(mixed: Any) -> None:
    _ledger, _, result = mixed
    wb = load_workbook(result.workbook)
    per_currency = {r["Currency"]: r for r in summary_block(wb["Summary"], CURRENCY_HEADERS[0])}
    assert set(per_currency) == {"GBP", "EUR", "JPY"}
    orders = table(wb[ORDERS])
    wallet = table(wb["Wallet"])
    for currency, line in per_currency.items():
        ordered = [o for o in orders if o["State"] == "succeeded" and o["Currency"] == currency]
        assert dec(line["Cost (ledger)"]) == sum(dec(o["Cost"]) for o in ordered)
        assert dec(line["Face value"]) == sum(dec(o["Face value"]) for o in ordered)
        debits = [-dec(w["Amount"]) for w in wallet if w["Currency"] == currency]
        assert dec(line["Wallet debits (provider)"]) == sum(debits)
        assert dec(line["Difference"]) == 0
        # GBP has a row in flight and one not sent yet: nothing unexplained, not finished.
        expected = IN_PROGRESS if currency == "GBP" else RECONCILED
        assert line["Verdict"] == expected, line["Reason"]
    assert dec(per_currency["GBP"]["Cost (ledger)"]) == Decimal("34.91")  # 24.86+9.75+0.10+0.20
    assert dec(per_currency["JPY"]["Balance after"]) == 4125
    summary = wb["Summary"]
    gbp_row = next(r for r in summary.iter_rows(min_row=1) if r[0].value == "GBP")
    assert gbp_row[3].number_format == '"£"#,##0.00' and gbp_row[3].data_type == "n"
    assert result.reconciliation.verdict == IN_PROGRESS
    assert "in flight" in result.reconciliation.reason


def test_state_counts_add_up_and_a_chart_shows_spend(mixed: Any) -> None:
    _, _, result = mixed
    summary = load_workbook(result.workbook)["Summary"]
    counts = {r["State"]: r["Rows"] for r in summary_block(summary, "State")}
    assert counts["Total"] == sum(
        v for k, v in counts.items() if k not in {"Total", "Rows in the sheet", "Adds up"}
    )
    assert counts["Total"] == counts["Rows in the sheet"] == len(MIXED)
    assert counts["Adds up"] == "yes"
    assert counts["succeeded"] == 6 and counts["invalid"] == 1 and counts["unknown"] == 1
    assert len(summary._charts) == 3, "one spend-by-product chart per currency"
    spend = summary_block(summary, "Product")
    assert {(s["Product"], s["Currency"]) for s in spend} >= {("AMAZON_UK_STD", "GBP")}


def test_failures_are_explained_in_plain_english(mixed: Any) -> None:
    _, _, result = mixed
    wb = load_workbook(result.workbook)
    failures = {f["Source row"]: f for f in table(wb["Failures"])}
    outstanding = {f["Source row"]: f for f in table(wb["Outstanding"])}
    assert set(failures) == {5, 7, 8}, "only rows that need a person"
    assert set(outstanding) == {9}, "the row in flight waits for a rerun"
    failures.update(outstanding)
    assert failures[5]["Next step"] == "fix the product code in row 5"
    assert failures[5]["In failed_rows.csv"] == "yes"
    # £200 estimated is needed; the wallet was left with £65.09.
    assert failures[7]["Next step"] == "top up GBP wallet by £129.91 and rerun"
    assert "Product is inactive" in failures[8]["What went wrong"]
    assert failures[8]["In failed_rows.csv"] == "yes"
    assert "do not put this row in a new sheet" in failures[9]["Next step"]
    assert failures[9]["In failed_rows.csv"] == "no"
    steps = [s["Next step"] for s in summary_block(wb["Summary"], "Rows")]
    assert "top up GBP wallet by £129.91 and rerun" in steps


def test_every_text_cell_is_inert(mixed: Any) -> None:
    _, _, result = mixed
    for name in (result.workbook,):
        wb = load_workbook(name)
        for sheet in wb.worksheets:
            for line in sheet.iter_rows():
                for cell in line:
                    assert cell.data_type != "f", (sheet.title, cell.coordinate, cell.value)
                    if isinstance(cell.value, str):
                        assert not cell.value.startswith(FORMULA_TRIGGERS), (
                            sheet.title,
                            cell.value,
                        )
    names = [r["Recipient name"] for r in table(load_workbook(result.workbook)[ORDERS])]
    assert '\'=HYPERLINK("http://evil.example","x")' in names and "'-2+3" in names
    with result.failed_rows.open(newline="", encoding="utf-8") as fh:
        for line in csv.reader(fh):
            assert not any(v.startswith(FORMULA_TRIGGERS) for v in line), line


def test_no_voucher_code_and_no_secret_in_the_report_files(mixed: Any) -> None:
    _, provider, result = mixed
    assert "redemption" not in provider.calls
    assert result.workbook.parent.name == "nightly"
    for path in result.workbook.parent.rglob("*"):
        if path.is_file():
            assert CODE.encode() not in _all_bytes(path), path
    assert result.codes is None


def _all_bytes(path: Path) -> bytes:
    if path.suffix == ".xlsx":
        with zipfile.ZipFile(path) as z:
            return b"".join(z.read(n) for n in z.namelist())
    return path.read_bytes()


def test_the_workbook_reads_in_read_only_mode_too(mixed: Any) -> None:
    _, _, result = mixed
    wb = load_workbook(result.workbook, read_only=True)
    assert sum(1 for _ in wb[ORDERS].iter_rows(values_only=True)) == len(MIXED) + 1
    wb.close()


def test_failed_rows_csv_has_the_input_headers_and_only_rows_to_fix(mixed: Any) -> None:
    _, _, result = mixed
    with result.failed_rows.open(newline="", encoding="utf-8") as fh:
        lines = list(csv.reader(fh))
    assert lines[0] == [*HEADERS, "error"]
    by_ref = {line[0]: dict(zip(lines[0], line, strict=True)) for line in lines[1:]}
    assert set(by_ref) == {"R-4", "R-7"}, "invalid and refused rows; never unconfirmed ones"
    assert by_ref["R-4"]["Product"] == "NOPE_UK"
    assert by_ref["R-4"]["Name"] == "'-2+3"
    assert by_ref["R-4"]["Cost centre"] == "CC-1"
    assert "fix the product code in row 5" in by_ref["R-4"]["error"]
    assert by_ref["R-7"]["Amount"] == "20.00"


def test_an_input_column_named_error_is_not_overwritten() -> None:
    headers, error = reports.failed_rows_headers({"sheet_headers": ["Email", "Error"]})
    assert headers == ["Email", "Error"] and error == "batcher_error"


def test_reveal_codes_writes_a_private_codes_file(tmp_path: Path) -> None:
    ledger, provider = build(tmp_path, [Spec(1), Spec(2, name="=cmd|' /C calc'!A0")])
    result = write_batch_report(
        ledger,
        "nightly",
        provider,
        tmp_path / "reports",
        reveal_codes=True,  # type: ignore[arg-type]
    )
    assert result.codes is not None
    assert stat.S_IMODE(result.codes.stat().st_mode) == 0o600
    codes = table(load_workbook(result.codes)["Codes"])
    assert [c["Voucher code"] for c in codes] == [CODE, CODE]
    assert codes[1]["Recipient name"].startswith("'=")
    assert CODE.encode() not in _all_bytes(result.workbook)
    assert not (result.archive and (result.archive / "codes.xlsx").exists()), "codes never archived"
    ledger.close()


def test_an_orphan_makes_the_workbook_say_mismatch(tmp_path: Path) -> None:
    stranger = Spec(99, face="75.00", cost="73.13")
    ledger, provider = build(
        tmp_path, [Spec(1), Spec(2, currency="EUR", product="AMAZON_DE_STD")], strangers=(stranger,)
    )
    result = write_batch_report(ledger, "nightly", provider, tmp_path / "r")  # type: ignore[arg-type]
    wb = load_workbook(result.workbook)
    assert wb["Summary"]["B2"].value == MISMATCH
    per_currency = {r["Currency"]: r for r in summary_block(wb["Summary"], "Currency")}
    assert per_currency["GBP"]["Verdict"] == MISMATCH and per_currency["GBP"]["Orphans"] == 1
    assert per_currency["EUR"]["Verdict"] == RECONCILED
    (orphan,) = table(wb["Orphans"])
    assert orphan["Order id"] == "o99" and dec(orphan["Wallet debit"]) == Decimal("73.13")
    ledger.close()


def test_each_run_is_archived_and_kept(tmp_path: Path) -> None:
    ledger, provider = build(tmp_path, [Spec(1)])
    first = write_batch_report(ledger, "nightly", provider, tmp_path / "r", archive_as="run")  # type: ignore[arg-type]
    assert first.archive is not None and (first.archive / "reconciliation.xlsx").exists()
    run_id = ledger.start_run("nightly", "run")
    ledger.finish_run(run_id, "nightly", 0, {"requests": {}})
    second = write_batch_report(ledger, "nightly", provider, tmp_path / "r", archive_as="run")  # type: ignore[arg-type]
    assert second.archive is not None and second.archive != first.archive
    archived = sorted(p.name for p in (tmp_path / "r" / "nightly" / "runs").iterdir())
    assert len(archived) == 2
    assert (first.archive / FAILED_ROWS_NAME).exists()
    about = {
        r[0]: r[1]
        for r in load_workbook(first.archive / "reconciliation.xlsx")["Summary"].iter_rows(
            values_only=True
        )
    }
    assert about["Runs of this batch"] == 1
    ledger.close()


def test_batcher_report_writes_a_new_dated_archive_and_never_a_runs(tmp_path: Path) -> None:
    ledger, provider = build(tmp_path, [Spec(1)])
    run = write_batch_report(ledger, "nightly", provider, tmp_path / "r", archive_as="run")  # type: ignore[arg-type]
    assert run.archive is not None
    kept = (run.archive / "reconciliation.xlsx").read_bytes()
    one = write_batch_report(ledger, "nightly", provider, tmp_path / "r")  # type: ignore[arg-type]
    two = write_batch_report(ledger, "nightly", provider, tmp_path / "r")  # type: ignore[arg-type]
    assert one.archive is not None and two.archive is not None
    assert one.archive.parent.name == two.archive.parent.name == "reports"
    assert one.archive != two.archive and one.archive.name[:8].isdigit()
    assert (one.archive / "reconciliation.xlsx").exists()
    assert (run.archive / "reconciliation.xlsx").read_bytes() == kept, "the run's copy stays"
    ledger.close()


def test_after_a_large_run_the_balances_stand_in_for_the_listings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reports, "AUTO_FETCH_MAX_ORDERS", 1)
    ledger, provider = build(
        tmp_path, [Spec(1, cost="48.75"), Spec(2, cost="48.75")],
        balances={"GBP": ("1000.00", "902.50")},
    )  # fmt: skip
    result = write_batch_report(
        ledger,
        "nightly",
        provider,
        tmp_path / "r",
        fetch="auto",  # type: ignore[arg-type]
    )
    assert provider.calls == [], "no listing after a large run"
    rec = result.reconciliation
    assert rec.evidence == "balances" and rec.verdict == RECONCILED
    wallet = table(load_workbook(result.workbook)["Wallet"])
    assert wallet[0]["Status"] == "not fetched"
    full = write_batch_report(ledger, "nightly", provider, tmp_path / "r")  # type: ignore[arg-type]
    assert full.reconciliation.evidence == "transactions" and "orders" in provider.calls
    ledger.close()


def test_no_provider_means_no_verdict_but_still_a_workbook(tmp_path: Path) -> None:
    ledger, _ = build(tmp_path, [Spec(1)])
    result = write_batch_report(ledger, "nightly", None, tmp_path / "r")
    assert result.reconciliation.verdict == NOT_VERIFIED
    assert "could not be read" in result.reconciliation.reason
    assert result.workbook.exists()
    ledger.close()


# ---------------------------------------------------------------------------
# The streaming writer.


def test_streamed_cells_are_escaped_trimmed_and_typed(tmp_path: Path) -> None:
    wb = Workbook()
    sheet = wb.active
    assert sheet is not None
    money = register_style(wb, money_format("GBP"))
    date = register_style(wb, "yyyy-mm-dd hh:mm:ss")
    prepare(sheet, ["text", "number", "when"], 3)
    from batcher.reporting.xlsx_stream import Styled

    moment = datetime(2026, 3, 1, 22, 15, 30, tzinfo=UTC)
    rows = [
        ["a < b & c > d", Styled(Decimal("1234.50"), money), moment],
        ["bell\x07 and nul\x00 gone", Decimal("0.10"), moment - timedelta(days=1)],
        ["  padded  ", 7, None],
    ]
    path = tmp_path / "s.xlsx"
    with atomic_write(path) as tmp:
        save(tmp, wb, [StreamedSheet(sheet, rows, 3, 3)], date)
    back = load_workbook(path).active
    assert back is not None
    assert back["A2"].value == "a < b & c > d"
    assert back["B2"].value == 1234.5 and back["B2"].number_format == '"£"#,##0.00'
    assert back["C2"].value == datetime(2026, 3, 1, 22, 15, 30)
    assert back["A3"].value == "bell and nul gone"
    assert back["A4"].value == "  padded  " and back["B4"].value == 7
    assert back.dimensions == "A1:C4"


def test_a_row_count_that_lies_is_refused(tmp_path: Path) -> None:
    wb = Workbook()
    sheet = wb.active
    assert sheet is not None
    prepare(sheet, ["x"], 2)
    path = tmp_path / "s.xlsx"
    wb.save(path)
    with (
        pytest.raises(RuntimeError, match="1 rows written, 2 expected"),
        atomic_write(path) as tmp,
    ):
        save(tmp, wb, [StreamedSheet(sheet, [["only one"]], 2, 1)], 0)
    assert zipfile.is_zipfile(path), "the saved file is left as it was"


# ---------------------------------------------------------------------------
# Plain English, row by row.


def _explained(**over: Any) -> Any:
    from batcher.reporting.failures import explain
    from tests.test_reconcile import row

    base = {"order_id": None, "transaction_id": None, "cost": None}
    return explain(row(16, **{**base, **over}), {"GBP": "top up GBP wallet by £230.00 and rerun"})


@pytest.mark.parametrize(
    ("over", "reason", "step", "refeed"),
    [
        (
            {"state": "invalid", "error_code": "unknown_product"},
            "not valid",
            "fix the product code in row 17",
            True,
        ),
        (
            {"state": "invalid", "error_code": "bad_email", "error_message": "column Email: x"},
            "column Email",
            "fix the email address in row 17",
            True,
        ),
        (
            {"state": "invalid", "error_code": "odd", "error_message": "column Budget: too big"},
            "too big",
            "fix column 'Budget' in row 17",
            True,
        ),
        (
            {"state": "pending", "error_code": "insufficient_funds"},
            "did not have enough funds",
            "top up GBP wallet by £230.00 and rerun",
            False,
        ),
        ({"state": "pending"}, "not sent yet", "rerun the batch to order it", False),
        (
            {"state": "failed", "failure_kind": "retryable", "error_message": "upstream timeout"},
            "upstream timeout",
            "retries it automatically",
            False,
        ),
        (
            {"state": "failed", "failure_kind": "permanent", "error_message": "Inactive"},
            "refused it: Inactive",
            "fix it in failed_rows.csv",
            True,
        ),
        (
            {
                "state": "failed",
                "failure_kind": "permanent",
                "error_code": "idempotency_key_reused",
            },
            "a batcher bug",
            "do not rerun",
            False,
        ),
        ({"state": "accepted"}, "not confirmed", "do not put this row in a new sheet", False),
        (
            {"state": "succeeded", "order_id": "o1", "conflict": "the sheet changed this row"},
            "changed this row after it was sent",
            "check the order",
            False,
        ),
    ],
)
def test_each_kind_of_failure_has_a_reason_and_a_next_step(
    over: dict[str, Any], reason: str, step: str, refeed: bool
) -> None:
    failure = _explained(**over)
    assert failure is not None
    assert reason in failure.reason and step in failure.next_step
    assert failure.refeed is refeed


def test_succeeded_and_skipped_rows_need_no_action() -> None:
    assert _explained(state="succeeded", order_id="o1") is None
    assert _explained(state="skipped") is None


def test_a_cross_currency_row_short_of_funds_names_the_paying_wallet() -> None:
    from batcher.reporting.failures import explain_failures
    from tests.test_reconcile import row

    held = row(
        3, state="pending", order_id=None, cost=None, currency="USD",
        error_code="insufficient_funds", error_message="needed £90.00, available £41.68",
    )  # fmt: skip
    held = replace(held, fields={**held.fields, "payment_currency": "GBP"})
    (failure,) = explain_failures([held], {"GBP": Decimal("41.68")})
    assert failure.reason.startswith("the GBP wallet did not have enough funds")
    assert "needed £90.00" in failure.reason
    assert failure.next_step.startswith("top up the GBP wallet") and not failure.outstanding


def test_webhook_events_for_unknown_requests_are_on_the_orphans_sheet(tmp_path: Path) -> None:
    ledger, provider = build(tmp_path, MIXED)
    evidence = WebhookEvents(ledger.location)
    try:
        for n, (who, request) in enumerate(
            [("ugiftme", "req-ghost"), ("gifq", "req-other-provider")]
        ):
            evidence.record(
                who, f"delivery-{n}", event="order.succeeded", request_id=request,
                status="=HYPERLINK(\"http://x\")", terminal=True, order_ids=["ord-ghost"],
                payload="{}",
            )  # fmt: skip
        evidence.record(
            "ugiftme",
            "delivery-0",
            event="order.succeeded",
            request_id="req-ghost",
            status="succeeded",
            terminal=True,
            order_ids=["ord-ghost"],
            payload="{}",
        )  # fmt: skip  (a repeat delivery of the first: one line, counted twice)
    finally:
        evidence.close()
    result = write_batch_report(ledger, "nightly", provider, tmp_path / "reports")  # type: ignore[arg-type]
    ledger.close()
    assert result.webhook_orphans == 1  # the other provider's event is not this batch's
    lines = table(load_workbook(result.workbook)["Orphans"])
    events = [line for line in lines if "webhook" in str(line["Note"])]
    assert len(events) == 1
    assert events[0]["Order id"] == "ord-ghost"
    assert "req-ghost" in events[0]["Note"] and "delivered 2 times" in events[0]["Note"]
    assert not str(events[0]["Status"]).startswith("=")  # provider text never runs


def test_webhook_events_outside_the_batchs_runs_are_not_its_orphans(tmp_path: Path) -> None:
    """An orphan event belongs to the report of a batch that ran when it arrived (plus the
    provider's delivery delay), not to every batch that ever ran before it."""
    ledger, provider = build(tmp_path, MIXED)
    evidence = WebhookEvents(ledger.location)
    try:
        for n, request in enumerate(["req-during", "req-long-after", "req-long-before"]):
            evidence.record(
                "ugiftme", f"delivery-{n}", event="order.succeeded", request_id=request,
                status="succeeded", terminal=True, order_ids=[f"ord-{n}"], payload="{}",
            )  # fmt: skip
        for request, when in [("req-long-after", "2999-01-01T00:00:00.000Z"),
                              ("req-long-before", "2000-01-01T00:00:00.000Z")]:  # fmt: skip
            evidence._db.execute(
                "UPDATE webhook_events SET received_at = ?, last_received_at = ?"
                " WHERE request_id = ?",
                (when, when, request),
            )
    finally:
        evidence.close()
    result = write_batch_report(ledger, "nightly", provider, tmp_path / "reports")  # type: ignore[arg-type]
    ledger.close()
    assert result.webhook_orphans == 1
    notes = [str(line["Note"]) for line in table(load_workbook(result.workbook)["Orphans"])]
    assert any("req-during" in note for note in notes)
    assert not any("req-long" in note for note in notes)


def test_while_listing_runs_while_the_provider_is_listed_and_not_when_nothing_is(
    tmp_path: Path,
) -> None:
    """`collect(while_listing=...)` is the caller's work done while the listing's
    threads read pages: here the listing cannot finish until it has run."""
    import threading

    from batcher.reporting.reports import collect

    ledger, provider = build(tmp_path, [Spec(1), Spec(2, face="5.00", cost="4.90")])
    started = threading.Event()
    listed_orders = provider.orders

    def orders(since: datetime, until: datetime | None = None) -> list[ProviderOrder]:
        assert started.wait(10), "the listing ended without while_listing having run"
        return listed_orders(since, until)

    provider.orders = orders  # type: ignore[method-assign]
    calls: list[str] = []

    def meanwhile() -> None:
        calls.append("while listing")
        started.set()

    model = collect(ledger, "nightly", provider, while_listing=meanwhile)  # type: ignore[arg-type]
    assert calls == ["while listing"]
    assert model.reconciliation.provider_error is None
    started.clear()
    collect(ledger, "nightly", None, while_listing=meanwhile)  # no provider: nothing listed
    collect(ledger, "nightly", provider, fetch="quick", while_listing=meanwhile)
    assert calls == ["while listing"]
