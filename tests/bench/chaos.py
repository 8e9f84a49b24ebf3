"""Chaos between runs: SIGKILL at random moments, the ledger deleted, and the sheet
edited (rows added, rows reordered) between cycles, for UGiftMe, GIFQ orders and GIFQ
payouts. Then rerun until done and count duplicates and missing rows at the provider.

A ledger is lost the two ways it happens to operators: the whole state folder goes
(a rebuilt machine), or only `ledger.sqlite` is deleted, leaving its `-wal`, `-shm`
and `ledger.sqlite-sessions/` behind. Either way the next run gets `--ledger-lost`.

Converging is what an operator does, never more: rerun; after a lost ledger, rows
whose first attempt failed need `--retry-failed` (README, known limits). A row batcher
*holds* (exit 5) is never released blindly: the harness follows README "Held rows"
and checks the provider for that row's recipient. No live order there: the hold was
cautious, and the row is released by number (`--release-held N`), so it is ordered
once. An order there: the hold was right, and the row stays held. What counts:
- duplicates: live provider orders beyond one per row (a hold never hides one: the
  provider's own records are counted);
- missing: rows with no live order that batcher neither ordered nor held with a reason
  a person can act on. A held row with exactly one order at the provider is neither
  missing nor a duplicate, and is reported as `held_verified`.

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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
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
    #: deletions of only the ledger file (the rest of the state folder kept)
    file_only_deletions: int = 0
    #: rows held for a person, released after the provider showed no order for them
    held_released: int = 0
    #: rows held for a person that the provider showed already ordered (a right hold)
    held_verified: int = 0
    #: exit 5 ended the round because every held row was checked and left held
    holds_settled: bool = False

    @property
    def converged(self) -> bool:
        """Done: exit 0, or exit 5 with every held row found ordered at the provider."""
        return self.final_exit == 0 or (self.final_exit == 5 and self.holds_settled)


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
    kills = deletions = file_only = edits = 0
    how = random.Random(seed * 7919 + 1)  # apart from `rnd`: a seed keeps its other draws
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
                if how.random() < 0.5:
                    shutil.rmtree(state)  # the machine rebuilt: the whole state folder
                else:
                    (state / "ledger.sqlite").unlink(missing_ok=True)  # just the file
                    file_only += 1
                deletions += 1
            if rnd.random() < 0.4:
                start = len(sheet_rows)
                added = [_row(mode, start + i, rnd, with_reference) for i in range(grow)]
                sheet_rows = added[: grow // 2] + sheet_rows + added[grow // 2 :]
                if rnd.random() < 0.5:
                    rnd.shuffle(sheet_rows)
                _write(sheet, mode, sheet_rows)
                edits += 1
        code, runs, holds = _converge(args, env, work, lambda: _orders_per_email(mode, sandbox))
        per_email = _orders_per_email(mode, sandbox)
    wanted = {r["Email"] for r in sheet_rows}
    verified = {email for email in holds.still_held if per_email.get(email, 0) == 1}
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
        file_only_deletions=file_only,
        held_released=holds.released,
        held_verified=len(verified),
        holds_settled=holds.settled and verified == holds.still_held,
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


@dataclass
class _Holds:
    released: int = 0
    still_held: set[str] = field(default_factory=set)
    settled: bool = False


def _held_rows(reports: Path) -> list[dict[str, str]]:
    with (reports / "chaos" / "rows.csv").open(newline="", encoding="utf-8") as fh:
        return [r for r in csv.DictReader(fh) if r["state"] == "held"]


def _converge(
    args: list[str],
    env: dict[str, str],
    work: Path,
    orders_per_email: Callable[[], Counter[str]],
    tries: int = 15,
) -> tuple[int, int, _Holds]:
    """Rerun as an operator would until exit 0, or exit 5 with every held row checked
    at the provider and found ordered there. A lost ledger forgets attempt numbers, so a
    row whose first attempt failed replays that failure until --retry-failed (README,
    known limits). A held row is released by number only when the provider holds no
    live order for its recipient (README, "Held rows"); never `--release-held all`."""
    code = -1
    holds = _Holds()
    release: list[str] = []
    for attempt in range(1, tries + 1):
        extra = ["--retry-failed"] if attempt > 2 else []
        if release:
            extra += ["--release-held", ",".join(release)]
        result = subprocess.run(
            [sys.executable, "-m", "batcher", *args, *extra],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        _log(work, f"converge {attempt} {' '.join(extra)}", result.returncode, result.stdout,
             result.stderr)  # fmt: skip
        if "Traceback" in result.stderr:
            raise AssertionError(result.stderr)
        code = result.returncode
        holds.released += len(release)
        release = []
        if code == 0:
            return code, attempt, holds
        if code == 5:
            held = _held_rows(work / "reports")
            ordered = orders_per_email()
            release = [r["source_row"] for r in held if not ordered.get(r["recipient_email"])]
            holds.still_held = {r["recipient_email"] for r in held} - {
                r["recipient_email"] for r in held if r["source_row"] in release
            }
            if not release:
                holds.settled = True  # every hold checked: each is a right one
                return code, attempt, holds
        time.sleep(1.0)
    return code, tries, holds


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
            "file_only_deletions": sum(r.file_only_deletions for r in results if r.mode == mode),
            "sheet_edits": sum(r.sheet_edits for r in results if r.mode == mode),
            "duplicates": sum(r.duplicates for r in results if r.mode == mode),
            "missing": sum(r.missing for r in results if r.mode == mode),
            "held_released": sum(r.held_released for r in results if r.mode == mode),
            "held_verified": sum(r.held_verified for r in results if r.mode == mode),
            "not_converged": [r.seed for r in results if r.mode == mode and not r.converged],
        }
        for mode in MODES
    }
    failed = [asdict(r) for r in results if r.duplicates or r.missing or not r.converged]
    return {
        "by_mode": by_mode,
        "failed_rounds": failed,
        "target": f"{seeds} seeds per mode: 0 duplicates, 0 missing rows",
        "met": not failed,
    }
