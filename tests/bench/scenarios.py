"""Benchmark scenarios. Each runs in its own process (so peak RSS is its own) and
prints one JSON object: its timings, its baseline measured in the same process,
and its own figures. `python -m tests.bench.scenarios NAME DATA_DIR`.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
GBP_PRODUCTS = ["AMAZON_UK_STD", "TESCO_UK", "JOHNLEWIS_UK", "MANDS_UK", "SAINSBURYS_UK"]
HEADER = ["Reference", "Email", "Name", "Product", "Amount", "Currency", "Country", "Cost centre"]


def sheet_rows(n: int, seed: int = 1) -> list[list[str]]:
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        amount = Decimal(rnd.randrange(1000, 6000)) / 100
        rows.append(
            [
                f"RW-{i:07d}",
                f"person{i}@example.com",
                f"Person {i}",
                rnd.choice(GBP_PRODUCTS),
                str(amount),
                "GBP",
                "GB",
                f"CC-{i % 17}",
            ]
        )
    return rows


def write_csv(path: Path, n: int) -> Path:
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(HEADER)
            writer.writerows(sheet_rows(n))
        tmp.replace(path)
    return path


def write_xlsx(path: Path, n: int) -> Path:
    if not path.exists():
        from openpyxl import Workbook

        wb = Workbook(write_only=True)
        ws = wb.create_sheet("Recipients")
        ws.append(HEADER)
        for row in sheet_rows(n):
            row[4] = float(row[4])  # type: ignore[call-overload]  # Excel stores numbers
            ws.append(row)
        tmp = path.with_suffix(".tmp.xlsx")
        wb.save(tmp)
        tmp.replace(path)
    return path


def catalog_and_balances() -> tuple[list[Any], list[Any]]:
    """The sandbox's real catalog, fetched once over HTTP (not timed)."""
    from batcher.config import provider_settings
    from batcher.providers import connect
    from batcher.sandbox.server import running_sandbox

    with running_sandbox("ugiftme", funding={"GBP": "100000000"}) as sandbox:
        settings = provider_settings(
            "ugiftme", base_url=sandbox.base_url, environ={"UGIFTME_API_KEY": sandbox.api_key}
        )
        provider = connect(settings)
        try:
            return provider.catalog(), provider.balances()
        finally:
            provider.close()


def timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


# ---------------------------------------------------------------------------


# Timings of a few hundred milliseconds swing by a third from one run to the
# next on a shared 2-core machine, the baseline's as much as ours. So each side
# runs once untimed (first-use costs: thread pools, regex compilation), then
# the two alternate, with the memory of the last run freed before the next,
# and the figure is the ratio of the medians. Every sample is kept.
PAIRED_RUNS = 7


def paired_medians(baseline: Any, ours: Any, runs: int = PAIRED_RUNS) -> dict[str, Any]:
    """Time `baseline()` and `ours()` alternately in this process; medians and samples."""
    import gc
    import statistics

    def once(fn: Any) -> float:
        gc.collect()
        seconds, value = timed(fn)
        del value
        return seconds

    once(baseline)
    once(ours)
    base_samples, our_samples = [], []
    for _ in range(runs):
        base_samples.append(once(baseline))
        our_samples.append(once(ours))
    base, mine = statistics.median(base_samples), statistics.median(our_samples)
    return {
        "seconds": mine,
        "baseline_seconds": base,
        "ratio": mine / base,
        "ratio_of_best": min(our_samples) / min(base_samples),
        "samples": {"ours": our_samples, "baseline": base_samples},
        "method": f"median of {runs} alternating runs in one process, after one untimed run each",
    }


def csv_validate(data: Path) -> dict[str, Any]:
    import polars as pl

    from batcher.intake.read import read_sheet
    from batcher.intake.validate import validate_rows

    rows = 1_000_000
    path = write_csv(data / "bench-1m.csv", rows)
    catalog, balances = catalog_and_balances()

    def baseline() -> pl.DataFrame:
        frame = pl.read_csv(path, infer_schema=False)
        assert frame.height == rows
        return frame

    def read_and_validate() -> Any:
        result = validate_rows(read_sheet(path), catalog, balances, allow_duplicates=False)
        assert result.valid_count == rows, result.errors.head(5)
        return result

    figures = paired_medians(baseline, read_and_validate)
    # What `batcher run` adds on top: the normalised valid rows and the file's sha256.
    result = read_and_validate()
    valid_seconds, valid = timed(lambda: result.valid)
    assert valid.height == rows
    hash_seconds, _ = timed(lambda: result.sheet.sha256)
    return {
        "rows": rows,
        **figures,
        "baseline": "polars.read_csv (all columns as text)",
        "rows_per_second": rows / figures["seconds"],
        "then_valid_rows_seconds": valid_seconds,
        "then_sha256_wait_seconds": hash_seconds,
        "target": "ratio <= 3.0",
        "met": figures["ratio"] <= 3.0,
    }


def xlsx_validate(data: Path) -> dict[str, Any]:
    import polars as pl
    from openpyxl import load_workbook

    from batcher.intake.read import read_sheet
    from batcher.intake.validate import validate_rows

    rows = 100_000
    path = write_xlsx(data / "bench-100k.xlsx", rows)
    catalog, balances = catalog_and_balances()

    def baseline() -> pl.DataFrame:
        frame = pl.read_excel(path, engine="calamine")
        assert frame.height == rows
        return frame

    def read_and_validate() -> Any:
        result = validate_rows(read_sheet(path), catalog, balances)
        assert result.valid_count == rows, result.errors.head(5)
        return result

    def openpyxl_read() -> int:
        wb = load_workbook(path, read_only=True, data_only=True)
        count = sum(1 for _ in wb.active.iter_rows(values_only=True))
        wb.close()
        return count

    openpyxl_seconds, _ = timed(openpyxl_read)
    figures = paired_medians(baseline, read_and_validate, runs=3)
    return {
        "rows": rows,
        **figures,
        "baseline": "polars.read_excel (calamine)",
        "openpyxl_cell_by_cell_seconds": openpyxl_seconds,
        "rows_per_second": rows / figures["seconds"],
        "target": "report rows/s and the ratio (no fixed target)",
        "met": True,
    }


def _cli(args: list[str], env: dict[str, str], logs: Path) -> tuple[float, int, int, str]:
    """Run the real CLI; return wall seconds, its peak RSS (KiB), exit code and stderr."""
    return _python(["-m", "batcher", *args], logs, env=env)


def _python(
    args: list[str], logs: Path, *, env: dict[str, str] | None = None
) -> tuple[float, int, int, str]:
    """Run `python ARGS` in a child; return wall seconds, peak RSS (KiB), exit code, stderr."""
    logs.mkdir(parents=True, exist_ok=True)
    out, err = logs / "stdout.txt", logs / "stderr.txt"
    start = time.perf_counter()
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, *args],
            env=env,
            cwd=ROOT,
            stdout=stdout,
            stderr=stderr,
        )
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    return wall, usage.ru_maxrss, os.waitstatus_to_exitcode(status), err.read_text()


def e2e_ugiftme(data: Path) -> dict[str, Any]:
    """20,000 rows, async, bulk 100, 600 requests / 60 s; then a rerun of the finished batch."""
    from batcher.sandbox.server import running_sandbox

    rows, chunk, limit, window = 20_000, 100, 600, 60.0
    rate = limit / window
    path = data / "bench-20k.csv"
    if not path.exists():
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(HEADER)
            writer.writerows(sheet_rows(rows, seed=2))
    state = data / "e2e-state"
    reports = data / "e2e-reports"
    shutil.rmtree(state, ignore_errors=True)
    shutil.rmtree(reports, ignore_errors=True)
    with running_sandbox(
        "ugiftme",
        rate_limit=limit,
        rate_window_seconds=window,
        async_mode=True,
        async_delay_seconds=0.5,
        funding={"GBP": "10000000.00"},
    ) as sandbox:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("UGIFTME_", "BATCHER_"))},
            "UGIFTME_API_KEY": sandbox.api_key,
            "UGIFTME_BASE_URL": sandbox.base_url,
            "BATCHER_STATE_DIR": str(state),
        }
        args = ["run", str(path), "--yes", "--chunk-size", str(chunk), "--report-dir", str(reports)]
        wall, rss, code, stderr = _cli(args, env, data / "logs-run")
        if code != 0:
            raise RuntimeError(f"run exited {code}: {stderr[-2000:]}")
        summary = json.loads((reports / path.stem / "summary.json").read_text())
        stats = sandbox.control("GET", "/stats?log=false")
        orders = sandbox.control("GET", "/orders")["total"]
        resume_wall, resume_rss, resume_code, _ = _cli(args, env, data / "logs-resume")
        resumed = json.loads((reports / path.stem / "summary.json").read_text())
        stats_after = sandbox.control("GET", "/stats?log=false")
        orders_after = sandbox.control("GET", "/orders")["total"]
    req = summary["requests"]
    submits, polls = req["submits"], req["polls"]
    min_calls = 2 * (rows // chunk)  # one submit and at least one poll per chunk
    lower_bound = min_calls / rate
    http_total = req.get("http_requests")
    resume_calls = resumed["requests"].get("http_requests")
    return {
        "e2e": {
            "rows": rows,
            "orders_created": orders,
            "seconds": wall,
            "peak_rss_kib": rss,
            "orders_per_second": rows / wall,
            "submit_calls_per_order": submits / rows,
            "poll_calls_per_order": polls / rows,
            "calls_per_order": (submits + polls) / rows,
            "all_http_calls": http_total,
            "all_http_calls_per_order": None if http_total is None else http_total / rows,
            "http_429s": req.get("http_429s"),
            "sandbox_429s": stats["tooManyRequestsTotal"],
            "achieved_request_rate": req.get("achieved_request_rate"),
            "advertised_rate": rate,
            "rate_fraction": None
            if req.get("achieved_request_rate") is None
            else req["achieved_request_rate"] / rate,
            "lower_bound_seconds": lower_bound,
            "wall_over_lower_bound": wall / lower_bound,
            "baseline": f"lower bound: {min_calls} calls at {rate:g} req/s",
            "baseline_seconds": lower_bound,
            "target": "0 429s, <= 0.02 calls/order, wall <= 1.25x lower bound",
            "met": stats["tooManyRequestsTotal"] == 0
            and (submits + polls) / rows <= 0.02
            and wall <= 1.25 * lower_bound,
        },
        "resume": {
            "rows": rows,
            "seconds": resume_wall,
            "peak_rss_kib": resume_rss,
            "exit_code": resume_code,
            "new_orders": orders_after - orders,
            "api_calls": resume_calls,
            "submits": resumed["requests"]["submits"],
            "polls": resumed["requests"]["polls"],
            "baseline": "none (target is absolute)",
            "baseline_seconds": None,
            "target": "< 5 s, no orders, calls ~ 0",
            "met": resume_wall < 5 and orders_after == orders and resume_code == 0,
            "sandbox_requests_during_resume": sum(stats_after["requests"].values())
            - sum(stats["requests"].values()),
        },
    }


def e2e_gifq(data: Path) -> dict[str, Any]:
    """1,000 single GIFQ orders against the 10 req/s sandbox: zero 429s, >= 8.5 req/s."""
    from batcher.sandbox.server import running_sandbox

    rows = 1000
    path = data / "bench-gifq-1000.csv"
    rnd = random.Random(3)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Reference", "Email", "Name", "Product", "Amount", "Currency", "Country"])
        for i in range(rows):
            brand = rnd.choice(["amazon", "asos", "john-lewis"])
            writer.writerow([f"GQ-{i:06d}", f"p{i}@example.com", f"P {i}", brand,
                             f"{rnd.randrange(10, 60)}.00", "GBP", "GB"])  # fmt: skip
    state, reports = data / "gifq-state", data / "gifq-reports"
    shutil.rmtree(state, ignore_errors=True)
    shutil.rmtree(reports, ignore_errors=True)
    with running_sandbox("gifq", async_delay_seconds=0.2, funding={"GBP": "1000000.00"}) as sandbox:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("GIFQ_", "BATCHER_"))},
            "GIFQ_API_TOKEN": sandbox.api_key,
            "GIFQ_BASE_URL": sandbox.base_url,
            "BATCHER_STATE_DIR": str(state),
        }
        args = ["run", str(path), "--provider", "gifq", "--yes", "--report-dir", str(reports)]
        wall, rss, code, stderr = _cli(args, env, data / "logs-gifq")
        if code != 0:
            raise RuntimeError(f"gifq run exited {code}: {stderr[-2000:]}")
        stats = sandbox.control("GET", "/stats?log=false")
        orders = sandbox.control("GET", "/orders")["total"]
    summary = json.loads((reports / path.stem / "summary.json").read_text())
    req = summary["requests"]
    rate = req["submit_rate_per_second"]
    return {
        "rows": rows,
        "orders_created": orders,
        "seconds": wall,
        "peak_rss_kib": rss,
        "submits": req["submits"],
        "polls": req["polls"],
        "all_http_calls": req.get("http_requests"),
        "submit_phase_seconds": req["submit_phase_seconds"],
        "submit_rate_per_second": rate,
        "sandbox_429s": stats["tooManyRequestsTotal"],
        "baseline": "lower bound: 1,000 submits at 10 req/s",
        "baseline_seconds": rows / 10,
        "target": "0 429s and >= 8.5 req/s over the submit phase",
        "met": stats["tooManyRequestsTotal"] == 0 and rate is not None and rate >= 8.5,
    }


def report_100k(data: Path) -> dict[str, Any]:
    """`batcher report` for a finished 100,000-row batch: reconcile against the provider's
    full order and transaction lists, then write the workbook."""
    from batcher.sandbox.server import running_sandbox

    rows = 100_000
    path = data / "bench-report-100k.csv"
    if not path.exists():
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(HEADER)
            writer.writerows(sheet_rows(rows, seed=4))
    state, reports = data / "report-state", data / "report-reports"
    shutil.rmtree(state, ignore_errors=True)
    shutil.rmtree(reports, ignore_errors=True)
    with running_sandbox(
        "ugiftme",
        rate_limit=10_000_000,
        async_mode=False,
        funding={"GBP": "100000000.00"},
    ) as sandbox:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("UGIFTME_", "BATCHER_"))},
            "UGIFTME_API_KEY": sandbox.api_key,
            "UGIFTME_BASE_URL": sandbox.base_url,
            "BATCHER_STATE_DIR": str(state),
        }
        run_args = ["run", str(path), "--yes", "--report-dir", str(reports)]
        run_wall, _, code, stderr = _cli(run_args, env, data / "logs-report-run")
        if code != 0:
            raise RuntimeError(f"run exited {code}: {stderr[-2000:]}")
        # The workbook from the ledger alone, in a process of its own (for its RSS).
        script = (
            "import sys; from pathlib import Path; from batcher.ledger.store import Ledger;"
            "from batcher.reporting.reports import write_batch_report;"
            "led = Ledger.open(Path(sys.argv[1]));"
            "write_batch_report(led, sys.argv[2], None, Path(sys.argv[3]), fetch='auto')"
        )
        wall, rss, code, stderr = _python(
            ["-c", script, str(state), path.stem, str(reports)], data / "logs-report-write"
        )
        if code != 0:
            raise RuntimeError(f"report write exited {code}: {stderr[-2000:]}")
        # What `batcher report` costs end to end, listing every provider order and transaction.
        full_wall, full_rss, code, stderr = _cli(
            ["report", path.stem, "--report-dir", str(reports)], env, data / "logs-report"
        )
        if code != 0:
            raise RuntimeError(f"report exited {code}: {stderr[-2000:]}")
    workbook = reports / path.stem / "reconciliation.xlsx"
    return {
        "rows": rows,
        "seconds": wall,
        "peak_rss_kib": rss,
        "workbook_mib": workbook.stat().st_size / 2**20,
        "full_report_command_seconds": full_wall,
        "full_report_command_peak_rss_kib": full_rss,
        "setup_run_seconds": run_wall,
        "baseline": "none (target is absolute)",
        "baseline_seconds": None,
        "target": "workbook for 100k rows < 30 s",
        "met": wall < 30,
    }


from tests.bench.chaos import scenario as chaos_scenario  # noqa: E402

SCENARIOS = {
    "csv_validate": csv_validate,
    "xlsx_validate": xlsx_validate,
    "e2e_ugiftme": e2e_ugiftme,
    "e2e_gifq": e2e_gifq,
    "report_100k": report_100k,
    "chaos_once": chaos_scenario,
}


def main() -> None:
    name, data = sys.argv[1], Path(sys.argv[2])
    data.mkdir(parents=True, exist_ok=True)
    result = SCENARIOS[name](data)
    print("BENCH-RESULT " + json.dumps(result, default=str))


if __name__ == "__main__":
    main()
