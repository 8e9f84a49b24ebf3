"""--notify: the run's summary reaches a local webhook sink; a failing sink never
changes the exit code, and neither the API key nor the webhook's secret path leaks."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from batcher.sandbox.server import running_sandbox
from tests.e2e.runkit import batcher, cli_env, make_rows, write_sheet
from tests.e2e.test_operator_run import check_run_document, parse_log

FAST = {"rate_limit": 100_000, "rate_window_seconds": 60, "async_delay_seconds": 0.05}
SECRET_PATH = "/services/T0000/B0000/s3cr3t-webhook-token"


@contextmanager
def sink(status: int) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A webhook on 127.0.0.1 that records each JSON body and answers `status`."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}{SECRET_PATH}", received
    finally:
        server.shutdown()
        server.server_close()


def test_notification_carries_the_summary_and_a_failing_sink_changes_nothing(
    tmp_path: Path,
) -> None:
    with running_sandbox("ugiftme", **FAST) as sandbox:
        sheet = write_sheet(tmp_path / "notify.csv", make_rows(8))
        env = cli_env(sandbox, tmp_path / "state")
        args = ["run", str(sheet), "--yes", "--report-dir", str(tmp_path / "reports")]

        with sink(200) as (url, received):
            ok = batcher([*args, "--notify", url], env)
        assert ok.returncode == 0, ok.stderr
        (message,) = received
        assert message["text"].startswith("batcher notify: exit 0")
        assert message["blocks"][0]["type"] == "header"
        summary = message["batcher"]
        assert summary["schema"] == "batcher.run/1"
        assert summary["by_state"]["succeeded"] == 8 and "GBP" in summary["totals_by_currency"]
        assert sandbox.api_key not in json.dumps(message)
        assert "notified 127.0.0.1" in ok.stderr and SECRET_PATH not in ok.stderr

        with sink(500) as (url, received):
            failing = batcher([*args, "--notify", url], env)
        assert failing.returncode == 0, failing.stderr
        assert len(received) == 3, "retried with backoff"
        assert "could not notify 127.0.0.1 after 3 attempt(s) (HTTP 500)" in failing.stderr
        assert SECRET_PATH not in failing.stderr

        # nothing listening at all: still the run's own exit code
        with sink(200) as (url, _):
            closed = url
        gone = batcher([*args, "--notify", closed], env)
        assert gone.returncode == 0 and "could not notify" in gone.stderr


def test_a_run_that_cannot_start_still_notifies(tmp_path: Path) -> None:
    with running_sandbox("ugiftme", **FAST) as sandbox:
        env = cli_env(sandbox, tmp_path / "state", UGIFTME_API_KEY="wrong-key-0000")
        sheet = write_sheet(tmp_path / "denied.csv", make_rows(2))
        with sink(200) as (url, received):
            done = batcher(
                ["run", str(sheet), "--yes", "--report-dir", str(tmp_path / "r"), "--notify", url],
                env,
            )
        assert done.returncode == 4, done.stderr
        log = parse_log(done.stderr)  # cron logs stay parseable to the last line
        errors = [line["msg"] for line in log if line["level"] == "ERROR"]
        assert len(errors) == 1 and errors[0].startswith("exit 4: cannot start: ")
        assert log[-1]["msg"] == "notified 127.0.0.1 (HTTP 200)"
        (message,) = received
        check_run_document(message["batcher"])
        assert message["batcher"]["exit_code"] == 4
        assert message["batcher"]["outcome"] == "cannot start"
        assert "wrong-key-0000" not in json.dumps(message)
