"""`make bench`: run every scenario in its own process, print a table, write
reports/bench/latest.json. Scenarios: tests/bench/scenarios.py."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "reports" / "bench"
DATA = OUT / "data"
SCENARIOS = [
    "csv_validate",
    "xlsx_validate",
    "validate_fixed_cost",
    "e2e_ugiftme",
    "e2e_gifq",
    "report_100k",
    "rerun_100k",
    "ledger_scaling",
    "e2e_webhooks",
    "chaos_once",
    "chaos_pg",
    "report_small_in_large",
    "ledger_writes",
    "shared_rate",
]


def run_scenario(name: str) -> tuple[dict[str, Any], float, int]:
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.scenarios", name, str(DATA)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench scenario {name} failed:\n{output[-3000:]}")
    line = next(x for x in output.splitlines() if x.startswith("BENCH-RESULT "))
    return json.loads(line.removeprefix("BENCH-RESULT ")), wall, usage.ru_maxrss


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if value < 100 else f"{value:,.1f}"
    if isinstance(value, list):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {fmt(v)}" for k, v in value.items()) + "}"
    return str(value)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    wanted = sys.argv[1:] or SCENARIOS
    results: dict[str, Any] = {}
    for name in wanted:
        print(f"running {name} ...", flush=True)
        figures, wall, rss = run_scenario(name)
        parts = figures if name == "e2e_ugiftme" else {name: figures}
        for part, data in parts.items():
            data.setdefault("peak_rss_kib", rss)
            data["scenario_process_seconds"] = wall
            results[part] = data
    document = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "max_rss_kib_of_bench": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
        "scenarios": results,
    }
    (OUT / "latest.json").write_text(json.dumps(document, indent=2, default=str) + "\n")
    print()
    print(
        f"{'scenario':<14} {'seconds':>9} {'baseline s':>10} {'peak RSS MiB':>12}  {'met':<5} target"
    )
    for name, data in results.items():
        base = data.get("baseline_seconds")
        seconds = data.get("seconds", data["scenario_process_seconds"])  # chaos: no own timing
        print(
            f"{name:<14} {fmt(seconds):>9} {fmt(base) if base is not None else '-':>10}"
            f" {data['peak_rss_kib'] / 1024:>12.0f}  {'yes' if data['met'] else 'NO':<5} {data['target']}"
        )
        for key, value in data.items():
            if key in {"seconds", "baseline_seconds", "peak_rss_kib", "met", "target"}:
                continue
            print(f"    {key}: {fmt(value)}")
    print(f"\nwritten: {OUT / 'latest.json'}")


if __name__ == "__main__":
    main()
