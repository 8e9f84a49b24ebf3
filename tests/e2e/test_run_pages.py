"""The end of `batcher run` (exit code, summary.json, rows.csv, the report) reads the
batch's rows a page at a time: it never holds them all (a million would be 1.5 GB)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from openpyxl import load_workbook

from batcher.config import provider_settings
from batcher.core.errors import ExitCode
from batcher.execute.run import BatchOptions, run_batch
from batcher.execute.runner import Runner, RunStats
from batcher.ledger.store import Ledger, RowRecord
from batcher.reporting import row_source
from batcher.sandbox.server import running_sandbox
from tests.e2e.runkit import ConfirmingUI, make_rows, write_sheet

PAGE = 4
ROWS = 23


def test_the_end_of_a_run_reads_the_rows_a_page_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ended: list[bool] = []
    pages: list[int] = []
    real_execute, real_pages, real_rows = Runner.execute, Ledger.rows_in_pages, Ledger.rows

    def execute(runner: Runner) -> RunStats:
        stats = real_execute(runner)
        ended.append(True)
        return stats

    def rows_in_pages(
        ledger: Ledger, batch: str, keys: Sequence[str], page: int = 5_000
    ) -> Iterator[list[RowRecord]]:
        for rows in real_pages(ledger, batch, keys, page):
            if ended:
                pages.append(len(rows))
            yield rows

    def rows(ledger: Ledger, *args: Any, **kwargs: Any) -> list[RowRecord]:
        assert not ended, "the end of the run read every row of the batch at once"
        return real_rows(ledger, *args, **kwargs)

    monkeypatch.setattr(Runner, "execute", execute)
    monkeypatch.setattr(Ledger, "rows_in_pages", rows_in_pages)
    monkeypatch.setattr(Ledger, "rows", rows)
    monkeypatch.setattr(row_source, "ROW_PAGE", PAGE)
    with running_sandbox("ugiftme", rate_limit=100_000, async_delay_seconds=0.05) as sandbox:
        sheet = write_sheet(tmp_path / "paged.csv", make_rows(ROWS))
        settings = provider_settings(
            "ugiftme", base_url=sandbox.base_url, environ={"UGIFTME_API_KEY": sandbox.api_key}
        )
        options = BatchOptions(sheet=sheet, state_dir=tmp_path / "s", report_dir=tmp_path / "r")
        result = run_batch(settings, options, ConfirmingUI())
    assert result.exit_code == ExitCode.OK
    assert ended and pages and max(pages) <= PAGE
    out = tmp_path / "r" / "paged"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows_total"] == ROWS and summary["by_state"]["succeeded"] == ROWS
    assert summary["reconciliation"]["verdict"] == "RECONCILED"
    with (out / "rows.csv").open(newline="", encoding="utf-8") as fh:
        lines = list(csv.DictReader(fh))
    assert [int(r["source_row"]) for r in lines] == list(range(2, ROWS + 2)), "sheet order"
    orders = load_workbook(out / "reconciliation.xlsx")["Orders"]
    assert [r[0] for r in orders.iter_rows(min_row=2, values_only=True)] == list(range(2, ROWS + 2))
