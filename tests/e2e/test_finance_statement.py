"""`batcher statement` end to end: three batches, a top-up and an order made by hand,
tied out to the UGiftMe sandbox's own transactions, to the cent."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from openpyxl import load_workbook

from batcher.reporting.xlsx_style import money_format
from batcher.sandbox.server import SandboxHandle, running_sandbox
from tests.e2e.runkit import batcher, cli_env, make_rows, write_sheet

FAST = {"rate_limit": 100_000, "async_delay_seconds": 0.05}


def table(sheet: Any, first_row: int = 1) -> list[dict[str, Any]]:
    rows = [r for r in sheet.iter_rows(min_row=first_row, values_only=True)]
    header = rows[0]
    found = []
    for r in rows[1:]:
        if r[0] is None:
            break
        found.append(dict(zip(header, r, strict=True)))
    return found


def sandbox_transactions(sandbox: SandboxHandle) -> list[dict[str, Any]]:
    """Every wallet transaction, read from the sandbox's public API with Decimal."""
    found: list[dict[str, Any]] = []
    page = 1
    with httpx.Client(base_url=sandbox.base_url, headers={"X-API-Key": sandbox.api_key}) as c:
        while True:
            response = c.get("/wallet/transactions", params={"page": page, "limit": 100})
            response.raise_for_status()
            body = json.loads(response.text, parse_float=Decimal)
            found += body["transactions"]
            if page >= body["pagination"]["totalPages"]:
                return found
            page += 1


def balances(sandbox: SandboxHandle) -> dict[str, Decimal]:
    with httpx.Client(base_url=sandbox.base_url, headers={"X-API-Key": sandbox.api_key}) as c:
        response = c.get("/wallet")
        response.raise_for_status()
        body = json.loads(response.text, parse_float=Decimal)
    wallets = body if isinstance(body, list) else body.get("wallets", body.get("data", []))
    return {w["currency"]: Decimal(str(w["balance"])) for w in wallets}


def test_a_statement_over_three_batches_ties_out_to_the_sandbox(tmp_path: Path) -> None:
    funding = {"GBP": "3000.00", "EUR": "3000.00"}
    with running_sandbox("ugiftme", funding=funding, **FAST) as sandbox:
        env = cli_env(sandbox, tmp_path / "state")
        reports = tmp_path / "reports"
        for i, name in enumerate(("payroll", "rewards", "nightly")):
            rows = make_rows(12, currencies=("GBP", "EUR"), seed=i, prefix=name.upper())
            sheet = write_sheet(tmp_path / f"{name}.csv", rows)
            args = ["run", str(sheet), "--yes", "--report-dir", str(reports)]
            result = batcher(args, env)
            assert result.returncode == 0, result.stderr
            if i == 0:
                sandbox.control("POST", "/wallets/GBP/fund", json={"amount": "250.00"})

        today = datetime.now(UTC).date().isoformat()
        args = ["statement", "--from", today, "--to", today, "--report-dir", str(reports)]
        result = batcher(args, env)
        assert result.returncode == 0, result.stdout + result.stderr
        (path,) = (reports / "statements").glob("statement-*.xlsx")
        wb = load_workbook(path)
        summary = wb["Summary"]
        assert summary["B2"].value == "RECONCILED"
        assert summary["B3"].value == 3
        wallets = {w["Currency"]: w for w in table(summary, first_row=6)}
        assert set(wallets) >= {"GBP", "EUR"}

        txs = sandbox_transactions(sandbox)
        now = balances(sandbox)
        for currency, line in wallets.items():
            if currency not in ("GBP", "EUR"):  # a wallet with no movement still shows
                assert line["Opening balance"] == line["Closing balance"] == now[currency]
                assert line["Orders"] == 0 and line["Verdict"] == "RECONCILED"
                continue
            mine = [t for t in txs if t["currency"] == currency]
            purchases = sum(
                (Decimal(str(t["transactionValue"])) for t in mine
                 if t["transactionType"] == "purchase"),
                Decimal(0),
            )  # fmt: skip
            top_ups = sum(
                (Decimal(str(t["transactionValue"])) for t in mine
                 if t["transactionType"] == "funding"),
                Decimal(0),
            )  # fmt: skip
            assert Decimal(str(line["Batcher orders (net debits)"])) == purchases
            assert Decimal(str(line["Ledger cost"])) == purchases, "the ledger agrees to the cent"
            assert Decimal(str(line["Difference"])) == 0
            assert Decimal(str(line["Top-ups"])) == top_ups
            assert Decimal(str(line["Closing balance"])) == now[currency]
            opening = now[currency] - top_ups + purchases
            assert Decimal(str(line["Opening balance"])) == opening
            assert line["Orders"] == 18 and line["Verdict"] == "RECONCILED"
            assert line["Balance checkpoints"] == 3, "each run's opening balance agrees"
        assert Decimal(str(wallets["GBP"]["Top-ups"])) == Decimal("250.00")

        # Every money cell carries its own currency's format.
        header = [c.value for c in summary[6]]
        for row in summary.iter_rows(min_row=7, max_row=6 + len(wallets)):
            fmt = money_format(row[0].value)
            for name in ("Opening balance", "Top-ups", "Closing balance", "Ledger cost"):
                assert row[header.index(name)].number_format == fmt
        spend = table(wb["Spend"])
        assert sum(s["Orders"] for s in spend) == 36
        assert {s["Cost centre"] for s in spend} == {f"CC-{i}" for i in range(7)}
        for s in spend:
            assert s["Currency"] == s["Card currency"]
        spend_header = [c.value for c in wb["Spend"][1]]
        for row in wb["Spend"].iter_rows(min_row=2):
            assert row[spend_header.index("Cost")].number_format == money_format(row[0].value)
        orders = table(wb["Orders"])
        assert len(orders) == 36 and {o["Batch"] for o in orders} == {
            "payroll", "rewards", "nightly"
        }  # fmt: skip
