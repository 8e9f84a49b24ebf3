"""Bench scenario `e2e_webhooks`: the 20,000-row async UGiftMe run with webhooks on.

The sandbox sends signed events to a real `batcher listen` process; `batcher run`
settles from them and polls only as a fallback. Targets: wall time <= 1.15x the
submit-only lower bound (200 submits at 10 req/s), and <= 0.0105 calls per order.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def e2e_webhooks(data: Path) -> dict[str, Any]:
    from batcher.sandbox.server import running_sandbox
    from tests.bench.scenarios import HEADER, ROOT, _cli, sheet_rows

    rows, chunk, limit, window = 20_000, 100, 600, 60.0
    rate = limit / window
    path = data / "bench-20k-hooks.csv"
    if not path.exists():
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(HEADER)
            writer.writerows(sheet_rows(rows, seed=5))
    state, reports = data / "hooks-state", data / "hooks-reports"
    shutil.rmtree(state, ignore_errors=True)
    shutil.rmtree(reports, ignore_errors=True)
    state.mkdir(parents=True)
    secret_file = state / "webhook-secret"
    config = data / "hooks-batcher.toml"
    config.write_text(
        f'[webhooks]\nenabled = true\nsecret_file = "{secret_file}"\npoll_margin_seconds = 30\n'
    )
    port = _free_port()
    with running_sandbox(
        "ugiftme",
        rate_limit=limit,
        rate_window_seconds=window,
        async_mode=True,
        async_delay_seconds=0.5,
        webhook_time_scale=0.01,
        funding={"GBP": "10000000.00"},
    ) as sandbox:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("UGIFTME_", "BATCHER_"))},
            "UGIFTME_API_KEY": sandbox.api_key,
            "UGIFTME_BASE_URL": sandbox.base_url,
            "BATCHER_STATE_DIR": str(state),
            "BATCHER_CONFIG": str(config),
        }
        url = f"http://127.0.0.1:{port}/webhooks"
        _, _, code, stderr = _cli(
            ["webhooks", "subscribe", "--url", url, "--secret-file", str(secret_file)],
            env,
            data / "logs-hooks-subscribe",
        )
        if code != 0:
            raise RuntimeError(f"subscribe exited {code}: {stderr[-2000:]}")
        listen_log = (data / "logs-hooks-listen.txt").open("w")
        listener = subprocess.Popen(
            [sys.executable, "-m", "batcher", "listen", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=listen_log,
            stderr=subprocess.STDOUT,
        )
        try:
            for _ in range(400):
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).is_success:
                        break
                except httpx.HTTPError:
                    time.sleep(0.05)
            args = ["run", str(path), "--yes", "--chunk-size", str(chunk),
                    "--report-dir", str(reports)]  # fmt: skip
            wall, rss, code, stderr = _cli(args, env, data / "logs-hooks-run")
            if code != 0:
                raise RuntimeError(f"run exited {code}: {stderr[-2000:]}")
            stats = sandbox.control("GET", "/stats?log=false")
            orders = sandbox.control("GET", "/orders")["total"]
        finally:
            listener.terminate()
            listener.wait(10)
            listen_log.close()
    summary = json.loads((reports / path.stem / "summary.json").read_text())
    req = summary["requests"]
    submits, polls = req["submits"], req["polls"]
    lower_bound = (rows // chunk) / rate  # submit-only: one call per chunk
    calls = (submits + polls) / rows
    return {
        "rows": rows,
        "orders_created": orders,
        "seconds": wall,
        "peak_rss_kib": rss,
        "submits": submits,
        "polls": polls,
        "settled_by_event": req.get("settled_by_event"),
        "calls_per_order": calls,
        "all_http_calls": req.get("http_requests"),
        "sandbox_429s": stats["tooManyRequestsTotal"],
        "lower_bound_seconds": lower_bound,
        "wall_over_lower_bound": wall / lower_bound,
        # the run's own phase (resolve, submit, settle), without start-up, validation,
        # planning and the reports, which cost the same with or without webhooks
        "run_phase_seconds": req.get("run_seconds"),
        "run_phase_over_lower_bound": None
        if req.get("run_seconds") is None
        else req["run_seconds"] / lower_bound,
        "submit_phase_seconds": req.get("submit_phase_seconds"),
        "baseline": f"submit-only lower bound: {rows // chunk} submits at {rate:g} req/s",
        "baseline_seconds": lower_bound,
        "target": "wall <= 1.15x submit-only lower bound, <= 0.0105 calls/order",
        "met": orders == rows and wall <= 1.15 * lower_bound and calls <= 0.0105,
    }
