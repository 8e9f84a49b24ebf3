"""Chaos on a shared PostgreSQL ledger: workers drain a queue of batches on two
UGiftMe accounts (two sandboxes, one key each, named in batcher.toml) while workers
are SIGKILLed mid-batch and restarted, and the sandboxes inject faults (500s, 429s,
latency, dropped connections). Then every item must be done, and every row ordered
exactly once at its account's sandbox.

`tests/e2e/test_chaos_pg.py` runs a small round in `make test`; `make bench` runs
`scenario` (several seeds, more rows). A seed replays the random choices (kill
timing still races the processes).
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg

from batcher.sandbox.server import SandboxHandle, running_sandbox

ROOT = Path(__file__).resolve().parents[2]
ACCOUNTS = ("north", "south")
_PRODUCTS = [("AMAZON_UK_STD", "GB"), ("TESCO_UK", "GB"), ("JOHNLEWIS_UK", "GB")]
_HEADER = ["Reference", "Email", "Name", "Product", "Amount", "Currency", "Country"]
FINAL = ("done", "failed", "held")


@dataclass
class PgChaosResult:
    seed: int
    workers: int
    batches: int
    rows: int
    kills: int
    kills_mid_batch: int
    worker_starts: int
    reclaims: int
    seconds: float
    by_state: dict[str, int]
    duplicates: int
    missing: int
    per_account: dict[str, dict[str, int]] = field(default_factory=dict)
    #: batch -> the queue item's message, for every item that did not end done
    not_done: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.duplicates and not self.missing and self.by_state == {"done": self.batches}


def _sheet(path: Path, batch: int, rows: int, rnd: random.Random) -> set[str]:
    emails = set()
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=_HEADER)
        writer.writeheader()
        for i in range(rows):
            product, country = rnd.choice(_PRODUCTS)
            email = f"b{batch}r{i}@example.com"
            emails.add(email)
            writer.writerow(
                {
                    "Reference": f"PGC-{batch}-{i:04d}",
                    "Email": email,
                    "Name": f"Person {batch}-{i}",
                    "Product": product,
                    "Amount": str(Decimal(1000 + 7 * i) / 100),
                    "Currency": "GBP",
                    "Country": country,
                }
            )
    return emails


def _sandbox(seed: int, faults: bool) -> Any:
    chaos: dict[str, Any] = {}
    if faults:
        chaos = {
            "fault_500": 0.04,
            "fault_429": 0.03,
            "fault_latency": 0.05,
            "latency_ms": 150,
            "fault_drop": 0.04,
            "burst_seconds": 0.3,
        }
    # 20 requests/s per key: slow enough that kills land while chunks are in flight
    return running_sandbox(
        "ugiftme", seed=seed, rate_limit=20, rate_window_seconds=1, async_delay_seconds=0.05,
        funding={"GBP": "100000.00"}, **chaos,
    )  # fmt: skip


def _env(work: Path, pg_url: str, sandboxes: dict[str, SandboxHandle]) -> dict[str, str]:
    toml = work / "batcher.toml"
    lines = []
    for name, sandbox in sandboxes.items():
        lines += [
            f"[accounts.{name}]",
            'provider = "ugiftme"',
            f'base_url = "{sandbox.base_url}"',
            f'api_key_env = "{name.upper()}_UGIFTME_KEY"',
            "",
        ]
    toml.write_text("\n".join(lines), encoding="utf-8")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("UGIFTME_", "GIFQ_", "BATCHER_"))
    }
    env.update(
        BATCHER_CONFIG=str(toml),
        BATCHER_LEDGER=pg_url,
        BATCHER_STATE_DIR=str(work / "state"),
        PYTHONUNBUFFERED="1",
    )
    for name, sandbox in sandboxes.items():
        env[f"{name.upper()}_UGIFTME_KEY"] = sandbox.api_key
    return env


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "batcher", *args], env=env, cwd=ROOT, capture_output=True,
        text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if "Traceback" in done.stderr:
        raise AssertionError(done.stderr)
    return done


class Workers:
    """The worker processes: started, SIGKILLed, restarted, stopped."""

    def __init__(self, env: dict[str, str], work: Path) -> None:
        self.env = env
        self.work = work
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.starts = 0

    def start(self) -> str:
        self.starts += 1
        name = f"w{self.starts}"
        log = (self.work / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "batcher", "worker", "--worker-id", name,
             "--report-dir", str(self.work / "reports"), "--poll-interval", "0.3",
             "--heartbeat", "0.5", "--stale-after", "2", "--retry-backoff", "0.5"],
            env=self.env, cwd=ROOT, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        log.close()
        return name

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


def _items(pg_url: str) -> list[dict[str, Any]]:
    with psycopg.connect(pg_url) as db:
        cursor = db.execute("SELECT id, batch, account, state, worker, message FROM batch_queue")
        names = [c.name for c in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _live_orders(sandbox: SandboxHandle) -> Counter[str]:
    orders = sandbox.control("GET", "/orders")["orders"]
    return Counter(o["giftOrder"]["recipientEmail"] for o in orders if o.get("status") != "failed")


def run_round(
    seed: int,
    work: Path,
    pg_url: str,
    *,
    workers: int = 3,
    batches: int = 6,
    rows: int = 40,
    kills: int = 4,
    faults: bool = True,
    timeout: float = 240.0,
) -> PgChaosResult:
    """One seeded round: `batches` batches over the two accounts enqueued, `workers`
    workers draining them while up to `kills` of them are SIGKILLed mid-batch (each
    replaced at once), until every item is final. Counts at the sandboxes."""
    rnd = random.Random(seed)
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with ExitStack() as stack:
        sandboxes = {
            name: stack.enter_context(_sandbox(seed * 10 + i, faults))
            for i, name in enumerate(ACCOUNTS)
        }
        env = _env(work, pg_url, sandboxes)
        wanted: dict[str, set[str]] = {name: set() for name in ACCOUNTS}
        for b in range(batches):
            account = ACCOUNTS[b % len(ACCOUNTS)]
            sheet = work / f"batch{b}.csv"
            wanted[account] |= _sheet(sheet, b, rows, rnd)
            queued = _cli(
                ["enqueue", str(sheet), "--batch", f"pgchaos-{b}", "--account", account,
                 "--chunk-size", "5", "--max-attempts", "50",
                 "--report-dir", str(work / "reports")],
                env,
            )  # fmt: skip
            if queued.returncode != 0:
                raise AssertionError(f"enqueue failed: {queued.stderr}")
        pool = Workers(env, work)
        killed = mid_batch = 0
        try:
            for _ in range(workers):
                pool.start()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                items = _items(pg_url)
                if all(i["state"] in FINAL for i in items):
                    break
                time.sleep(rnd.uniform(0.5, 2.0))
                if killed < kills and rnd.random() < 0.6:
                    busy = {i["worker"] for i in _items(pg_url) if i["state"] == "running"}
                    victims = sorted(n for n in pool.procs if n in busy)
                    if victims:
                        pool.kill(rnd.choice(victims))
                        killed += 1
                        mid_batch += 1
                        pool.start()
        finally:
            pool.stop_all()
        items = _items(pg_url)
        per_account = {}
        duplicates = missing = 0
        for name, sandbox in sandboxes.items():
            counts = _live_orders(sandbox)
            dup = sum(n - 1 for n in counts.values() if n > 1)
            miss = len(wanted[name] - set(counts))
            per_account[name] = {
                "rows": len(wanted[name]),
                "orders": sum(counts.values()),
                "duplicates": dup,
                "missing": miss,
            }
            duplicates += dup
            missing += miss
    reclaims = sum(
        (work / f"w{n}.log").read_text(errors="replace").count("reclaimed from worker")
        for n in range(1, pool.starts + 1)
    )
    return PgChaosResult(
        seed=seed,
        workers=workers,
        batches=batches,
        rows=batches * rows,
        kills=killed,
        kills_mid_batch=mid_batch,
        worker_starts=pool.starts,
        reclaims=reclaims,
        seconds=round(time.monotonic() - started, 1),
        by_state=dict(Counter(str(i["state"]) for i in items)),
        duplicates=duplicates,
        missing=missing,
        per_account=per_account,
        not_done={
            i["batch"]: f"{i['state']}: {i['message']}" for i in items if i["state"] != "done"
        },
    )


def scenario(data: Path, seeds: int = 3) -> dict[str, Any]:
    """`make bench`: `seeds` rounds of 3 workers, 6 batches of 150 rows on 2 accounts, 8
    SIGKILLs each, faults on; every round must end with all items done, 0 duplicates
    and 0 missing rows."""
    from tests.pg import PgCluster

    cluster = PgCluster.start()
    results = []
    try:
        for seed in range(1, seeds + 1):
            work = data / "chaos_pg" / f"seed-{seed}"
            shutil.rmtree(work, ignore_errors=True)
            url = cluster.url(cluster.fresh_database())
            results.append(run_round(seed, work, url, rows=150, kills=8, timeout=600))
    finally:
        cluster.stop()
    failed = [asdict(r) for r in results if not r.ok]
    return {
        "rounds": len(results),
        "workers": 3,
        "batches_per_round": 6,
        "rows_per_round": results[0].rows if results else 0,
        "kills": sum(r.kills for r in results),
        "kills_mid_batch": sum(r.kills_mid_batch for r in results),
        "reclaims": sum(r.reclaims for r in results),
        "duplicates": sum(r.duplicates for r in results),
        "missing": sum(r.missing for r in results),
        "seconds": round(sum(r.seconds for r in results), 1),
        "seconds_per_round": [r.seconds for r in results],
        "failed_rounds": failed,
        "target": f"{seeds} rounds: every item done, 0 duplicates, 0 missing rows",
        "met": not failed,
    }


if __name__ == "__main__":  # one round by hand: python -m tests.bench.chaos_pg URL WORKDIR
    print(json.dumps(asdict(run_round(1, Path(sys.argv[2]), sys.argv[1])), indent=2))
