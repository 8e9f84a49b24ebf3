"""The reconciliation report end to end: the real CLI against the real UGiftMe sandbox."""

from __future__ import annotations

import csv
import json
import stat
import time
import zipfile
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from openpyxl import load_workbook
from openpyxl.worksheet.worksheet import Worksheet

from batcher.config import provider_settings
from batcher.core.errors import ExitCode
from batcher.execute.run import BatchOptions, run_batch
from batcher.reporting.cells import FORMULA_TRIGGERS
from batcher.reporting.reconcile import IN_PROGRESS, MISMATCH, RECONCILED
from batcher.sandbox.server import SandboxHandle, running_sandbox
from tests.e2e.runkit import (
    HEADER,
    ConfirmingUI,
    batcher,
    cli_env,
    make_rows,
    orders_by_email,
    read_summary,
    sandbox_orders,
    start_batcher,
    wait_for,
    wallet_debits,
    write_sheet,
)

FAST = {"rate_limit": 100_000, "async_delay_seconds": 0.05}
FORMULA_NAMES = ['=HYPERLINK("http://evil.example","click")', "+1", "@SUM(A1:A9)", "-2+3"]


def run_args(sheet: Path, reports: Path, *extra: str) -> list[str]:
    return ["run", str(sheet), "--yes", "--report-dir", str(reports), "--chunk-size", "10", *extra]


def table(sheet: Worksheet) -> list[dict[str, Any]]:
    rows = list(sheet.iter_rows(values_only=True))
    return [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]


def block(sheet: Worksheet, first_header: str) -> list[dict[str, Any]]:
    """A Summary table: from the row whose first cell is `first_header` to a blank row."""
    cells = list(sheet.iter_rows(values_only=True))
    start = next(i for i, r in enumerate(cells) if r[0] == first_header)
    header = [h for h in cells[start] if h is not None]
    found = []
    for r in cells[start + 1 :]:
        if r[0] is None:
            break
        found.append(dict(zip(header, r[: len(header)], strict=True)))
    return found


def dec(value: Any) -> Decimal:
    return Decimal(str(value))


def report_bytes(folder: Path) -> dict[Path, bytes]:
    """Every report file's content; an .xlsx is unzipped so its XML can be searched."""
    found = {}
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        if path.suffix == ".xlsx":
            with zipfile.ZipFile(path) as z:
                found[path] = b"".join(z.read(n) for n in z.namelist())
        else:
            found[path] = path.read_bytes()
    return found


def voucher_secrets(sandbox: SandboxHandle) -> list[str]:
    secrets = []
    for order in sandbox_orders(sandbox):
        secrets += [order["merchant"]["voucherCode"], order["merchant"]["redemptionUrl"]]
    return secrets


def assert_inert(folder: Path) -> None:
    """No formula anywhere, and no text cell Excel would run, in every xlsx and csv."""
    for path in folder.rglob("*"):
        if path.suffix == ".xlsx":
            for sheet in load_workbook(path).worksheets:
                for line in sheet.iter_rows():
                    for cell in line:
                        assert cell.data_type != "f", (path.name, sheet.title, cell.coordinate)
                        if isinstance(cell.value, str):
                            assert not cell.value.startswith(FORMULA_TRIGGERS), (path, cell.value)
        elif path.suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as fh:
                for line in csv.reader(fh):
                    assert not any(v.startswith(FORMULA_TRIGGERS) for v in line), (path, line)


def test_the_workbook_reconciles_to_the_sandbox_and_stays_safe(tmp_path: Path) -> None:
    funding = {"GBP": "20000.00", "EUR": "20000.00"}
    with running_sandbox("ugiftme", funding=funding, **FAST) as sandbox:
        rows = make_rows(45, currencies=("GBP", "EUR"))
        for i, name in enumerate(FORMULA_NAMES):
            rows[i]["Name"] = name
        rows[4]["Cost centre"] = "=1+2"
        rows[11]["Product"] = "NOPE_UK"  # invalid, left out under --skip-invalid
        sheet = write_sheet(tmp_path / "nightly.csv", rows)
        reports = tmp_path / "reports"
        env = cli_env(sandbox, tmp_path / "state")
        result = batcher(run_args(sheet, reports, "--skip-invalid"), env)
        assert result.returncode == 0, result.stderr
        assert "reconciliation: RECONCILED" in result.stderr

        workbook = reports / "nightly" / "reconciliation.xlsx"
        wb = load_workbook(workbook)
        summary = wb["Summary"]
        assert summary["B2"].value == RECONCILED

        counts = {r["State"]: r["Rows"] for r in block(summary, "State")}
        assert counts == {
            "invalid": 1, "succeeded": 44, "Total": 45, "Rows in the sheet": 45, "Adds up": "yes"
        }  # fmt: skip

        per_currency = {r["Currency"]: r for r in block(summary, "Currency")}
        orders, wallet = table(wb["Orders"]), table(wb["Wallet"])
        assert len(orders) == 45 and [o["Source row"] for o in orders] == list(range(2, 47))
        assert orders[0]["Cost centre"] == "CC-0"
        for currency in ("GBP", "EUR"):
            line = per_currency[currency]
            lines = [o for o in orders if o["State"] == "succeeded" and o["Currency"] == currency]
            cost = sum((dec(o["Cost"]) for o in lines), Decimal(0))
            assert dec(line["Cost (ledger)"]) == cost
            assert dec(line["Face value"]) == sum(dec(o["Face value"]) for o in lines)
            debits = [-dec(w["Amount"]) for w in wallet if w["Currency"] == currency]
            assert dec(line["Wallet debits (provider)"]) == sum(debits) == cost
            assert cost == wallet_debits(sandbox, currency), "the sandbox's own wallet agrees"
            assert dec(line["Difference"]) == 0 and line["Verdict"] == RECONCILED
            assert dec(line["Balance before"]) - dec(line["Balance after"]) == cost
        assert {w["Status"] for w in wallet} == {"matched"}

        header = [c.value for c in wb["Orders"][1]]
        cost_col = header.index("Cost")
        formats = {
            r[header.index("Currency")].value: r[cost_col].number_format
            for r in wb["Orders"].iter_rows(min_row=2)
            if r[cost_col].value is not None
        }
        assert formats == {"GBP": '"£"#,##0.00', "EUR": '"€"#,##0.00'}
        assert all(isinstance(o["Succeeded (UTC)"], datetime) for o in orders if o["Order id"])
        assert wb["Orders"].cell(2, header.index("Created (UTC)") + 1).is_date
        assert wb["Orders"].freeze_panes == "B2" and wb["Orders"].auto_filter.ref
        assert len(summary._charts) == 2  # spend by product, one chart per currency

        names = [o["Recipient name"] for o in orders[:4]]
        assert names == ["'" + n for n in FORMULA_NAMES]
        assert orders[4]["Cost centre"] == "'=1+2"
        assert orders[0]["Voucher"].startswith("••••-")

        # Nothing secret in any report file, and nothing Excel would run.
        secrets = voucher_secrets(sandbox)
        assert len(secrets) == 88
        for path, content in report_bytes(reports).items():
            assert sandbox.api_key.encode() not in content, path
            for secret in secrets:
                assert secret.encode() not in content, path
        assert_inert(reports)

        # `batcher report --reveal-codes`: the codes go to a private file, and only there.
        again = batcher(["report", "nightly", "--report-dir", str(reports), "--reveal-codes"], env)
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip().splitlines()[-1].endswith(str(workbook))
        assert "bearer credentials" in again.stderr and "codes.xlsx" in again.stderr
        codes_path = reports / "nightly" / "codes.xlsx"
        assert stat.S_IMODE(codes_path.stat().st_mode) == 0o600
        codes = table(load_workbook(codes_path)["Codes"])
        by_order = {o["_id"]: o["merchant"]["voucherCode"] for o in sandbox_orders(sandbox)}
        assert {c["Order id"]: c["Voucher code"] for c in codes} == by_order
        for path, content in report_bytes(reports).items():
            assert sandbox.api_key.encode() not in content, path
            if path.name != "codes.xlsx":
                assert not any(s.encode() in content for s in secrets), path
        assert_inert(reports)


def _place_outside_batcher(sandbox: SandboxHandle) -> str:
    """Order one card straight from the API, as someone with the key might by hand."""
    body = {
        "productCode": "TESCO_UK",
        "merchant": "Tesco",
        "currency": "GBP",
        "valuePurchased": 42,
        "recipientEmail": "someone.else@example.com",
        "recipientName": "Not In The Sheet",
    }
    with httpx.Client(base_url=sandbox.base_url, headers={"X-API-Key": sandbox.api_key}) as c:
        for _ in range(50):
            response = c.post("/orders", json=body)
            if response.status_code == 429:
                time.sleep(float(response.headers.get("Retry-After", "0.2")))
                continue
            assert response.status_code in (201, 202), response.text
            break
    assert wait_for(lambda: orders_by_email(sandbox)["someone.else@example.com"] == 1)
    (order,) = [
        o for o in sandbox_orders(sandbox)
        if o["giftOrder"]["recipientEmail"] == "someone.else@example.com"
    ]  # fmt: skip
    return str(order["_id"])


def test_an_order_made_outside_batcher_in_the_run_window_is_an_orphan(tmp_path: Path) -> None:
    # Slow enough (6 requests a second) that the run is still going when the stranger orders.
    with running_sandbox(
        "ugiftme", rate_limit=6, rate_window_seconds=1, async_delay_seconds=0.05
    ) as sandbox:
        sheet = write_sheet(tmp_path / "window.csv", make_rows(30, currencies=("GBP", "EUR")))
        reports = tmp_path / "reports"
        env = cli_env(sandbox, tmp_path / "state")
        proc = start_batcher(run_args(sheet, reports, "--chunk-size", "2"), env)
        assert wait_for(lambda: len(sandbox_orders(sandbox)) >= 2, timeout=60)
        assert proc.poll() is None, "the run ended before the stranger could order"
        stranger = _place_outside_batcher(sandbox)
        _, stderr = proc.communicate(timeout=180)
        assert proc.returncode == 0, stderr
        assert "reconciliation: MISMATCH" in stderr

        wb = load_workbook(reports / "window" / "reconciliation.xlsx")
        assert wb["Summary"]["B2"].value == MISMATCH
        per_currency = {r["Currency"]: r for r in block(wb["Summary"], "Currency")}
        gbp = per_currency["GBP"]
        assert gbp["Verdict"] == MISMATCH and gbp["Orphans"] == 1
        assert "orphan" in gbp["Reason"] and "£42.00" in gbp["Reason"]
        assert per_currency["EUR"]["Verdict"] == RECONCILED
        (orphan,) = table(wb["Orphans"])
        assert orphan["Order id"] == stranger
        assert orphan["Recipient email"] == "someone.else@example.com"
        assert dec(orphan["Face value"]) == Decimal("42.00")
        assert dec(orphan["Wallet debit"]) == Decimal("40.32")  # Tesco: 4% discount
        assert [w["Status"] for w in table(wb["Wallet"]) if w["Order id"] == stranger] == [
            "orphan order"
        ]

        # The ledger's own orders still match the sandbox to the cent.
        batch_cost = dec(gbp["Cost (ledger)"])
        assert batch_cost + Decimal("40.32") == wallet_debits(sandbox, "GBP")

        # `batcher report` finds it too, and says so with its exit code.
        again = batcher(["report", "window", "--report-dir", str(reports)], env)
        assert again.returncode == ExitCode.SOME_FAILED, again.stderr
        assert "1 orphan order(s)" in again.stdout and "GBP: MISMATCH" in again.stdout


def test_failed_rows_csv_round_trips_into_a_new_batch(tmp_path: Path) -> None:
    with running_sandbox("ugiftme", **FAST) as sandbox:
        rows = make_rows(12)
        broken = {2: rows[2]["Product"], 6: rows[6]["Product"], 9: rows[9]["Product"]}
        for i in broken:
            rows[i]["Product"] = "NOPE_UK"
        sheet = write_sheet(tmp_path / "first.csv", rows)
        reports = tmp_path / "reports"
        env = cli_env(sandbox, tmp_path / "state")
        first = batcher(run_args(sheet, reports, "--skip-invalid"), env)
        assert first.returncode == 0, first.stderr
        assert len(sandbox_orders(sandbox)) == 9

        failed_csv = reports / "first" / "failed_rows.csv"
        with failed_csv.open(newline="", encoding="utf-8") as fh:
            failed = list(csv.DictReader(fh))
        assert list(failed[0]) == [*HEADER, "error"], "the input's own headers, in file order"
        assert [f["Reference"] for f in failed] == [rows[i]["Reference"] for i in sorted(broken)]
        assert all("fix the product code in row" in f["error"] for f in failed)
        assert failed[0]["Cost centre"] == rows[2]["Cost centre"]

        # The operator fixes two of the three in Excel and saves the file as a new sheet.
        failed[0]["Product"] = broken[2]
        failed[1]["Product"] = broken[6]
        fixed = tmp_path / "fixed.csv"
        with fixed.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(failed[0]))
            writer.writeheader()
            writer.writerows(failed)
        second = batcher(run_args(fixed, reports, "--skip-invalid", "--batch", "first-fix"), env)
        assert second.returncode == 0, second.stderr

        counts = orders_by_email(sandbox)
        assert len(sandbox_orders(sandbox)) == 11 and max(counts.values()) == 1
        assert counts[rows[2]["Email"]] == 1 and counts[rows[6]["Email"]] == 1
        assert rows[9]["Email"] not in counts
        summary = read_summary(reports, "first-fix")
        assert summary["by_state"]["succeeded"] == 2 and summary["by_state"]["invalid"] == 1
        wb = load_workbook(reports / "first-fix" / "reconciliation.xlsx")
        assert wb["Summary"]["B2"].value == RECONCILED, "the first batch's orders are not orphans"


def test_the_suggested_top_up_is_exactly_enough(tmp_path: Path) -> None:
    with running_sandbox("ugiftme", funding={"GBP": "500.00"}, **FAST) as sandbox:
        sheet = write_sheet(tmp_path / "funds.csv", make_rows(40))
        reports = tmp_path / "reports"
        env = cli_env(sandbox, tmp_path / "state")
        first = batcher(run_args(sheet, reports, "--chunk-size", "5", "--order-fundable"), env)
        assert first.returncode == ExitCode.INCOMPLETE, first.stderr
        wb = load_workbook(reports / "funds" / "reconciliation.xlsx")
        # What was ordered reconciles; rows left for funds keep the batch in progress.
        assert wb["Summary"]["B2"].value == IN_PROGRESS
        per_currency = {r["Currency"]: r for r in block(wb["Summary"], "Currency")}
        assert dec(per_currency["GBP"]["Difference"]) == 0
        steps = [s["Next step"] for s in block(wb["Summary"], "Rows")]
        (step,) = [s for s in steps if s.startswith("top up GBP wallet by £")]
        assert step.endswith(" and rerun")
        amount = Decimal(step.removeprefix("top up GBP wallet by £").split()[0].replace(",", ""))
        failures = table(wb["Failures"])
        assert failures and {f["Next step"] for f in failures} == {step}
        with (reports / "funds" / "failed_rows.csv").open(encoding="utf-8") as fh:
            assert len(fh.read().splitlines()) == 1, (
                "rows waiting for funds are not for a new sheet"
            )

        sandbox.control("POST", "/wallets/GBP/fund", json={"amount": str(amount)})
        second = batcher(run_args(sheet, reports, "--chunk-size", "5"), env)
        assert second.returncode == 0, second.stderr
        assert len(sandbox_orders(sandbox)) == 40
        balance = next(
            w for w in sandbox.control("GET", "/wallets")["wallets"] if w["currency"] == "GBP"
        )
        assert Decimal(str(balance["balance"])) == 0, "the top-up was exactly enough"
        wb = load_workbook(reports / "funds" / "reconciliation.xlsx")
        assert wb["Summary"]["B2"].value == RECONCILED
        runs = sorted((reports / "funds" / "runs").iterdir())
        assert len(runs) == 2 and all((r / "reconciliation.xlsx").exists() for r in runs)
        first_run = load_workbook(runs[0] / "reconciliation.xlsx")
        assert any(f["State"] == "pending" for f in table(first_run["Failures"]))


def test_a_failing_report_never_costs_the_run_its_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import batcher.reporting.reports

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk full")

    monkeypatch.setattr(batcher.reporting.reports, "write_batch_report", broken)
    messages: list[str] = []

    class UI(ConfirmingUI):
        def show_plan(self, plan: Any, balances: Any) -> None:
            self.listener.message = messages.append  # type: ignore[method-assign]

    with running_sandbox("ugiftme", **FAST) as sandbox:
        sheet = write_sheet(tmp_path / "safe.csv", make_rows(5))
        settings = provider_settings(
            "ugiftme", base_url=sandbox.base_url, environ={"UGIFTME_API_KEY": sandbox.api_key}
        )
        options = BatchOptions(sheet=sheet, state_dir=tmp_path / "s", report_dir=tmp_path / "r")
        result = run_batch(settings, options, UI())
    assert result.exit_code == ExitCode.OK
    assert json.loads((tmp_path / "r" / "safe" / "summary.json").read_text())["exit_code"] == 0
    assert (tmp_path / "r" / "safe" / "rows.csv").exists()
    assert any("could not be written (RuntimeError)" in m for m in messages), messages


def test_report_refuses_what_it_cannot_report(tmp_path: Path) -> None:
    from batcher.ledger.store import Ledger

    env = {"PATH": "/usr/bin:/bin", "UGIFTME_API_KEY": "not-used"}
    state = tmp_path / "state"
    nothing = batcher(["report", "nightly", "--state-dir", str(state)], env)
    assert nothing.returncode == ExitCode.USAGE and "no ledger" in nothing.stderr

    ledger = Ledger.open(state)
    ledger.ensure_batch(
        "nightly", provider="ugiftme", account_id="a", source_path="x.csv", source_sha256="0" * 64
    )
    ledger.close()
    unknown = batcher(["report", "weekly", "--state-dir", str(state)], env)
    assert unknown.returncode == ExitCode.USAGE
    assert "no batch named 'weekly'" in unknown.stderr and "nightly" in unknown.stderr
    other = batcher(["report", "nightly", "--state-dir", str(state), "--provider", "gifq"], env)
    assert other.returncode == ExitCode.USAGE and "ordered through ugiftme" in other.stderr
    assert "Traceback" not in nothing.stderr + unknown.stderr + other.stderr


def test_report_refuses_a_key_of_another_account(tmp_path: Path) -> None:
    with running_sandbox("ugiftme", **FAST) as sandbox:
        sheet = write_sheet(tmp_path / "acct.csv", make_rows(3))
        env = cli_env(sandbox, tmp_path / "state")
        assert batcher(run_args(sheet, tmp_path / "r"), env).returncode == 0
    with running_sandbox("ugiftme", **FAST) as stranger:
        result = batcher(["report", "acct", "--report-dir", str(tmp_path / "r")],
                         cli_env(stranger, tmp_path / "state"))  # fmt: skip
    assert result.returncode == ExitCode.CANNOT_START
    assert "belongs to account" in result.stderr
