"""`make demo`: start the local UGiftMe sandbox on a free port and run the nightly job against it.

It shows, in order: `auth`, `catalog`, `wallet`, `validate` on a clean and a broken
sheet, the full `run` over samples/recipients.xlsx, a rerun (which orders nothing),
and where the reports are. Each step is the real CLI in a subprocess, exactly as
an operator would type it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from batcher.sandbox.server import running_sandbox

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


def step(title: str, args: list[str], env: dict[str, str], *, expect: set[int]) -> int:
    print(f"\n\033[1m== {title}\033[0m\n$ batcher {shlex.join(args)}", flush=True)
    code = subprocess.call([sys.executable, "-m", "batcher", *args], env=env, cwd=ROOT)
    if code not in expect:
        print(f"demo: step {title!r} exited {code}, expected {sorted(expect)}", file=sys.stderr)
        sys.exit(1)
    return code


def main() -> None:
    report_dir = ROOT / "reports" / "demo"
    # Each demo starts from a fresh ledger, so an earlier demo's reports would look
    # like a lost ledger to `batcher run`: they are the demo's own, and replaced.
    shutil.rmtree(report_dir, ignore_errors=True)
    # The ledger holds recipient data: it lives only as long as the demo.
    with tempfile.TemporaryDirectory(prefix="batcher-demo-state-") as state:
        tour(Path(state), report_dir)


def _cli_env(state_dir: Path, **sandbox: str) -> dict[str, str]:
    """The CLI's environment for a sandbox: its credentials, the demo's ledger, no config."""
    env = {**os.environ, **sandbox, "BATCHER_STATE_DIR": str(state_dir)}
    env.pop("BATCHER_CONFIG", None)  # the operator's batcher.toml must not steer the demo
    return env


def tour(state_dir: Path, report_dir: Path) -> None:
    with running_sandbox("ugiftme", async_delay_seconds=0.3) as sandbox:
        print(f"UGiftMe sandbox running at {sandbox.base_url}")
        env = _cli_env(
            state_dir, UGIFTME_API_KEY=sandbox.api_key, UGIFTME_BASE_URL=sandbox.base_url
        )
        step("check the API key", ["auth"], env, expect={0})
        step("browse the catalog (GBP)", ["catalog", "--currency", "GBP"], env, expect={0})
        step("wallet balances", ["wallet"], env, expect={0})
        report = ["--report-dir", str(report_dir)]
        step(
            "validate a clean sheet",
            ["validate", "samples/recipients.xlsx", *report],
            env,
            expect={0},
        )
        step(
            "validate a sheet with errors (exit 2 is expected)",
            ["validate", "samples/recipients-with-errors.xlsx", *report],
            env,
            expect={2},
        )
        run = ["run", "samples/recipients.xlsx", "--batch", "demo-nightly", "--yes", *report]
        step("the nightly run", run, env, expect={0})
        step("rerun: nothing is ordered twice", run, env, expect={0})
        step("status from the ledger", ["status", "demo-nightly"], env, expect={0})
        step("wallet after the run", ["wallet"], env, expect={0})
    gifq_demo(state_dir, report_dir)
    print(f"\nThe demo ledger in {state_dir} is deleted now; the reports stay under {report_dir}.")
    for batch in ("demo-gifq-orders", "demo-gifq-payouts", "demo-nightly"):
        out = report_dir / batch
        print(f"\n{batch}:")
        print(f"  summary:        {out / 'summary.json'}")
        print(f"  rows:           {out / 'rows.csv'}")
        workbook = out / "reconciliation.xlsx"
        if workbook.exists():
            print(f"  reconciliation: {workbook}")


def gifq_demo(state_dir: Path, report_dir: Path) -> None:
    """The same pipeline against the second provider: single orders, then payouts."""
    with running_sandbox("gifq", async_delay_seconds=0.2) as sandbox:
        print(f"\nGIFQ sandbox running at {sandbox.base_url}")
        env = _cli_env(state_dir, GIFQ_API_TOKEN=sandbox.api_key, GIFQ_BASE_URL=sandbox.base_url)
        gifq = ["--provider", "gifq"]
        report = ["--report-dir", str(report_dir)]
        step("GIFQ: check the token", ["auth", *gifq], env, expect={0})
        step("GIFQ: wallet balances", ["wallet", *gifq], env, expect={0})
        orders = ["run", "samples/gifq-orders.csv", *gifq, "--batch", "demo-gifq-orders", "--yes"]
        step("GIFQ: orders, some paid from another wallet", [*orders, *report], env, expect={0})
        payouts = ["run", "samples/gifq-payouts.csv", *gifq, "--payouts", "--campaign", "101",
                   "--expires-in-days", "30", "--batch", "demo-gifq-payouts", "--yes"]  # fmt: skip
        step("GIFQ: payouts, recipients choose their card", [*payouts, *report], env, expect={0})


if __name__ == "__main__":
    main()
