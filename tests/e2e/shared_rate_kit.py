"""Two `batcher run` processes (two batches) on one UGiftMe key and one PostgreSQL
ledger, at the same time: what the sandbox counted. Used by the e2e test (a short
window) and by the `shared_rate` bench scenario (the full 600/60)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.e2e.runkit import cli_env, make_rows, start_batcher, write_sheet
from tests.e2e.test_gifq_run import ORDER_HEADER, order_rows, write_csv


@dataclass(frozen=True)
class SharedRateResult:
    requests: int  # every request the sandbox counted on the key
    too_many: int  # its 429 answers
    span_seconds: float  # first to last order placed, at the sandbox
    requests_in_span: int  # every request on the key in that stretch, reads included
    limit: int
    window_seconds: float
    exit_codes: tuple[int, ...]
    stderr: tuple[str, ...]

    @property
    def rate_per_second(self) -> float:
        spent = self.requests_in_span - 1
        return spent / self.span_seconds if self.span_seconds > 0 else 0.0

    @property
    def percent_of_limit(self) -> float:
        return 100.0 * self.rate_per_second / (self.limit / self.window_seconds)


def run_two_on_one_key(
    sandbox: Any,
    ledger_url: str,
    work: Path,
    *,
    rows_each: int,
    processes: int = 2,
    timeout: float = 600,
    provider: str = "ugiftme",
) -> SharedRateResult:
    """Start `processes` runs of `rows_each` rows each (one order per request: chunk
    size 1), all at once, on `provider`'s sandbox, and wait for them."""
    env = cli_env(sandbox, work / "state", BATCHER_LEDGER=ledger_url)
    extra: list[str] = []
    if provider == "gifq":
        env = {k: v for k, v in env.items() if not k.startswith("UGIFTME_")}
        env["GIFQ_API_TOKEN"] = sandbox.api_key
        extra = ["--provider", "gifq", "--base-url", sandbox.base_url]
    procs = []
    for n in range(processes):
        if provider == "gifq":
            rows = order_rows(rows_each, seed=n, prefix=f"P{n}", start=Decimal(25 + 10 * n))
            sheet = write_csv(work / f"shared{n}.csv", rows, ORDER_HEADER)
        else:
            rows = make_rows(rows_each, seed=n, prefix=f"P{n}")
            for row in rows:  # distinct recipients per process
                row["Email"] = f"p{n}-{row['Email']}"
            sheet = write_sheet(work / f"shared{n}.csv", rows)
        args = ["run", str(sheet), "--batch", f"shared{n}", "--yes", "--chunk-size", "1",
                "--report-dir", str(work / "reports"), *extra]  # fmt: skip
        procs.append(start_batcher(args, env))
    outputs = [proc.communicate(timeout=timeout) for proc in procs]
    stats = sandbox.control("GET", "/stats")
    logged = [e for e in stats["log"] if e["apiKey"] == sandbox.api_key]
    # The rate is measured while orders are being placed, when a request is always
    # waiting and the limit is what holds the runs back. Start-up before the first
    # order and each run's report after its last are bound by the machine's CPU (on a
    # loaded 2-core machine they stretched the whole span by seconds), not the limit.
    placed = [Decimal(e["t"]) for e in logged if e["method"] == "POST" and _places(e["path"])]
    first, last = (min(placed), max(placed)) if placed else (Decimal(0), Decimal(0))
    in_span = [e for e in logged if first <= Decimal(e["t"]) <= last]
    config = sandbox.control("GET", "/config")["rateLimit"]
    return SharedRateResult(
        requests=stats["requests"].get(sandbox.api_key, 0),
        too_many=stats["tooManyRequests"].get(sandbox.api_key, 0),
        span_seconds=float(last - first),
        requests_in_span=len(in_span),
        limit=int(config["limit"]),
        window_seconds=float(config["windowSeconds"]),
        exit_codes=tuple(proc.returncode for proc in procs),
        stderr=tuple(err for _out, err in outputs),
    )


def _places(path: str) -> bool:
    """A request that places an order or a payout."""
    return path.rstrip("/").endswith(("/orders", "/orders/bulk", "/payout-orders"))
