"""`batcher ... --provider gifq` end to end: the real CLI against the real GIFQ sandbox.

The run acceptance suite (happy path, chaos with SIGKILL, lost ledger, funds,
throttle, rerun semantics) in orders mode and in payouts mode, plus
cross-currency orders reconciling to the cent and a 422's request_id reaching
rows.csv. Every order's face value is unique in its sheet, so sandbox orders
(which carry no recipient) map back to exactly one row; payouts map by email.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import sqlite3
import time
from collections import Counter
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest
from openpyxl import load_workbook

from batcher.config import provider_settings
from batcher.core.errors import ExitCode
from batcher.execute.run import BatchOptions, run_batch
from batcher.providers.base import ProviderOptions
from batcher.sandbox.server import SandboxHandle, running_sandbox
from batcher.transport.throttle import forget_limiters
from tests.e2e.runkit import (
    ConfirmingUI,
    batcher,
    read_rows_csv,
    read_summary,
    start_batcher,
    wait_for,
)

FAST = {"async_delay_seconds": 0.05}
ACTIVE_CAMPAIGN = "101"
PAUSED_CAMPAIGN = "103"

# Brands with a single catalog option (one currency), open ranges that admit 25.00-125.00.
ORDER_PRODUCTS = {
    "GBP": [("tesco", "GB"), ("john-lewis", "GB"), ("argos", "GB")],
    "EUR": [("zalando", "DE"), ("decathlon", "FR")],
    "USD": [("best-buy", "US")],
}
OPTION_IDS = {"tesco": 1070, "john-lewis": 1036, "argos": 1014, "zalando": 1073}
ORDER_HEADER = ["Reference", "Email", "Name", "Product", "Amount", "Currency", "Country",
                "Payment currency", "Cost centre"]  # fmt: skip
PAYOUT_HEADER = ["Reference", "Email", "Name", "Amount", "Currency", "Cost centre"]


# ---------------------------------------------------------------------------
# Sheets


def order_rows(
    n: int,
    *,
    currencies: tuple[str, ...] = ("GBP",),
    pay_every: int = 0,
    paying: str = "USD",
    seed: int = 7,
    prefix: str = "GQ",
    start: Decimal = Decimal("25.00"),
) -> list[dict[str, str]]:
    """Rows with unique face values (start + i cents); every `pay_every`th row paid in `paying`."""
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        currency = currencies[i % len(currencies)]
        brand, country = rnd.choice(ORDER_PRODUCTS[currency])
        cross = bool(pay_every) and i % pay_every == 0 and currency != paying
        rows.append(
            {
                "Reference": f"{prefix}-{i:05d}",
                "Email": f"{prefix.lower()}{i}@example.com",
                "Name": f"Person {i}",
                "Product": brand,
                "Amount": str(start + Decimal(i) / 100),
                "Currency": currency,
                "Country": country,
                "Payment currency": paying if cross else "",
                "Cost centre": f"CC-{i % 7}",
            }
        )
    return rows


def payout_rows(
    n: int, *, currency: str = "GBP", prefix: str = "PO", start: Decimal = Decimal("10.00")
) -> list[dict[str, str]]:
    return [
        {
            "Reference": f"{prefix}-{i:05d}",
            "Email": f"{prefix.lower()}{i}@example.com",
            "Name": f"Recipient {i}",
            "Amount": str(start + Decimal(i % 500) / 100),
            "Currency": currency,
            "Cost centre": f"CC-{i % 5}",
        }
        for i in range(n)
    ]


def write_csv(path: Path, rows: list[dict[str, str]], header: list[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return path


# ---------------------------------------------------------------------------
# The CLI


def gifq_env(sandbox: SandboxHandle, state_dir: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("UGIFTME_", "GIFQ_", "BATCHER_"))
    }
    env.update(GIFQ_API_TOKEN=sandbox.api_key, BATCHER_STATE_DIR=str(state_dir))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def gifq(sandbox: SandboxHandle) -> list[str]:
    return ["--provider", "gifq", "--base-url", sandbox.base_url]


def run_args(sandbox: SandboxHandle, sheet: Path, reports: Path, *extra: str) -> list[str]:
    return ["run", str(sheet), "--yes", "--report-dir", str(reports), *gifq(sandbox), *extra]


def payout_args(
    sandbox: SandboxHandle,
    sheet: Path,
    reports: Path,
    *extra: str,
    campaign: str = ACTIVE_CAMPAIGN,
) -> list[str]:
    mode = ["--payouts", "--campaign", campaign, "--expires-in-days", "7"]
    return run_args(sandbox, sheet, reports, *mode, *extra)


# ---------------------------------------------------------------------------
# What the sandbox holds


def sandbox_orders(sandbox: SandboxHandle) -> list[dict[str, Any]]:
    return sandbox.control("GET", "/orders")["orders"]


def completed_by_face(sandbox: SandboxHandle) -> Counter[tuple[str, str]]:
    """How many completed orders each (currency, face value) has: each row's is unique."""
    return Counter(
        (o["currency"], o["face_value"])
        for o in sandbox_orders(sandbox)
        if o["status"] == "completed"
    )


def row_faces(rows: list[dict[str, str]]) -> set[tuple[str, str]]:
    return {(r["Currency"], str(Decimal(r["Amount"]).quantize(Decimal("0.01")))) for r in rows}


def assert_each_row_ordered_once(sandbox: SandboxHandle, rows: list[dict[str, str]]) -> None:
    counts = completed_by_face(sandbox)
    doubled = {face: n for face, n in counts.items() if n > 1}
    assert not doubled, f"rows ordered twice: {doubled}"
    assert set(counts) == row_faces(rows)


def sandbox_payouts(sandbox: SandboxHandle) -> list[dict[str, Any]]:
    return sandbox.control("GET", "/payouts")["payouts"]


def live_payouts_by_email(sandbox: SandboxHandle) -> Counter[str]:
    return Counter(p["email"] for p in sandbox_payouts(sandbox) if p["status"] != "failed")


def assert_each_recipient_paid_once(sandbox: SandboxHandle, rows: list[dict[str, str]]) -> None:
    counts = live_payouts_by_email(sandbox)
    doubled = {email: n for email, n in counts.items() if n > 1}
    assert not doubled, f"recipients paid twice: {doubled}"
    assert set(counts) == {r["Email"] for r in rows}


def wallet_debits(sandbox: SandboxHandle, currency: str) -> Decimal:
    """Net debits (orders, FX fees, payouts, less refunds) from the public API, paced."""
    total = Decimal(0)
    headers = {"X-Api-Token": sandbox.api_key}
    with httpx.Client(base_url=sandbox.base_url, headers=headers, trust_env=False) as client:
        page = 1
        while True:
            time.sleep(0.12)  # stay under the sandbox's 10 requests a second
            response = client.get("/transactions", params={"page": page, "limit": 20})
            if response.status_code == 429:
                # The run that just ended may have spent this second's budget: a polite
                # client waits as told (this checks the money, not batcher's pacing).
                time.sleep(float(response.headers.get("Retry-After", "1")))
                continue
            response.raise_for_status()
            for tx in json.loads(response.text, parse_float=Decimal):
                if tx["currency"] == currency and tx["type"] != "top_up":
                    total -= Decimal(tx["amount"])
            if page >= int(response.headers["total-pages"]):
                return total
            page += 1


def stats(sandbox: SandboxHandle) -> dict[str, Any]:
    return sandbox.control("GET", "/stats")


def assert_pages_within_twenty(sandbox: SandboxHandle) -> None:
    limits = [
        int(value)
        for entry in stats(sandbox)["log"]
        for key, _, value in (part.partition("=") for part in entry["query"].split("&"))
        if key == "limit"
    ]
    assert limits, "no paged list was read"
    assert max(limits) <= 20


def assert_no_token_leaks(token: str, *places: Path, texts: tuple[str, ...] = ()) -> None:
    for text in texts:
        assert token not in text
    for place in places:
        for path in [place] if place.is_file() else place.rglob("*"):
            if path.is_file():
                assert token.encode() not in path.read_bytes(), f"the token leaked into {path}"


def rows_by_reference(reports: Path, batch: str) -> dict[str, dict[str, str]]:
    return {r["reference"]: r for r in read_rows_csv(reports, batch)}


@pytest.fixture(autouse=True)
def _fresh_limiters() -> Any:
    forget_limiters()  # in-process runs share limiters per token
    yield
    forget_limiters()


# ---------------------------------------------------------------------------
# Orders mode


def test_orders_happy_path_commands_cross_currency_rerun_and_conflict(tmp_path: Path) -> None:
    with running_sandbox("gifq", **FAST) as sandbox:
        rows = order_rows(30, currencies=("GBP", "EUR"), pay_every=4)
        sheet = write_csv(tmp_path / "rewards.csv", rows, ORDER_HEADER)
        state, reports = tmp_path / "state", tmp_path / "reports"
        env = gifq_env(sandbox, state)
        outputs = []
        for command in (["auth"], ["wallet"], ["catalog", "--currency", "EUR"],
                        ["validate", str(sheet), "--report-dir", str(reports)]):  # fmt: skip
            result = batcher([*command, *gifq(sandbox)], env)
            assert result.returncode == 0, (command, result.stderr)
            outputs += [result.stdout, result.stderr]
        assert "zalando" in outputs[4]

        result = batcher(run_args(sandbox, sheet, reports), env)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        outputs += [result.stdout, result.stderr]
        assert_each_row_ordered_once(sandbox, rows)

        summary = read_summary(reports, "rewards")
        assert summary["by_state"]["succeeded"] == 30 and summary["provider"] == "gifq"
        totals = summary["totals_by_currency"]
        for currency in ("GBP", "EUR", "USD"):  # USD paid for the cross-currency rows
            assert Decimal(totals[currency]["cost"]) == wallet_debits(sandbox, currency), currency

        charged = {o["id"]: o for o in sandbox_orders(sandbox)}
        by_ref = rows_by_reference(reports, "rewards")
        for row in rows:
            line = by_ref[row["Reference"]]
            order = charged[line["order_id"]]
            assert line["idempotency_key"] == order["reference"]
            assert (Decimal(line["cost"]), line["cost_currency"]) == (
                Decimal(order["charged"]),
                order["chargedCurrency"],
            )
            assert line["cost_currency"] == (row["Payment currency"] or row["Currency"])
            assert line["Cost centre"] == row["Cost centre"]

        status = batcher(["status", "rewards", "--json"], env)
        assert status.returncode == 0 and json.loads(status.stdout)["by_state"]["succeeded"] == 30

        again = batcher(run_args(sandbox, sheet, reports), env)
        assert again.returncode == 0, again.stderr
        assert read_summary(reports, "rewards")["requests"]["submits"] == 0
        assert len(sandbox_orders(sandbox)) == 30

        # A succeeded row changed in the sheet is a conflict, never ordered again.
        rows[3]["Amount"] = "99.99"
        write_csv(sheet, rows, ORDER_HEADER)
        changed = batcher(run_args(sandbox, sheet, reports), env)
        assert changed.returncode == 0, changed.stderr
        assert len(sandbox_orders(sandbox)) == 30
        assert read_summary(reports, "rewards")["conflicts"] == 1
        conflicted = [r for r in read_rows_csv(reports, "rewards") if r["conflict"]]
        assert [r["reference"] for r in conflicted] == [rows[3]["Reference"]]
        assert_pages_within_twenty(sandbox)
        assert_no_token_leaks(sandbox.api_key, reports, state, texts=tuple(outputs))


def test_orders_chaos_sigkill_cycles_end_exactly_once(tmp_path: Path) -> None:
    seed = int(os.environ.get("BATCHER_CHAOS_SEED", random.randrange(1, 2**31)))
    print(f"\nGIFQ orders chaos seed: {seed}  (replay with BATCHER_CHAOS_SEED={seed})")
    rnd = random.Random(seed)
    faults = {"fault_500": 0.05, "fault_429": 0.03, "fault_latency": 0.05, "latency_ms": 150,
              "fault_drop": 0.05, "fault_reject_item": 0.05, "fault_async_fail": 0.05,
              "burst_seconds": 0.5}  # fmt: skip
    with running_sandbox("gifq", seed=seed, **FAST, **faults) as sandbox:
        rows = order_rows(45, currencies=("GBP", "EUR"), pay_every=9, seed=seed)
        invalid = [dict(rows[i], Reference=f"BAD-{i}", Product="no-such-brand") for i in range(3)]
        sheet = write_csv(tmp_path / "chaos.csv", rows + invalid, ORDER_HEADER)
        state, reports = tmp_path / "state", tmp_path / "reports"
        env = gifq_env(sandbox, state)
        args = run_args(sandbox, sheet, reports, "--skip-invalid")
        kills = sigkill_cycles(args, env, rnd, cycles=10)
        assert kills >= 5, f"seed {seed}: only {kills} runs were killed mid-way"
        converge(args, env, seed)

        completed = [o for o in sandbox_orders(sandbox) if o["status"] == "completed"]
        assert_each_row_ordered_once(sandbox, rows)
        ledger = ledger_rows(state, "chaos")
        assert {r["order_id"] for r in ledger if r["order_id"]} == {o["id"] for o in completed}
        assert Counter(r["state"] for r in ledger) == {"succeeded": 45, "invalid": 3}, seed


def sigkill_cycles(args: list[str], env: dict[str, str], rnd: random.Random, cycles: int) -> int:
    kills = 0
    for _ in range(cycles):
        proc = start_batcher(args, env)
        time.sleep(rnd.uniform(0.6, 1.8))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate()
    return kills


def converge(args: list[str], env: dict[str, str], seed: int, tries: int = 15) -> None:
    codes = []
    for _ in range(tries):
        result = batcher(args, env)
        codes.append(result.returncode)
        assert "Traceback" not in result.stderr, result.stderr
        if result.returncode == 0:
            return
    raise AssertionError(f"seed {seed}: never converged, exit codes {codes}")


def ledger_rows(state: Path, batch: str) -> list[sqlite3.Row]:
    db = sqlite3.connect(state / "ledger.sqlite")
    db.row_factory = sqlite3.Row
    try:
        return db.execute(
            "SELECT state, order_id, provider_status FROM rows WHERE batch = ? AND in_sheet = 1",
            (batch,),
        ).fetchall()
    finally:
        db.close()


def test_orders_lost_ledger_creates_no_duplicates(tmp_path: Path) -> None:
    with running_sandbox("gifq", **FAST) as sandbox:
        rows = order_rows(30)
        sheet = write_csv(tmp_path / "lost.csv", rows, ORDER_HEADER)
        state, reports = tmp_path / "state", tmp_path / "reports"
        env = gifq_env(sandbox, state)
        # Capped at 2 requests/s, the 30 orders take 15 s or more: the kill after 8 of them
        # lands mid-run even when a loaded machine is slow to notice them.
        proc = start_batcher(run_args(sandbox, sheet, reports, "--max-rate", "2"), env)
        assert wait_for(lambda: len(sandbox_orders(sandbox)) >= 8, timeout=60)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert 0 < len(sandbox_orders(sandbox)) < 30

        shutil.rmtree(state)
        result = batcher(run_args(sandbox, sheet, reports), env)
        assert result.returncode == 0, result.stderr
        assert len(sandbox_orders(sandbox)) == 30
        assert_each_row_ordered_once(sandbox, rows)


def test_orders_funds_run_out_then_top_up(tmp_path: Path) -> None:
    with running_sandbox("gifq", funding={"GBP": "200.00"}, **FAST) as sandbox:
        rows = order_rows(14)  # about £360 of orders
        sheet = write_csv(tmp_path / "funds.csv", rows, ORDER_HEADER)
        reports = tmp_path / "reports"
        env = gifq_env(sandbox, tmp_path / "state")
        first = batcher(run_args(sandbox, sheet, reports, "--order-fundable"), env)
        assert first.returncode == 3, first.stderr
        assert "insufficient funds" in first.stderr.lower()
        lines = read_rows_csv(reports, "funds")
        waiting = [r for r in lines if r["state"] == "pending"]
        assert waiting and all(r["error_code"] == "insufficient_funds" for r in waiting)
        assert "needed" in waiting[0]["error_message"]  # GIFQ's shortfall, read from its 422
        ordered = sum(1 for r in lines if r["state"] == "succeeded")
        assert len(sandbox_orders(sandbox)) == ordered

        sandbox.control("POST", "/balances/GBP/fund", json={"amount": "5000.00"})
        second = batcher(run_args(sandbox, sheet, reports), env)
        assert second.returncode == 0, second.stderr
        assert_each_row_ordered_once(sandbox, rows)
        summary = read_summary(reports, "funds")
        assert Decimal(summary["totals_by_currency"]["GBP"]["cost"]) == wallet_debits(
            sandbox, "GBP"
        )


@pytest.mark.slow
def test_throttle_1000_orders_zero_429s(tmp_path: Path) -> None:
    with running_sandbox("gifq", **FAST, funding={"GBP": "50000.00", "EUR": "50000.00"}) as sandbox:
        rows = order_rows(1000, currencies=("GBP", "EUR"))
        sheet = write_csv(tmp_path / "pace.csv", rows, ORDER_HEADER)
        reports = tmp_path / "reports"
        result = batcher(
            run_args(sandbox, sheet, reports), gifq_env(sandbox, tmp_path / "s"), timeout=400
        )
        assert result.returncode == 0, result.stderr
        assert stats(sandbox)["tooManyRequestsTotal"] == 0
        requests = read_summary(reports, "pace")["requests"]
        assert requests["submits"] == 1000 and requests["http_429s"] == 0
        assert requests["achieved_request_rate"] is not None
        assert requests["submit_rate_per_second"] is not None
        # Polls ride on the order list: far fewer requests than one per order.
        assert requests["http_requests"] < 1000 + 250
        assert_each_row_ordered_once(sandbox, rows)
        assert_pages_within_twenty(sandbox)


def test_retry_after_is_honoured_under_429_bursts(tmp_path: Path) -> None:
    with running_sandbox("gifq", fault_429=0.12, burst_seconds=0.5, seed=11, **FAST) as sandbox:
        rows = order_rows(10)
        sheet = write_csv(tmp_path / "bursts.csv", rows, ORDER_HEADER)
        result = batcher(
            run_args(sandbox, sheet, tmp_path / "r"), gifq_env(sandbox, tmp_path / "s")
        )
        assert result.returncode == 0, result.stderr
        log = stats(sandbox)["log"]
        assert any(e["status"] == 429 for e in log), "the fault never fired"
        too_soon = [
            (before, after)
            for before, after in pairwise(log)
            if before["status"] == 429
            and float(after["t"]) - float(before["t"]) + 0.01 < float(before["retryAfter"])
        ]
        assert not too_soon, too_soon[:3]
        assert_each_row_ordered_once(sandbox, rows)


def test_deadline_leaves_orders_accepted_and_a_rerun_only_polls(tmp_path: Path) -> None:
    with running_sandbox("gifq", async_delay_seconds=3.0) as sandbox:
        rows = order_rows(6)
        sheet = write_csv(tmp_path / "slow.csv", rows, ORDER_HEADER)
        reports = tmp_path / "r"
        env = gifq_env(sandbox, tmp_path / "state")
        first = batcher(run_args(sandbox, sheet, reports, "--deadline", "1.5"), env)
        assert first.returncode == 3, first.stderr
        assert {r["state"] for r in read_rows_csv(reports, "slow")} == {"accepted"}

        second = batcher(run_args(sandbox, sheet, reports), env)
        assert second.returncode == 0, second.stderr
        requests = read_summary(reports, "slow")["requests"]
        assert requests["submits"] == 0 and requests["polls"] >= 6
        assert len(sandbox_orders(sandbox)) == 6
        assert_each_row_ordered_once(sandbox, rows)

        # `batcher report` reconciles with GIFQ and, on request, fetches the live codes.
        args = ["report", "slow", "--report-dir", str(reports), "--reveal-codes", *gifq(sandbox)]
        report = batcher(args, env)
        assert report.returncode == 0, report.stdout + report.stderr
        codes = {o["redemption"]["code"] for o in sandbox_orders(sandbox)}
        workbook = load_workbook(reports / "slow" / "codes.xlsx", read_only=True)
        cells = {
            str(c) for ws in workbook.worksheets for r in ws.iter_rows(values_only=True) for c in r
        }
        workbook.close()
        assert all(any(code in cell for cell in cells) for code in codes)
        assert_no_token_leaks(sandbox.api_key, reports, texts=(report.stdout, report.stderr))


def test_orders_retryable_failure_is_retried_with_a_new_reference(tmp_path: Path) -> None:
    with running_sandbox("gifq", fault_async_fail=1.0, seed=1, **FAST) as sandbox:
        rows = order_rows(8)
        sheet = write_csv(tmp_path / "retry.csv", rows, ORDER_HEADER)
        reports = tmp_path / "r"
        env = gifq_env(sandbox, tmp_path / "state")
        first = batcher(run_args(sandbox, sheet, reports), env)
        assert first.returncode == 1, first.stderr
        failed = read_rows_csv(reports, "retry")
        assert {(r["state"], r["failure_kind"]) for r in failed} == {("failed", "retryable")}
        assert not completed_by_face(sandbox)

        sandbox.control("PATCH", "/faults", json={"async_fail": 0.0})
        second = batcher(run_args(sandbox, sheet, reports), env)
        assert second.returncode == 0, second.stderr
        done = read_rows_csv(reports, "retry")
        assert {r["attempts"] for r in done} == {"2"}
        assert not {r["idempotency_key"] for r in failed} & {r["idempotency_key"] for r in done}
        assert_each_row_ordered_once(sandbox, rows)
        assert len(sandbox_orders(sandbox)) == 16  # 8 failed and refunded, 8 completed
        assert wallet_debits(sandbox, "GBP") == sum(Decimal(r["cost"]) for r in done)
        # The first attempt's failed, refunded orders are the batch's own, not orphans.
        assert workbook_verdict(reports, "retry") == ("RECONCILED", "RECONCILED")


class ChangeOnPlan(ConfirmingUI):
    """A UI that changes the sandbox after validation, before anything is sent, so
    GIFQ (not batcher's validator) refuses those rows: catalog or campaign drift."""

    def __init__(self, sandbox: SandboxHandle, method: str, path: str, body: dict[str, Any]):
        super().__init__()
        self.sandbox, self.change = sandbox, (method, path, body)

    def show_plan(self, plan: Any, balances: Any) -> None:
        method, path, body = self.change
        self.sandbox.control(method, path, json=body)


def in_process_settings(sandbox: SandboxHandle) -> Any:
    return provider_settings(
        "gifq", base_url=sandbox.base_url, environ={"GIFQ_API_TOKEN": sandbox.api_key}
    )


def test_orders_permanent_failures_keep_the_422_request_id(tmp_path: Path) -> None:
    with running_sandbox("gifq", **FAST) as sandbox:
        rows = order_rows(10)
        for row in rows[:3]:
            row["Product"] = "tesco"
        for row in rows[3:]:
            row["Product"] = "argos"
        sheet = write_csv(tmp_path / "drift.csv", rows, ORDER_HEADER)
        state, reports = tmp_path / "state", tmp_path / "r"
        drift = ChangeOnPlan(sandbox, "PATCH", "/products/1070", {"min_face_value": 200})
        options = BatchOptions(sheet=sheet, state_dir=state, report_dir=reports)
        result = run_batch(in_process_settings(sandbox), options, drift)
        assert result.exit_code == ExitCode.SOME_FAILED
        failed = [r for r in read_rows_csv(reports, "drift") if r["state"] == "failed"]
        assert len(failed) == 3
        assert {(r["failure_kind"], r["error_code"]) for r in failed} == {
            ("permanent", "validation_error")
        }
        assert all(len(r["provider_request_id"]) >= 8 for r in failed)  # GIFQ's 422 request_id
        assert len({r["provider_request_id"] for r in failed}) == 3
        assert "face value" in failed[0]["error_message"]

        sandbox.control("PATCH", "/products/1070", json={"min_face_value": 5})
        env = gifq_env(sandbox, state)
        plain = batcher(run_args(sandbox, sheet, reports), env)
        assert plain.returncode == 1, plain.stderr
        assert len(sandbox_orders(sandbox)) == 7, "a permanent failure was retried without asking"

        rows[0]["Amount"] = str(Decimal(rows[0]["Amount"]) + 100)  # a changed row is retried
        write_csv(sheet, rows, ORDER_HEADER)
        changed = batcher(run_args(sandbox, sheet, reports), env)
        assert changed.returncode == 1, changed.stderr
        assert len(sandbox_orders(sandbox)) == 8

        retried = batcher(run_args(sandbox, sheet, reports, "--retry-failed"), env)
        assert retried.returncode == 0, retried.stderr
        assert_each_row_ordered_once(sandbox, rows)


def test_orders_out_of_stock_422_request_id_reaches_rows_csv_and_failures_sheet(
    tmp_path: Path,
) -> None:
    with running_sandbox("gifq", **FAST) as sandbox:
        sandbox.control("PATCH", f"/products/{OPTION_IDS['tesco']}", json={"stock_count": 2})
        rows = order_rows(3)
        for row in rows:
            row["Product"] = "tesco"
        sheet = write_csv(tmp_path / "stock.csv", rows, ORDER_HEADER)
        reports = tmp_path / "r"
        result = batcher(run_args(sandbox, sheet, reports), gifq_env(sandbox, tmp_path / "s"))
        assert result.returncode == 1, result.stderr
        (failed,) = [r for r in read_rows_csv(reports, "stock") if r["state"] == "failed"]
        assert (failed["error_code"], failed["failure_kind"]) == ("out_of_stock", "retryable")
        assert failed["provider_request_id"] and "Out of stock" in failed["error_message"]
        assert failed["provider_request_id"] in failures_sheet_text(reports, "stock")


def failures_sheet_text(reports: Path, batch: str) -> str:
    """Every cell of the reconciliation workbook's Failures sheet, as one string."""
    workbook = load_workbook(reports / batch / "reconciliation.xlsx", read_only=True)
    try:
        sheet = workbook["Failures"]
        return " ".join(str(cell) for row in sheet.iter_rows(values_only=True) for cell in row)
    finally:
        workbook.close()


# ---------------------------------------------------------------------------
# Payouts mode


def test_payouts_happy_path_splits_into_orders_of_at_most_1000(tmp_path: Path) -> None:
    funding = {"GBP": "50000.00"}
    with running_sandbox(
        "gifq", funding=funding, payout_redeem_rate=0.5, seed=3, **FAST
    ) as sandbox:
        rows = payout_rows(1005)
        sheet = write_csv(tmp_path / "payouts.csv", rows, PAYOUT_HEADER)
        state, reports = tmp_path / "state", tmp_path / "reports"
        env = gifq_env(sandbox, state)
        result = batcher(payout_args(sandbox, sheet, reports), env)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr

        orders = sandbox.control("GET", "/payout-orders")["payoutOrders"]
        assert sorted(o["recipient_count"] for o in orders) == [5, 1000]
        assert {o["campaign_id"] for o in orders} == {int(ACTIVE_CAMPAIGN)}
        assert_each_recipient_paid_once(sandbox, rows)
        summary = read_summary(reports, "payouts")
        assert summary["by_state"]["succeeded"] == 1005
        assert Decimal(summary["totals_by_currency"]["GBP"]["cost"]) == wallet_debits(
            sandbox, "GBP"
        )

        payouts = {p["id"]: p for p in sandbox_payouts(sandbox)}
        lines = read_rows_csv(reports, "payouts")
        assert all(payouts[line["order_id"]]["email"] == line["recipient_email"] for line in lines)
        assert {line["order_request_id"] for line in lines} == {o["id"] for o in orders}
        # One payout debit per payout order settles its rows: the workbook reconciles.
        assert "reconciliation: RECONCILED" in result.stderr
        assert workbook_verdict(reports, "payouts") == ("RECONCILED", "RECONCILED")
        statuses = ledger_statuses(state, "payouts")
        assert statuses <= {"sent", "redeemed"} and "sent" in statuses

        assert_pages_within_twenty(sandbox)
        assert_no_token_leaks(sandbox.api_key, reports, state, texts=(result.stdout, result.stderr))


def workbook_verdict(reports: Path, batch: str) -> tuple[str, str]:
    """The workbook's overall verdict and the GBP line's, from its Summary sheet."""
    workbook = load_workbook(reports / batch / "reconciliation.xlsx", read_only=True)
    lines = list(workbook["Summary"].iter_rows(values_only=True))
    overall = next(line for line in lines if line[0] == "Verdict")
    headers = next(line for line in lines if line[0] == "Currency")
    gbp = dict(zip(headers, next(line for line in lines if line[0] == "GBP"), strict=False))
    workbook.close()
    return str(overall[1]), str(gbp["Verdict"])


def ledger_statuses(state: Path, batch: str) -> set[str]:
    return {r["provider_status"] for r in ledger_rows(state, batch)}


def test_payouts_need_an_active_campaign(tmp_path: Path) -> None:
    with running_sandbox("gifq", **FAST) as sandbox:
        sheet = write_csv(tmp_path / "paused.csv", payout_rows(3), PAYOUT_HEADER)
        env = gifq_env(sandbox, tmp_path / "state")
        result = batcher(payout_args(sandbox, sheet, tmp_path / "r", campaign=PAUSED_CAMPAIGN), env)
        assert result.returncode == 2, result.stderr
        assert "paused" in result.stderr and "active" in result.stderr
        missing = batcher(payout_args(sandbox, sheet, tmp_path / "r", campaign="999"), env)
        assert missing.returncode == 2 and "does not exist" in missing.stderr
        check = ["validate", str(sheet), "--report-dir", str(tmp_path / "r"), *gifq(sandbox)]
        paused = batcher([*check, "--payouts", "--campaign", PAUSED_CAMPAIGN], env)
        assert paused.returncode == 2 and "paused" in paused.stderr
        active = batcher([*check, "--payouts", "--campaign", ACTIVE_CAMPAIGN], env)
        assert active.returncode == 0, active.stdout + active.stderr
        assert not sandbox.control("GET", "/payout-orders")["payoutOrders"]


def test_payouts_chaos_sigkill_cycles_pay_each_recipient_once(tmp_path: Path) -> None:
    seed = int(os.environ.get("BATCHER_CHAOS_SEED", random.randrange(1, 2**31)))
    print(f"\nGIFQ payouts chaos seed: {seed}  (replay with BATCHER_CHAOS_SEED={seed})")
    rnd = random.Random(seed)
    faults = {"fault_500": 0.05, "fault_429": 0.03, "fault_latency": 0.05, "latency_ms": 150,
              "fault_drop": 0.08, "fault_payout_fail": 0.05, "burst_seconds": 0.5}  # fmt: skip
    with running_sandbox("gifq", seed=seed, **FAST, **faults) as sandbox:
        rows = payout_rows(60)
        sheet = write_csv(tmp_path / "pchaos.csv", rows, PAYOUT_HEADER)
        state, reports = tmp_path / "state", tmp_path / "reports"
        env = gifq_env(sandbox, state)
        args = payout_args(sandbox, sheet, reports, "--chunk-size", "5")
        kills = sigkill_cycles(args, env, rnd, cycles=10)
        assert kills >= 5, f"seed {seed}: only {kills} runs were killed mid-way"
        converge(args, env, seed)

        assert_each_recipient_paid_once(sandbox, rows)
        live = {p["id"] for p in sandbox_payouts(sandbox) if p["status"] != "failed"}
        ledger = ledger_rows(state, "pchaos")
        assert {r["order_id"] for r in ledger} == live, f"seed {seed}: ledger disagrees"
        assert {r["state"] for r in ledger} == {"succeeded"}


def test_payouts_lost_ledger_creates_no_duplicates(tmp_path: Path) -> None:
    with running_sandbox("gifq", **FAST) as sandbox:
        rows = payout_rows(60)
        sheet = write_csv(tmp_path / "plost.csv", rows, PAYOUT_HEADER)
        state, reports = tmp_path / "state", tmp_path / "reports"
        env = gifq_env(sandbox, state)
        args = payout_args(sandbox, sheet, reports, "--chunk-size", "5", "--max-rate", "4")
        proc = start_batcher(args, env)
        count = lambda: len(sandbox.control("GET", "/payout-orders")["payoutOrders"])  # noqa: E731
        assert wait_for(lambda: count() >= 3, timeout=60)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert 0 < count() < 12

        shutil.rmtree(state)
        result = batcher(payout_args(sandbox, sheet, reports, "--chunk-size", "5"), env)
        assert result.returncode == 0, result.stderr
        assert count() == 12
        assert_each_recipient_paid_once(sandbox, rows)


def test_payouts_funds_run_out_then_top_up(tmp_path: Path) -> None:
    with running_sandbox("gifq", funding={"GBP": "100.00"}, **FAST) as sandbox:
        rows = payout_rows(20)  # 4 payout orders of about £51
        sheet = write_csv(tmp_path / "pfunds.csv", rows, PAYOUT_HEADER)
        reports = tmp_path / "r"
        env = gifq_env(sandbox, tmp_path / "state")
        args = payout_args(sandbox, sheet, reports, "--chunk-size", "5", "--order-fundable")
        first = batcher(args, env)
        assert first.returncode == 3, first.stderr
        assert "insufficient funds" in first.stderr.lower()
        lines = read_rows_csv(reports, "pfunds")
        assert {r["state"] for r in lines} == {"succeeded", "pending"}
        assert {r["error_code"] for r in lines if r["state"] == "pending"} == {"insufficient_funds"}

        sandbox.control("POST", "/balances/GBP/fund", json={"amount": "1000.00"})
        second = batcher(args, env)
        assert second.returncode == 0, second.stderr
        assert_each_recipient_paid_once(sandbox, rows)
        summary = read_summary(reports, "pfunds")
        assert Decimal(summary["totals_by_currency"]["GBP"]["cost"]) == wallet_debits(
            sandbox, "GBP"
        )


def test_payouts_rerun_semantics(tmp_path: Path) -> None:
    with running_sandbox("gifq", fault_payout_fail=1.0, seed=2, **FAST) as sandbox:
        rows = payout_rows(6)
        sheet = write_csv(tmp_path / "prerun.csv", rows, PAYOUT_HEADER)
        state, reports = tmp_path / "state", tmp_path / "r"
        env = gifq_env(sandbox, state)
        args = payout_args(sandbox, sheet, reports, "--chunk-size", "3")

        # Retryable: the payout orders fail (and are refunded); the next run retries them.
        first = batcher(args, env)
        assert first.returncode == 1, first.stderr
        failed = read_rows_csv(reports, "prerun")
        assert {(r["state"], r["failure_kind"]) for r in failed} == {("failed", "retryable")}
        sandbox.control("PATCH", "/faults", json={"payout_fail": 0.0})
        second = batcher(args, env)
        assert second.returncode == 0, second.stderr
        done = read_rows_csv(reports, "prerun")
        assert {r["attempts"] for r in done} == {"2"}
        assert not {r["idempotency_key"] for r in failed} & {r["idempotency_key"] for r in done}
        assert_each_recipient_paid_once(sandbox, rows)
        # The failed, refunded payout orders of the first attempt net to zero.
        assert workbook_verdict(reports, "prerun") == ("RECONCILED", "RECONCILED")

        # Conflict: a paid row changed in the sheet is reported, never paid again.
        rows[1]["Amount"] = "77.77"
        write_csv(sheet, rows, PAYOUT_HEADER)
        third = batcher(args, env)
        assert third.returncode == 0, third.stderr
        summary = read_summary(reports, "prerun")
        assert summary["conflicts"] == 1 and summary["requests"]["submits"] == 0
        assert len(live_payouts_by_email(sandbox)) == 6

        # Permanent: the campaign is paused after validation; GIFQ refuses with a 422.
        more = payout_rows(3, prefix="PX")
        write_csv(sheet, rows + more, PAYOUT_HEADER)
        pause = ChangeOnPlan(
            sandbox, "PATCH", f"/campaigns/{ACTIVE_CAMPAIGN}", {"status": "paused"}
        )
        options = BatchOptions(
            sheet=sheet,
            state_dir=state,
            report_dir=reports,
            provider_options=ProviderOptions("payouts", ACTIVE_CAMPAIGN, 7),
        )
        result = run_batch(in_process_settings(sandbox), options, pause)
        assert result.exit_code == ExitCode.SOME_FAILED
        refused = [r for r in read_rows_csv(reports, "prerun") if r["reference"].startswith("PX")]
        assert {(r["state"], r["failure_kind"]) for r in refused} == {("failed", "permanent")}
        assert all(r["provider_request_id"] for r in refused)

        sandbox.control("PATCH", f"/campaigns/{ACTIVE_CAMPAIGN}", json={"status": "active"})
        plain = batcher(args, env)
        assert plain.returncode == 1, plain.stderr
        retried = batcher([*args, "--retry-failed"], env)
        assert retried.returncode == 0, retried.stderr
        assert_each_recipient_paid_once(sandbox, rows + more)
