"""What the operator sees while a run works: a live display on a TTY, log lines otherwise.

On a TTY, `rich` draws one progress bar per phase (submit, poll, reconcile); it
redraws in place and keeps log lines above the bars, which click's single bar
cannot. Without a TTY (cron, CI) every event is a log line, and a heartbeat
thread writes a progress line whenever a phase has been quiet for
`quiet_seconds`, so no phase longer than that is silent in the log.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from batcher.cli.logs import Log
from batcher.cli.render import column_lines
from batcher.execute.events import POLL, RECONCILE, SUBMIT, VALIDATE, Retry, RunStart
from batcher.intake.read import Sheet

#: what each phase counts, for the log lines
_UNITS = {SUBMIT: "rows sent", POLL: "rows settled"}
_STARTS = {SUBMIT: "sending", POLL: "to settle (polling the provider)"}


class Counter:
    """A count that never exceeds its total: a resumed run settles rows an earlier one sent."""

    def __init__(self, total: int) -> None:
        self.total = max(0, total)
        self.done = 0

    def add(self, n: int) -> None:
        self.done = min(self.total, self.done + max(0, n))

    def __str__(self) -> str:
        return f"{self.done}/{self.total}"


class ConsoleListener:
    """The run's listener for the CLI: implements RunListener and the hooks in events.py."""

    def __init__(
        self,
        log: Log,
        *,
        live: bool,
        mapping: Mapping[str, str] | None = None,
        quiet_seconds: float = 2.0,
    ) -> None:
        self.log = log
        self.mapping = dict(mapping or {})
        self.live = live
        self.quiet_seconds = quiet_seconds
        self.counters: dict[str, Counter] = {}
        self.phase_name: str | None = None
        self._phase_started = time.monotonic()
        self._display: Any = None  # rich.progress.Progress while live
        self._tasks: dict[str, Any] = {}
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self.paused = False  # while a person is answering the prompt

    # ------------------------------------------------------------------ RunListener

    def message(self, text: str) -> None:
        self.log.info(text)

    def advance(self, rows_settled: int) -> None:
        self._count(POLL, rows_settled)

    # ------------------------------------------------------------------ hooks

    def sheet_read(self, sheet: Sheet) -> None:
        """The column mapping, always, before anything is sent."""
        for level, text in column_lines(sheet, self.mapping):
            self.log.write(level, text)

    def run_started(self, start: RunStart) -> None:
        self.log.bind(batch=start.batch, run_id=start.run_id)
        self.log.info(
            f"run started: sheet {start.sheet} (sha256 {start.sheet_sha256[:16]}), provider "
            f"{start.provider}, account {start.account_id}, ledger {start.ledger}",
            sheet=start.sheet,
            sha256=start.sheet_sha256,
            provider=start.provider,
            account=start.account_id,
            ledger=start.ledger,
        )

    def phase(self, name: str, total: int) -> None:
        self.phase_name = name
        self._phase_started = time.monotonic()
        if name not in (RECONCILE, VALIDATE):
            self.counters[name] = Counter(total)
        if self.live:
            if name != VALIDATE:
                self._show_phase(name, total)
        elif name == RECONCILE:
            self.log.info("reconciling with the provider's orders and wallet")
        elif total:
            self.log.info(f"{_STARTS[name]}: {total} rows")
        self._start_heartbeat()

    def submitted(self, rows: int) -> None:
        self._count(SUBMIT, rows)

    def retrying(self, retry: Retry) -> None:
        self.log.warning(
            f"chunk {retry.chunk_key[:12]}: no definite answer ({retry.reason}); "
            f"retry {retry.attempt + 1}/{retry.max_attempts} with the same key in "
            f"{retry.delay_seconds:.1f}s",
            chunk=retry.chunk_key,
            reason=retry.reason,
            attempt=retry.attempt,
            delay_seconds=round(retry.delay_seconds, 3),
        )

    # ------------------------------------------------------------------ display

    def progress_line(self) -> str:
        parts = [f"{_UNITS[name]} {c}" for name, c in self.counters.items() if c.total]
        elapsed = f"{time.monotonic() - self._phase_started:.0f}s"
        if self.phase_name == RECONCILE:
            parts.append(f"reconciling for {elapsed}")
        if self.phase_name == VALIDATE:
            parts.append(f"checking the account and the sheet for {elapsed}")
        return "; ".join(parts) or f"{self.phase_name}: working for {elapsed}"

    def stop(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=1)
            self._heartbeat = None
        if self._display is not None:
            if RECONCILE in self._tasks:  # ended: show it done rather than spinning
                self._display.update(self._tasks[RECONCILE], total=1, completed=1)
            self._display.stop()
            self._display = None
            self.log.printer = None

    def _count(self, phase: str, n: int) -> None:
        counter = self.counters.get(phase)
        if counter is None:
            return
        counter.add(n)
        if self._display is not None and phase in self._tasks:
            self._display.update(self._tasks[phase], completed=counter.done)

    def _show_phase(self, name: str, total: int) -> None:
        if self._display is None:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            console = Console(stderr=True)
            self._display = Progress(
                SpinnerColumn(),
                TextColumn("{task.description:<10}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
            )
            self._display.start()
            self.log.printer = lambda line: console.print(line, markup=False, highlight=False)
        if name == RECONCILE:
            for task in self._tasks.values():  # sending and polling are over
                self._display.stop_task(task)
            self._tasks[name] = self._display.add_task(name, total=None)
        elif total:
            self._tasks[name] = self._display.add_task(name, total=total)

    def _start_heartbeat(self) -> None:
        if self.live or self._heartbeat is not None:
            return
        self._heartbeat = threading.Thread(target=self._beat, name="batcher-heartbeat", daemon=True)
        self._heartbeat.start()

    def _beat(self) -> None:
        while not self._stop.wait(0.25):
            quiet = time.monotonic() - self.log.last_write >= self.quiet_seconds
            if quiet and not self.paused:
                self.log.info(f"progress: {self.progress_line()}")
