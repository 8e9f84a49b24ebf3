"""Chaos between runs: SIGKILL at random moments, the ledger deleted, and the sheet
edited (rows added, rows reordered) between cycles, for UGiftMe, GIFQ orders and GIFQ
payouts. Then rerun until done and count duplicates and missing rows at the provider.

`tests/e2e/test_chaos.py` runs a small round of every mode in `make test`;
`make bench` runs `scenario` (20 seeds per mode). A seed replays a round exactly
as far as the random choices go (kill timing still races the processes).
"""

from __future__ import annotations

import csv
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from batcher.sandbox.server import SandboxHandle, running_sandbox

ROOT = Path(__file__).resolve().parents[2]
MODES = ("ugiftme", "gifq-orders", "gifq-payouts")

_UGIFTME_PRODUCTS = [("AMAZON_UK_STD", "GB"), ("TESCO_UK", "GB"), ("JOHNLEWIS_UK", "GB")]
_GIFQ_BRANDS = [("tesco", "GB"), ("john-lewis", "GB"), ("argos", "GB")]
_HEADERS = {
    "ugiftme": ["Reference", "Email", "Name", "Product", "Amount", "Currency", "Country"],
    "gifq-orders": ["Reference", "Email", "Name", "Product", "Amount", "Currency", "Country"],
    "gifq-payouts": ["Reference", "Email", "Name", "Amount", "Currency"],
}


@dataclass
class ChaosResult:
    mode: str
    seed: int
    rows: int
    kills: int
    ledger_deletions: int
    sheet_edits: int
    runs_to_converge: int
    duplicates: int
    missing: int
    final_exit: int


def _row(mode: str, i: int, rnd: random.Random, with_reference: bool) -> dict[str, str]:
    # Unique email and face value per row: each provider order maps back to one row.
    amount = str(Decimal(2500 + i) / 100)
    row = {
        "Reference": f"CH-{i:05d}" if with_reference else "",
        "Email": f"chaos{i}@example.com",
        "Name": f"Person {i}",
        "Amount": amount,
        "Currency": "GBP",
    }
    if mode != "gifq-payouts":
        product, country = rnd.choice(_UGIFTME_PRODUCTS if mode == "ugiftme" else _GIFQ_BRANDS)
        row.update(Product=product, Country=country)
    return row


def _write(path: Path, mode: str, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=_HEADERS[mode])
        writer.writeheader()
        writer.writerows(rows)


def _env(mode: str, sandbox: SandboxHandle, state: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("UGIFTME_", "GIFQ_", "BATCHER_"))
    }
    env.update(BATCHER_STATE_DIR=str(state), PYTHONUNBUFFERED="1")
    if mode == "ugiftme":
        env.update(UGIFTME_API_KEY=sandbox.api_key, UGIFTME_BASE_URL=sandbox.base_url)
    else:
        env.update(GIFQ_API_TOKEN=sandbox.api_key)
    return env


def _args(mode: str, sandbox: SandboxHandle, sheet: Path, reports: Path) -> list[str]:
    # The chaos deletes the ledger between cycles while its reports stay: the operator's
    # --ledger-lost lets recovery from the provider take over instead of a refusal.
    args = ["run", str(sheet), "--yes", "--report-dir", str(reports), "--chunk-size", "5"]
    args.append("--ledger-lost")
    if mode != "ugiftme":
        args += ["--provider", "gifq", "--base-url", sandbox.base_url]
    if mode == "gifq-payouts":
        args += ["--payouts", "--campaign", "101", "--expires-in-days", "7"]
    return args


def _sandbox(mode: str, seed: int) -> Any:
    common: dict[str, Any] = {
        "seed": seed,
        "fault_500": 0.05,
        "fault_429": 0.03,
        "fault_latency": 0.05,
        "latency_ms": 150,
        "fault_drop": 0.05,
        "burst_seconds": 0.3,
    }
    if mode == "ugiftme":
        return running_sandbox(
            "ugiftme", rate_limit=20, rate_window_seconds=1, async_delay_seconds=0.05,
            funding={"GBP": "100000.00"}, **common,
        )  # fmt: skip
    extra = {"fault_payout_fail": 0.05} if mode == "gifq-payouts" else {}
    return running_sandbox(
        "gifq", async_delay_seconds=0.05, funding={"GBP": "100000.00"}, **common, **extra
    )


def _orders_per_email(mode: str, sandbox: SandboxHandle) -> Counter[str]:
    """Live orders per recipient, read from the sandbox's own records."""
    if mode == "ugiftme":
        orders = sandbox.control("GET", "/orders")["orders"]
        return Counter(
            o["giftOrder"]["recipientEmail"] for o in orders if o.get("status") != "failed"
        )
    if mode == "gifq-payouts":
        payouts = sandbox.control("GET", "/payouts")["payouts"]
        return Counter(p["email"] for p in payouts if p["status"] != "failed")
    # GIFQ orders carry no recipient: each row's face value is unique, so map by it.
    orders = sandbox.control("GET", "/orders")["orders"]
    by_face = Counter(
        str(Decimal(str(o["face_value"])).quantize(Decimal("0.01")))
        for o in orders
        if o["status"] != "failed"
    )
    return Counter(
        {f"chaos{int(Decimal(face) * 100) - 2500}@example.com": n for face, n in by_face.items()}
    )


def run_round(
    mode: str, seed: int, work: Path, *, rows: int, cycles: int, grow: int = 5
) -> ChaosResult:
    """One seeded round: `cycles` runs killed at random, the ledger deleted and the sheet
    edited between some of them, then reruns until exit 0. Counts at the provider."""
    rnd = random.Random(seed)
    work.mkdir(parents=True, exist_ok=True)
    with_reference = rnd.random() < 0.5
    sheet_rows = [_row(mode, i, rnd, with_reference) for i in range(rows)]
    sheet, state, reports = work / "chaos.csv", work / "state", work / "reports"
    _write(sheet, mode, sheet_rows)
    kills = deletions = edits = 0
    with _sandbox(mode, seed) as sandbox:
        env = _env(mode, sandbox, state)
        args = _args(mode, sandbox, sheet, reports)
        for _ in range(cycles):
            proc = _start(args, env)
            time.sleep(rnd.uniform(0.5, 2.5))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            out, err = proc.communicate()
            _log(work, "cycle", proc.returncode, out, err)
            if rnd.random() < 0.3 and state.exists():
                shutil.rmtree(state)
                deletions += 1
            if rnd.random() < 0.4:
                start = len(sheet_rows)
                added = [_row(mode, start + i, rnd, with_reference) for i in range(grow)]
                sheet_rows = added[: grow // 2] + sheet_rows + added[grow // 2 :]
                if rnd.random() < 0.5:
                    rnd.shuffle(sheet_rows)
                _write(sheet, mode, sheet_rows)
                edits += 1
        code, runs = _converge(args, env, work)
        per_email = _orders_per_email(mode, sandbox)
    wanted = {r["Email"] for r in sheet_rows}
    return ChaosResult(
        mode=mode,
        seed=seed,
        rows=len(sheet_rows),
        kills=kills,
        ledger_deletions=deletions,
        sheet_edits=edits,
        runs_to_converge=runs,
        duplicates=sum(n - 1 for n in per_email.values() if n > 1),
        missing=len(wanted - set(per_email)),
        final_exit=code,
    )


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "batcher", *args],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip


def _log(work: Path, what: str, code: int, out: str, err: str) -> None:
    """Every run's output, in `work/runs.log`: a failed round can be read afterwards."""
    with (work / "runs.log").open("a", encoding="utf-8") as fh:
        fh.write(f"===== {what}: exit {code}\n{out}{err}\n")


def _converge(args: list[str], env: dict[str, str], work: Path, tries: int = 15) -> tuple[int, int]:
    """Rerun until exit 0. A lost ledger forgets attempt numbers, so a row whose first
    attempt failed replays that failure until --retry-failed (README, known limits); rows
    held as possible duplicates of the chaos's own edits are released as an operator would."""
    code = -1
    for attempt in range(1, tries + 1):
        extra = ["--retry-failed", "--release-held", "all"] if attempt > 2 else []
        result = subprocess.run(
            [sys.executable, "-m", "batcher", *args, *extra],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        _log(work, f"converge {attempt}", result.returncode, result.stdout, result.stderr)
        if "Traceback" in result.stderr:
            raise AssertionError(result.stderr)
        code = result.returncode
        if code == 0:
            return code, attempt
        time.sleep(1.0)
    return code, tries


def scenario(data: Path, seeds: int = 20) -> dict[str, Any]:
    """`make bench`: `seeds` rounds per mode; every one must end with 0 duplicates and
    0 missing rows."""
    results = []
    for mode in MODES:
        for seed in range(1, seeds + 1):
            work = data / "chaos" / f"{mode}-{seed}"
            shutil.rmtree(work, ignore_errors=True)
            results.append(run_round(mode, seed, work, rows=60, cycles=8, grow=6))
    by_mode = {
        mode: {
            "seeds": sum(1 for r in results if r.mode == mode),
            "kills": sum(r.kills for r in results if r.mode == mode),
            "ledger_deletions": sum(r.ledger_deletions for r in results if r.mode == mode),
            "sheet_edits": sum(r.sheet_edits for r in results if r.mode == mode),
            "duplicates": sum(r.duplicates for r in results if r.mode == mode),
            "missing": sum(r.missing for r in results if r.mode == mode),
            "not_converged": [r.seed for r in results if r.mode == mode and r.final_exit != 0],
        }
        for mode in MODES
    }
    failed = [asdict(r) for r in results if r.duplicates or r.missing or r.final_exit]
    return {
        "by_mode": by_mode,
        "failed_rounds": failed,
        "target": f"{seeds} seeds per mode: 0 duplicates, 0 missing rows",
        "met": not failed,
    }
