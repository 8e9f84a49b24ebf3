"""Ctrl-C and SIGTERM during `batcher run`.

- At the confirmation prompt: cancel at once (the prompt sees a KeyboardInterrupt).
- While sending: stop new sends; the request in flight finishes, the ledger
  records it, and the run writes a quick report and exits 3.
- A second signal: exit at once with 3. The ledger is safe: every write is a
  transaction, and a chunk is recorded as `sending` before it leaves, so the
  next run resolves it with the same key and bytes.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from batcher.cli.logs import Log
from batcher.core.errors import ExitCode


class StopSignals:
    def __init__(self, log: Log) -> None:
        self.log = log
        self.stop = threading.Event()
        self.prompting = False

    def handle(self, signum: int, frame: FrameType | None) -> None:
        # It may run inside a log line of this thread: it logs through the handler's
        # own ways (`Log.write_from_handler`), never `log.warning`, which would wait for
        # that line's lock forever.
        name = signal.Signals(signum).name
        if self.prompting:
            raise KeyboardInterrupt  # click.confirm turns it into Abort: cancelled
        if self.stop.is_set():
            self.log.write_before_exit(
                "ERROR",
                f"received {name} again: exiting now; the ledger is safe, rerun to continue",
            )
            os._exit(int(ExitCode.INCOMPLETE))  # immediate by request; see the module docstring
        self.stop.set()
        self.log.write_from_handler(
            "WARN",
            f"received {name}: sending no more orders; finishing the request in flight "
            "(send it again to exit at once)",
        )


@contextmanager
def stop_on_signals(log: Log) -> Iterator[StopSignals]:
    signals = StopSignals(log)
    previous = {s: signal.signal(s, signals.handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield signals
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
