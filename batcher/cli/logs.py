"""Log lines an on-call engineer can grep: one event per line on stderr.

``text`` (the default without a TTY)::

    2026-12-03T02:00:01.042Z INFO  batch=nightly run=20261203T020001Z-1a2b3c run started: ...

``json``: one JSON object per line with ``ts``, ``level``, ``batch``, ``run`` and
``msg`` (plus event fields). ``plain`` (the default on a TTY): the message alone,
for a person watching. Every line goes through `terminal.printable`, so cell text
inside a message cannot drive the terminal.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any

from batcher.cli.terminal import echo, printable

FORMATS = ("text", "json", "plain")
NO_ID = "-"  # before the ledger has given the run its id


def utc_stamp() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Log:
    """Writes events for one invocation; `bind` adds the batch and run id once known."""

    def __init__(self, fmt: str = "text", *, batch: str = NO_ID) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown log format {fmt!r}")
        self.fmt = fmt
        self.batch = batch
        self.run_id = NO_ID
        self.last_write = time.monotonic()
        # A rich live display owns the terminal while it runs; lines go through it then.
        self.printer: Callable[[str], None] | None = None
        self._lock = threading.Lock()  # the heartbeat thread logs too

    def bind(self, *, batch: str | None = None, run_id: str | None = None) -> None:
        self.batch = batch or self.batch
        self.run_id = run_id or self.run_id

    def info(self, message: str, **fields: Any) -> None:
        self.write("INFO", message, **fields)

    def warning(self, message: str, **fields: Any) -> None:
        self.write("WARN", message, **fields)

    def error(self, message: str, **fields: Any) -> None:
        self.write("ERROR", message, **fields)

    def write(self, level: str, message: str, **fields: Any) -> None:
        line = self.format(level, message, fields)
        with self._lock:
            self._emit(line)

    # A signal handler runs in the main thread between any two of its steps, so also
    # inside a write to stderr: inside `write`, holding the lock (not reentrant: waiting
    # for it there never ends), and inside the stream's own write (a reentrant write
    # raises). So a handler's line is written by a thread, or only while no line is.

    def write_from_handler(self, level: str, message: str) -> None:
        """A signal handler's line, written by a thread of its own as soon as no other
        line is being written (the handler returns at once)."""
        line = self.format(level, message, {})
        threading.Thread(target=self._emit_locked, args=(line,), name="batcher-log-line").start()

    def write_before_exit(self, level: str, message: str, *, wait: float = 0.2) -> None:
        """A signal handler's last line before it ends the process: written now when no
        line is being written; else by a thread of its own, given up to `wait` seconds
        (the line being written may be the handler's own thread's, which waits for it)."""
        line = self.format(level, message, {})
        if self._lock.acquire(blocking=False):
            try:
                with suppress(Exception):  # inside this thread's own stream write: lost
                    self._emit(line)
            finally:
                self._lock.release()
            return
        writer = threading.Thread(
            target=self._emit_locked, args=(line,), name="batcher-log-line", daemon=True
        )
        writer.start()
        writer.join(wait)

    def _emit_locked(self, line: str) -> None:
        with self._lock:
            self._emit(line)

    def _emit(self, line: str) -> None:
        self.last_write = time.monotonic()
        if self.printer is not None:
            self.printer(printable(line))
        else:
            echo(line, err=True)

    def format(self, level: str, message: str, fields: dict[str, Any]) -> str:
        if self.fmt == "json":
            record = {
                "ts": utc_stamp(),
                "level": level,
                "batch": self.batch,
                "run": self.run_id,
                "msg": message,
                **fields,
            }
            # ensure_ascii: a control character in a cell becomes \uXXXX, never a raw byte
            return json.dumps(record, ensure_ascii=True, default=str)
        if self.fmt == "plain":
            return message if level == "INFO" else f"{level.lower()}: {message}"
        return f"{utc_stamp()} {level:<5} batch={self.batch} run={self.run_id} {message}"


class _Forward(logging.Handler):
    """Library warnings (e.g. a provider status batcher does not know) as log lines."""

    def __init__(self, log: Log) -> None:
        super().__init__(logging.WARNING)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        level = "ERROR" if record.levelno >= logging.ERROR else "WARN"
        self.log.write(level, record.getMessage(), logger=record.name)


@contextmanager
def library_warnings(log: Log) -> Iterator[None]:
    """Route the `batcher` loggers' warnings into `log`, not Python's bare stderr fallback,
    so every line of a run's stderr has the same shape."""
    logger = logging.getLogger("batcher")
    handler = _Forward(log)
    logger.addHandler(handler)
    previous = logger.propagate
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = previous
