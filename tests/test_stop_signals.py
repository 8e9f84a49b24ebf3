"""Ctrl-C and SIGTERM arriving while the process writes a log line.

A signal handler runs in the main thread between any two of its steps, also inside
`Log.write`, which holds the log's lock: a handler that logged the usual way waited
for that lock forever (a `batcher run` stopped while saying that recovery waits hung
until killed). Here the signal is delivered from inside a write, as it was then.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

import pytest

from batcher.cli import logs, signals
from batcher.cli.logs import Log
from batcher.cli.signals import StopSignals


def _writing_when_signalled(
    monkeypatch: pytest.MonkeyPatch, deliver: Callable[[], None]
) -> list[str]:
    """Every line echoed; `deliver` runs inside the first one's write, once."""
    written: list[str] = []

    def echo(line: str, err: bool = False) -> None:
        if not written:
            written.append(line)
            deliver()  # the signal comes while this line is being written
            return
        written.append(line)

    monkeypatch.setattr(logs, "echo", echo)
    return written


def _in_a_thread(work: Callable[[], Any], seconds: float = 10.0) -> bool:
    """Did `work` return within `seconds`? (A deadlock would hold the test for good.)"""
    done = threading.Event()

    def run() -> None:
        work()
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done.wait(seconds)


def test_a_stop_signal_inside_a_log_line_stops_and_says_so_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = Log("plain")
    stop = StopSignals(log)
    written = _writing_when_signalled(monkeypatch, lambda: stop.handle(signal.SIGTERM, None))
    assert _in_a_thread(lambda: log.info("recovery: waiting up to 60 s")), "deadlocked"
    assert stop.stop.is_set()
    _until(lambda: len(written) == 2)
    assert written[0] == "recovery: waiting up to 60 s"
    assert written[1:] == [
        "warn: received SIGTERM: sending no more orders; finishing the request in flight "
        "(send it again to exit at once)"
    ], "said once, after the line it came inside"


def test_a_second_signal_inside_a_log_line_exits_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = Log("plain")
    stop = StopSignals(log)
    stop.stop.set()  # the first came before
    exits: list[int] = []

    class Exited(Exception):
        pass

    def exit_now(code: int) -> None:
        exits.append(code)
        raise Exited

    monkeypatch.setattr(signals.os, "_exit", exit_now)

    def deliver() -> None:
        with pytest.raises(Exited):
            stop.handle(signal.SIGINT, None)

    _writing_when_signalled(monkeypatch, deliver)
    assert _in_a_thread(lambda: log.info("a line"), seconds=5.0), "deadlocked"
    assert exits == [3]


def _until(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    """Wait for the handler's thread to write its line (or give up: the test says)."""
    pause = threading.Event()
    for _ in range(int(seconds / 0.01)):
        if predicate():
            return
        pause.wait(0.01)
