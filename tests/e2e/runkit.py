"""Helpers for end-to-end tests: sheets that match the sandbox catalog, and the real CLI."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from batcher.execute.runner import SilentListener

ROOT = Path(__file__).resolve().parents[2]

# Open-range, active products (any amount in range with 2 decimals is allowed).
OPEN_PRODUCTS = {
    "GBP": [("AMAZON_UK_STD", "GB"), ("TESCO_UK", "GB"), ("JOHNLEWIS_UK", "GB")],
    "EUR": [("AMAZON_DE_STD", "DE"), ("ZALANDO_EU", "DE")],
    "USD": [("AMAZON_US_STD", "US"), ("TARGET_US", "US")],
}


class ConfirmingUI:
    """A run's UI for in-process `run_batch` tests: the sheet must be valid and every
    plan is confirmed. Subclasses act between validation and sending (`show_plan`)."""

    def __init__(self) -> None:
        self.listener = SilentListener()

    def validation_failed(self, result: Any, report_path: Any) -> None:
        raise AssertionError("the sheet is valid")

    def show_plan(self, plan: Any, balances: Any) -> None:
        pass

    def confirm(self, plan: Any) -> bool:
        return True


HEADER = ["Reference", "Email", "Name", "Product", "Amount", "Currency", "Country", "Cost centre"]


@dataclass
class SheetSpec:
    rows: list[dict[str, str]]
    path: Path

    def write(self) -> Path:
        with self.path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=HEADER)
            writer.writeheader()
            writer.writerows(self.rows)
        return self.path


def make_rows(
    n: int, *, currencies: tuple[str, ...] = ("GBP",), seed: int = 7, prefix: str = "RW"
) -> list[dict[str, str]]:
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        currency = currencies[i % len(currencies)]
        product, country = rnd.choice(OPEN_PRODUCTS[currency])
        amount = Decimal(rnd.randrange(1000, 6000)) / 100  # 10.00 .. 59.99
        rows.append(
            {
                "Reference": f"{prefix}-{i:06d}",
                "Email": f"person{i}@example.com",
                "Name": f"Person {i}",
                "Product": product,
                "Amount": str(amount),
                "Currency": currency,
                "Country": country,
                "Cost centre": f"CC-{i % 7}",
            }
        )
    return rows


def write_sheet(path: Path, rows: list[dict[str, str]]) -> Path:
    return SheetSpec(rows, path).write()


def cli_env(sandbox: Any, state_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("UGIFTME_", "GIFQ_", "BATCHER_"))
    }
    env.update(
        UGIFTME_API_KEY=sandbox.api_key,
        UGIFTME_BASE_URL=sandbox.base_url,
        BATCHER_STATE_DIR=str(state_dir),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def batcher(
    args: list[str], env: dict[str, str], *, timeout: float = 180, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batcher", *args],
        env=env,
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def start_batcher(
    args: list[str], env: dict[str, str], *, cwd: Path | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "batcher", *args],
        env=env,
        cwd=cwd or ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def sandbox_orders(sandbox: Any) -> list[dict[str, Any]]:
    return sandbox.control("GET", "/orders")["orders"]


def orders_by_email(sandbox: Any) -> Counter[str]:
    return Counter(o["giftOrder"]["recipientEmail"] for o in sandbox_orders(sandbox))


def wallet_debits(sandbox: Any, currency: str) -> Decimal:
    """Sum of purchase transactions minus refunds, read from the public API with Decimal."""
    total = Decimal(0)
    page = 1
    with httpx.Client(base_url=sandbox.base_url, headers={"X-API-Key": sandbox.api_key}) as client:
        while True:
            response = client.get("/wallet/transactions", params={"page": page, "limit": 100})
            response.raise_for_status()
            body = json.loads(response.text, parse_float=Decimal)
            for tx in body["transactions"]:
                if tx["currency"] != currency:
                    continue
                if tx["transactionType"] == "purchase":
                    total += Decimal(tx["transactionValue"])
                elif tx["transactionType"] == "refund":
                    total -= Decimal(tx["transactionValue"])
            if page >= body["pagination"]["totalPages"]:
                return total
            page += 1


def read_summary(report_dir: Path, batch: str) -> dict[str, Any]:
    return json.loads((report_dir / batch / "summary.json").read_text())


def read_rows_csv(report_dir: Path, batch: str) -> list[dict[str, str]]:
    with (report_dir / batch / "rows.csv").open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def wait_for(predicate: Any, timeout: float = 20.0, interval: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return False


def stop_once_said(
    proc: subprocess.Popen[str],
    said: str,
    *,
    within: float = 120.0,
    sig: int = signal.SIGTERM,
) -> tuple[str, float]:
    """Signal a run as soon as its stderr has said `said` (the start of a wait), and
    return its stderr and how many seconds it took to exit after the signal. Unlike a
    fixed sleep, a slow start on a loaded machine cannot make the signal come before the
    wait. The run must exit 3 (incomplete, rerun to continue)."""
    assert proc.stderr is not None
    lines: list[str] = []
    heard = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if said in line:
                heard.set()
        heard.set()  # end of stderr: the run exited without saying it

    def drain() -> None:  # stdout to its end, so a full pipe cannot hold the run
        if proc.stdout is not None:
            proc.stdout.read()

    readers = [threading.Thread(target=work, daemon=True) for work in (read, drain)]
    for reader in readers:
        reader.start()
    try:
        assert heard.wait(within), f"the run did not say {said!r} within {within:.0f} s"
        assert proc.poll() is None, "the run was no longer waiting:\n" + "".join(lines)
        proc.send_signal(sig)
        signalled = time.monotonic()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError("no exit within 60 s of the signal:\n" + "".join(lines)) from None
        took = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()  # never left running after the test
            proc.wait()
    for reader in readers:
        reader.join(timeout=60)
    stderr = "".join(lines)
    assert proc.returncode == 3, stderr
    assert "Traceback" not in stderr, stderr
    return stderr, took


def stop_while_waiting(
    proc: subprocess.Popen[str], *, after: float, sig: int = signal.SIGTERM
) -> tuple[str, float]:
    """Let a run sit in a wait for `after` seconds, signal it, and return its stderr and
    how many seconds it took to exit after the signal. The run must still be waiting
    when the signal comes, and must exit 3 (incomplete, rerun to continue)."""
    time.sleep(after)
    assert proc.poll() is None, "the run was no longer waiting"
    proc.send_signal(sig)
    signalled = time.monotonic()
    _, stderr = proc.communicate(timeout=60)
    took = time.monotonic() - signalled
    assert proc.returncode == 3, stderr
    assert "Traceback" not in stderr, stderr
    return stderr, took
