"""Unit tests of the operator-facing pieces: log lines, progress counts, the column
report, the state folder default and notification delivery."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from batcher.cli.logs import Log, library_warnings
from batcher.cli.progress import ConsoleListener, Counter
from batcher.core.errors import ConfigError
from batcher.execute.events import POLL, SUBMIT, Retry, RunStart
from batcher.services import check_notify_url, default_state_dir
from batcher.transport.notify import send_notification, slack_payload


def test_progress_never_exceeds_its_total() -> None:
    counter = Counter(770)
    counter.add(500)
    counter.add(320)  # a resumed run settles rows an earlier run sent
    assert (counter.done, str(counter)) == (770, "770/770")
    counter.add(-5)
    assert counter.done == 770


def test_listener_logs_retries_and_progress(capsys: pytest.CaptureFixture[str]) -> None:
    log = Log("text", batch="nightly")
    listener = ConsoleListener(log, live=False, quiet_seconds=3600)
    listener.run_started(RunStart("nightly", "20261204T020001Z-1a2b3c", "s.csv", "ab" * 32,
                                  "ugiftme", "acct", "/var/lib/batcher/ledger.sqlite"))  # fmt: skip
    listener.phase(SUBMIT, 10)
    listener.phase(POLL, 10)
    listener.submitted(10)
    listener.advance(8)
    listener.advance(8)
    listener.retrying(Retry("b1-" + "c" * 40, 2, 8, "cannot connect", 1.25))
    assert listener.progress_line() == "rows sent 10/10; rows settled 10/10"
    listener.stop()
    lines = capsys.readouterr().err.splitlines()
    pattern = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (INFO|WARN) +batch=nightly "
                         r"run=20261204T020001Z-1a2b3c \S")  # fmt: skip
    assert all(pattern.match(line) for line in lines), lines
    assert "ledger /var/lib/batcher/ledger.sqlite" in lines[0]
    assert any("retry 3/8 with the same key in 1.2s" in line and "WARN" in line for line in lines)


def test_json_log_lines_escape_control_characters(capsys: pytest.CaptureFixture[str]) -> None:
    log = Log("json", batch="b")
    log.bind(run_id="r1")
    log.warning("cell \x1b[2J text", chunk="k")
    (line,) = capsys.readouterr().err.splitlines()
    record = json.loads(line)
    assert (record["level"], record["batch"], record["run"], record["chunk"]) == (
        "WARN", "b", "r1", "k",
    )  # fmt: skip
    assert "\x1b" not in line and record["msg"] == "cell \x1b[2J text"


def test_default_state_dir() -> None:
    assert default_state_dir({}, {"XDG_STATE_HOME": "/x"}) == Path("/x/batcher")
    assert default_state_dir({}, {"HOME": "/home/op"}) == Path("/home/op/.local/state/batcher")
    assert default_state_dir({"state_dir": "/srv/s"}, {"XDG_STATE_HOME": "/x"}) == Path("/srv/s")
    with pytest.raises(ConfigError):
        default_state_dir({"state_dir": 3}, {})


def test_notify_urls() -> None:
    assert check_notify_url("https://hooks.example.com/x") == "https://hooks.example.com/x"
    assert check_notify_url("http://127.0.0.1:9/x")
    for bad in ("http://hooks.example.com/x", "ftp://h/x", "https://u:p@h/x", "nonsense"):
        with pytest.raises(ConfigError) as caught:
            check_notify_url(bad)
        assert "p@h" not in str(caught.value)


def test_notification_retries_then_reports_without_raising() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(503 if len(seen) < 3 else 200)

    payload = slack_payload({"batch": "b", "note": "key SECRET-KEY-1"}, "batcher b: exit 0", [])
    delivery = send_notification("https://hooks.example.com/T/B/x", payload,
                                 secrets=("SECRET-KEY-1",),
                                 transport=httpx.MockTransport(handler), sleep=lambda _: None)  # fmt: skip
    assert (delivery.delivered, delivery.attempts, delivery.detail) == (True, 3, "HTTP 200")
    assert seen[0]["text"] == "batcher b: exit 0" and "SECRET-KEY-1" not in json.dumps(seen)

    refused = send_notification(
        "https://hooks.example.com/T/B/x", payload,
        transport=httpx.MockTransport(lambda r: httpx.Response(404)), sleep=lambda _: None,
    )  # fmt: skip
    assert (refused.delivered, refused.attempts, refused.detail) == (False, 1, "HTTP 404")


def test_library_warnings_become_log_lines(capsys: pytest.CaptureFixture[str]) -> None:
    log = Log("text", batch="b")
    with library_warnings(log):
        logging.getLogger("batcher.providers.gifq").warning("status %r unknown", "odd")
    (line,) = capsys.readouterr().err.splitlines()
    assert re.match(r"^\S+Z WARN  batch=b run=- status 'odd' unknown$", line), line
