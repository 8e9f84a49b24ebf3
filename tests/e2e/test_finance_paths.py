"""Finance truth on every path a nightly job takes: the real CLI against the real
sandboxes over HTTP, each workbook opened with openpyxl.

Each test asserts the verdict, that the counts add up to everything paid, and
the currency of every money cell (`assert_money_cells`).
"""

from __future__ import annotations

import json
import signal
from decimal import Decimal
from pathlib import Path
from typing import Any

from openpyxl import load_workbook
from openpyxl.workbook.workbook import Workbook

from batcher.config import provider_settings
from batcher.core.errors import ExitCode, ProviderUnavailable
from batcher.execute.run import BatchOptions, run_batch
from batcher.providers import connect
from batcher.reporting.reconcile import IN_PROGRESS, NOT_VERIFIED, RECONCILED
from batcher.reporting.xlsx_style import money_format
from batcher.sandbox.server import running_sandbox
from tests.e2e.runkit import (
    ConfirmingUI,
    batcher,
    cli_env,
    make_rows,
    read_rows_csv,
    read_summary,
    sandbox_orders,
    start_batcher,
    wait_for,
    write_sheet,
)
from tests.e2e.test_gifq_run import (
    ORDER_HEADER,
    gifq,
    gifq_env,
    order_rows,
    write_csv,
)
from tests.e2e.test_gifq_run import run_args as gifq_run_args
from tests.e2e.test_gifq_run import sandbox_orders as gifq_orders

FAST = {"rate_limit": 100_000, "async_delay_seconds": 0.05}


def run_args(sheet: Path, reports: Path, *extra: str) -> list[str]:
    return ["run", str(sheet), "--yes", "--report-dir", str(reports), *extra]


def block(sheet: Any, first: str, second: str | None = None) -> list[dict[str, Any]]:
    """A Summary table: from its header row (first cells `first`, `second`) to a blank row."""
    cells = list(sheet.iter_rows(values_only=True))
    start = next(
        i for i, r in enumerate(cells) if r[0] == first and (second is None or r[1] == second)
    )
    header = [h for h in cells[start] if h is not None]
    found = []
    for r in cells[start + 1 :]:
        if r[0] is None:
            break
        found.append(dict(zip(header, r[: len(header)], strict=True)))
    return found


def table(sheet: Any) -> list[dict[str, Any]]:
    rows = list(sheet.iter_rows(values_only=True))
    return [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]


def dec(value: Any) -> Decimal:
    return Decimal(str(value))


def assert_money_cells(wb: Workbook) -> None:
    """Every money cell is a number formatted in its own currency."""
    summary = wb["Summary"]
    cells = list(summary.iter_rows())
    start = next(
        i for i, r in enumerate(cells) if r[0].value == "Currency" and r[1].value == "Orders"
    )
    header = [c.value for c in cells[start]]
    money = ("Face value", "Cost (ledger)", "Wallet debits (provider)", "Difference", "FX fees",
             "In flight (paid)", "Unexplained")  # fmt: skip
    for line in cells[start + 1 :]:
        if line[0].value is None:
            break
        for name in money:
            cell = line[header.index(name)]
            if cell.value is not None:
                assert cell.data_type == "n" and cell.number_format == money_format(line[0].value)
    start = next(i for i, r in enumerate(cells) if r[0].value == "Product")
    header = [c.value for c in cells[start]]
    for line in cells[start + 1 :]:
        if line[0].value is None or line[1].value is None:
            break
        wallet, card = (
            line[header.index("Currency")].value,
            line[header.index("Card currency")].value,
        )
        assert line[header.index("Cost")].number_format == money_format(wallet)
        assert line[header.index("Face value")].number_format == money_format(card)
    orders = list(wb["Orders"].iter_rows())
    header = [c.value for c in orders[0]]
    for line in orders[1:]:
        currency = line[header.index("Currency")].value
        paid_in = line[header.index("Cost currency")].value or currency
        for name, expected in (
            ("Face value", currency),
            ("Cost", paid_in),
            ("Wallet debit", paid_in),
        ):
            cell = line[header.index(name)]
            if cell.value is not None:
                assert cell.number_format == money_format(expected), (name, currency, paid_in)
    wallet = list(wb["Wallet"].iter_rows())
    header = [c.value for c in wallet[0]]
    for line in wallet[1:]:
        cell = line[header.index("Amount")]
        if cell.value is not None:
            assert cell.number_format == money_format(line[header.index("Currency")].value)


def paid_counts(wb: Workbook) -> tuple[int, int]:
    """(Total paid from "Orders paid", orders summed over "Per currency" wallets)."""
    paid = {r["Orders"]: r["Count"] for r in block(wb["Summary"], "Orders", "Count")}
    assert paid["Adds up to Per currency"] == "yes"
    per_wallet = block(wb["Summary"], "Currency", "Orders")
    return paid["Total paid"], sum(r["Paid from this wallet"] for r in per_wallet)


# ---------------------------------------------------------------------------


def test_an_interrupted_async_run_is_in_progress_and_its_rerun_reconciles(tmp_path: Path) -> None:
    with running_sandbox(
        "ugiftme", funding={"GBP": "20000.00"}, rate_limit=100_000, async_delay_seconds=2.0
    ) as sandbox:
        sheet = write_sheet(tmp_path / "nightly.csv", make_rows(20))
        reports = tmp_path / "reports"
        env = cli_env(sandbox, tmp_path / "state")
        first = batcher(run_args(sheet, reports, "--chunk-size", "10", "--deadline", "0.5"), env)
        assert first.returncode == ExitCode.INCOMPLETE, first.stderr
        assert "20 row(s) in flight" in first.stderr and "rerun" in first.stderr
        assert read_summary(reports, "nightly")["reconciliation"]["verdict"] == IN_PROGRESS

        # The provider creates and charges the orders after the run stopped listening.
        assert wait_for(lambda: len(sandbox_orders(sandbox)) == 20, timeout=30)
        report = batcher(["report", "nightly", "--report-dir", str(reports)], env)
        assert report.returncode == 0, report.stdout + report.stderr
        wb = load_workbook(reports / "nightly" / "reconciliation.xlsx")
        assert wb["Summary"]["B2"].value == IN_PROGRESS
        assert not table(wb["Orphans"]), "batcher's own orders in flight are never orphans"
        (gbp,) = block(wb["Summary"], "Currency", "Orders")
        wallet = table(wb["Wallet"])
        charged = sum(-dec(w["Amount"]) for w in wallet if w["Status"] == "in flight")
        assert len([w for w in wallet if w["Status"] == "in flight"]) == 20
        assert dec(gbp["In flight (paid)"]) == charged > 0
        assert gbp["Verdict"] == IN_PROGRESS and gbp["Orphans"] == 0
        assert dec(gbp["Difference"]) == 0
        outstanding = table(wb["Outstanding"])
        assert len(outstanding) == 20 and not table(wb["Failures"])
        assert "retry" not in wb["Summary"]["C2"].value
        assert_money_cells(wb)

        second = batcher(run_args(sheet, reports, "--chunk-size", "10"), env)
        assert second.returncode == 0, second.stderr
        assert len(sandbox_orders(sandbox)) == 20
        wb = load_workbook(reports / "nightly" / "reconciliation.xlsx")
        assert wb["Summary"]["B2"].value == RECONCILED
        (gbp,) = block(wb["Summary"], "Currency", "Orders")
        assert gbp["Verdict"] == RECONCILED and dec(gbp["Cost (ledger)"]) == charged
        assert paid_counts(wb) == (20, 20)
        summary = read_summary(reports, "nightly")
        assert summary["reconciliation"]["verdict"] == RECONCILED
        assert summary["reconciliation"]["currencies"]["GBP"]["verdict"] == RECONCILED
        assert_money_cells(wb)


def test_a_reused_batch_name_counts_every_paid_order(tmp_path: Path) -> None:
    with running_sandbox("ugiftme", funding={"GBP": "20000.00", "EUR": "20000.00"}, **FAST) as sb:
        reports = tmp_path / "reports"
        env = cli_env(sb, tmp_path / "state")
        sheet = tmp_path / "nightly.csv"
        for night in ("N1", "N2"):  # cron feeds a new nightly.csv each night
            write_sheet(sheet, make_rows(30, currencies=("GBP", "EUR"), prefix=night))
            result = batcher(run_args(sheet, reports), env)
            assert result.returncode == 0, result.stderr
        assert len(sandbox_orders(sb)) == 60

        assert (
            "paid orders 60: 30 in this sheet, 30 from earlier sheets"
            in result.stdout + result.stderr
        )
        status = batcher(["status", "nightly", "--json"], env)
        assert json.loads(status.stdout)["paid_orders"]["total"] == 60
        summary = read_summary(reports, "nightly")
        assert summary["paid_orders"] == {"in_sheet": 30, "earlier_sheets": 30, "total": 60}
        totals = summary["totals_by_currency"]
        assert sum(t["orders"] for t in totals.values()) == 60
        assert summary["reconciliation"]["verdict"] == RECONCILED
        wb = load_workbook(reports / "nightly" / "reconciliation.xlsx")
        assert wb["Summary"]["B2"].value == RECONCILED
        assert paid_counts(wb) == (60, 60)
        orders = table(wb["Orders"])
        earlier = [o for o in orders if "not in today's sheet" in (o["Check"] or "")]
        assert len(orders) == 60 and len(earlier) == 30
        assert all(o["Check"].startswith("ordered on 20") for o in earlier)
        assert_money_cells(wb)


def test_cross_currency_funds_are_checked_in_the_paying_wallet(tmp_path: Path) -> None:
    with running_sandbox("gifq", funding={"GBP": "800.00"}, async_delay_seconds=0.05) as sb:
        env = gifq_env(sb, tmp_path / "state")
        reports = tmp_path / "r"
        # No cross-currency order yet: the USD→GBP rate is unknown, and both commands say so.
        seed = write_csv(tmp_path / "seed.csv", order_rows(
            1, currencies=("USD",), pay_every=1, paying="GBP", prefix="SEED"), ORDER_HEADER)  # fmt: skip
        check = batcher(["validate", str(seed), "--report-dir", str(reports), *gifq(sb)], env)
        assert check.returncode == 0 and "OK" not in check.stdout
        assert "funds not verified" in check.stdout
        run = batcher(gifq_run_args(sb, seed, reports), env)
        assert run.returncode == 0 and "funds not verified" in run.stderr

        # Now GIFQ has reported a rate. 16 USD cards of ~$68 cost ~£850 in GBP: short.
        rows = order_rows(16, currencies=("USD",), pay_every=1, paying="GBP",
                          start=Decimal("68.00"))  # fmt: skip
        sheet = write_csv(tmp_path / "cross.csv", rows, ORDER_HEADER)
        check = batcher(["validate", str(sheet), "--report-dir", str(reports), *gifq(sb)], env)
        assert check.returncode == ExitCode.USAGE, check.stdout
        (short,) = [line for line in check.stdout.splitlines() if "wallet is short" in line]
        assert "GBP wallet is short" in short and "USD cards at the last reported rate" in short
        before = len(gifq_orders(sb))
        run = batcher(gifq_run_args(sb, sheet, reports), env)
        assert run.returncode == ExitCode.USAGE, run.stderr
        words = short.split("insufficient_funds: ", 1)[1].split(" (top up")[0]
        assert words in run.stderr, "run refuses in validate's words"
        assert len(gifq_orders(sb)) == before, "nothing was sent"

        # Fewer rows fit: validate says OK exactly when the run goes through.
        fits = write_csv(tmp_path / "fits.csv", rows[:10], ORDER_HEADER)
        check = batcher(["validate", str(fits), "--report-dir", str(reports), *gifq(sb)], env)
        assert check.returncode == 0 and "GBP  cost £" in check.stdout, check.stdout
        run = batcher(gifq_run_args(sb, fits, reports), env)
        assert run.returncode == 0, run.stderr
        wb = load_workbook(reports / "fits" / "reconciliation.xlsx")
        assert wb["Summary"]["B2"].value == RECONCILED
        per = {r["Currency"]: r for r in block(wb["Summary"], "Currency", "Orders")}
        assert per["GBP"]["Paid from this wallet"] == 10 and per["USD"]["Orders"] == 10
        wallet = table(wb["Wallet"])
        fx = sum(-dec(w["Amount"]) for w in wallet if w["Type"] == "fx_fee")
        assert fx > 0 and dec(per["GBP"]["FX fees"]) == fx
        spend = block(wb["Summary"], "Product", "Currency")
        assert all(s["Currency"] == "GBP" and s["Card currency"] == "USD" for s in spend)
        assert paid_counts(wb) == (10, 10)
        assert_money_cells(wb)


def test_validate_and_run_agree_on_funds_whatever_the_chunk_size(tmp_path: Path) -> None:
    rows = make_rows(10)  # about £350 against a £100 wallet
    ordered: list[set[str]] = []
    for chunk in ("2", "10"):
        with running_sandbox("ugiftme", funding={"GBP": "100.00"}, **FAST) as sb:
            folder = tmp_path / chunk
            folder.mkdir()
            sheet = write_sheet(folder / "ten.csv", rows)
            reports = folder / "reports"
            env = cli_env(sb, folder / "state")
            check = batcher(["validate", str(sheet), "--report-dir", str(reports)], env)
            assert check.returncode == ExitCode.USAGE and "Not ready" in check.stdout
            (short,) = [line for line in check.stdout.splitlines() if "wallet is short" in line]
            words = short.split("insufficient_funds: ", 1)[1].split(" (top up")[0]
            run = batcher(run_args(sheet, reports, "--chunk-size", chunk), env)
            assert run.returncode == ExitCode.USAGE, run.stderr
            assert words in run.stderr and not sandbox_orders(sb)

            part = batcher(run_args(sheet, reports, "--chunk-size", chunk, "--order-fundable"), env)
            assert part.returncode == ExitCode.INCOMPLETE, part.stderr
            assert "left out" in part.stderr and "insufficient funds" in part.stderr
            lines = read_rows_csv(reports, "ten")
            done = {r["reference"] for r in lines if r["state"] == "succeeded"}
            held = [r for r in lines if r["state"] == "pending"]
            assert done and held and len(sandbox_orders(sb)) == len(done)
            assert all(r["error_code"] == "insufficient_funds" for r in held)
            wb = load_workbook(reports / "ten" / "reconciliation.xlsx")
            assert wb["Summary"]["B2"].value == IN_PROGRESS
            (gbp,) = block(wb["Summary"], "Currency", "Orders")
            assert dec(gbp["Difference"]) == 0 and dec(gbp["Unexplained"]) == 0
            assert paid_counts(wb) == (len(done), len(done))
            assert_money_cells(wb)
            ordered.append(done)
    assert ordered[0] == ordered[1], "the chunk size does not change what is ordered"


def test_skipped_rows_say_where_and_failures_point_to_failed_rows(tmp_path: Path) -> None:
    with running_sandbox("ugiftme", funding={"GBP": "20000.00"}, **FAST) as sb:
        reports = tmp_path / "reports"
        env = cli_env(sb, tmp_path / "state")
        rows = make_rows(6)
        first = write_sheet(tmp_path / "monday.csv", rows)
        assert batcher(run_args(first, reports), env).returncode == 0
        # Tuesday's sheet repeats Monday's references and adds two rows the provider refuses.
        extra = make_rows(2, prefix="BAD")
        later = write_sheet(tmp_path / "tuesday.csv", [*rows, *extra])
        sb.control("PATCH", "/faults", json={"reject_item": 1.0})
        result = batcher(run_args(later, reports), env)
        assert result.returncode == ExitCode.SOME_FAILED, result.stderr
        failed_csv = reports / "tuesday" / "failed_rows.csv"
        assert "2 row(s) failed" in result.stderr and str(failed_csv) in result.stderr

        lines = read_rows_csv(reports, "tuesday")
        skipped = [r for r in lines if r["state"] == "skipped"]
        assert len(skipped) == 6
        for line in skipped:
            assert line["error_message"].startswith("already ordered in batch monday as order ")
            assert " on 20" in line["error_message"]
        wb = load_workbook(reports / "tuesday" / "reconciliation.xlsx")
        orders = {o["Reference"]: o for o in table(wb["Orders"])}
        assert "already ordered in batch monday" in orders[rows[0]["Reference"]]["Last error"]
        assert {f["Reference"] for f in table(wb["Failures"])} == {r["Reference"] for r in extra}
        summary = json.loads((reports / "tuesday" / "summary.json").read_text())
        assert summary["by_state"]["skipped"] == 6 and summary["by_state"]["failed"] == 2
        assert summary["reconciliation"]["verdict"] == RECONCILED
        assert_money_cells(wb)


def test_a_provider_that_cannot_be_read_is_not_verified_never_a_mismatch(tmp_path: Path) -> None:
    """The provider stops answering listings at the end of the run (orders went through)."""

    class ListingsFail:
        def __init__(self, real: Any) -> None:
            self._real = real
            self._sent = False

        def __getattr__(self, name: str) -> Any:
            return getattr(self._real, name)

        def submit(self, *args: Any, **kwargs: Any) -> Any:
            self._sent = True
            return self._real.submit(*args, **kwargs)

        def orders(self, since: Any, until: Any = None) -> Any:
            # Recovery's look before planning still succeeds; the end-of-run listing fails.
            if not self._sent:
                return self._real.orders(since, until)
            raise ProviderUnavailable("connection refused while listing orders")

    with running_sandbox("ugiftme", funding={"GBP": "20000.00"}, **FAST) as sb:
        sheet = write_sheet(tmp_path / "nightly.csv", make_rows(8))
        settings = provider_settings(
            "ugiftme", base_url=sb.base_url, environ={"UGIFTME_API_KEY": sb.api_key}
        )
        reports = tmp_path / "reports"
        options = BatchOptions(sheet=sheet, state_dir=tmp_path / "state", report_dir=reports)
        result = run_batch(
            settings,
            options,
            ConfirmingUI(),
            connect_provider=lambda *a, **k: ListingsFail(connect(*a, **k)),
        )
        assert result.exit_code == ExitCode.OK
        assert result.summary["reconciliation"]["verdict"] == NOT_VERIFIED
        wb = load_workbook(reports / "nightly" / "reconciliation.xlsx")
        assert wb["Summary"]["B2"].value == NOT_VERIFIED
        assert "retry `batcher report" in wb["Summary"]["C2"].value
        (gbp,) = block(wb["Summary"], "Currency", "Orders")
        assert gbp["Verdict"] == NOT_VERIFIED
        assert_money_cells(wb)

        # Once the provider answers, `batcher report` verifies everything.
        env = cli_env(sb, tmp_path / "state")
        report = batcher(["report", "nightly", "--report-dir", str(reports)], env)
        assert report.returncode == 0, report.stdout + report.stderr
        wb = load_workbook(reports / "nightly" / "reconciliation.xlsx")
        assert wb["Summary"]["B2"].value == RECONCILED
        assert paid_counts(wb) == (8, 8)
        assert_money_cells(wb)


def test_a_sigterm_mid_run_is_in_progress_and_its_rerun_reconciles(tmp_path: Path) -> None:
    with running_sandbox(
        "ugiftme", funding={"EUR": "20000.00"}, rate_limit=100_000, async_delay_seconds=3.0
    ) as sandbox:
        sheet = write_sheet(tmp_path / "nightly.csv", make_rows(12, currencies=("EUR",)))
        reports = tmp_path / "reports"
        env = cli_env(sandbox, tmp_path / "state")
        proc = start_batcher(run_args(sheet, reports, "--chunk-size", "4"), env)
        requests = lambda: len(sandbox.control("GET", "/order-requests")["orderRequests"])  # noqa: E731
        assert wait_for(lambda: requests() == 3, timeout=30), "the three chunks were accepted"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == ExitCode.INCOMPLETE, stderr
        assert "interrupted" in stderr and "12 row(s) in flight" in stderr
        wb = load_workbook(reports / "nightly" / "reconciliation.xlsx")
        assert wb["Summary"]["B2"].value == IN_PROGRESS
        assert not table(wb["Orphans"])
        assert_money_cells(wb)

        second = batcher(run_args(sheet, reports, "--chunk-size", "4"), env)
        assert second.returncode == 0, second.stderr
        assert len(sandbox_orders(sandbox)) == 12
        wb = load_workbook(reports / "nightly" / "reconciliation.xlsx")
        assert wb["Summary"]["B2"].value == RECONCILED
        assert paid_counts(wb) == (12, 12)
        assert_money_cells(wb)
