"""`batcher report` the command: the cyclic collector stays off from the listing to the
exit, the exit codes say the verdict, and the program ends through `finish`."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import batcher.cli.report as report_cli
from batcher.cli import cli
from batcher.core.errors import ExitCode
from batcher.reporting.reports import ReportResult
from batcher.reporting.verdicts import Reconciliation


def _result(tmp_path: Path, *, sheet_rows: int = 0, provider_error: str | None = None) -> Any:
    rec = Reconciliation(
        evidence="transactions",
        state_counts={},
        rows_in_sheet=0,
        sheet_rows=sheet_rows,
        currencies=[],
        checks={},
        wallet_lines=[],
        orphans=[],
        provider_error=provider_error,
    )
    return ReportResult(tmp_path / "w.xlsx", tmp_path / "f.csv", None, None, rec)


@pytest.fixture
def collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    try:
        yield
    finally:
        if not was:
            gc.disable()


def _invoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, result: Any) -> tuple[int, list[Any]]:
    seen: list[Any] = []

    def report_batch(*args: Any, **kwargs: Any) -> Any:
        seen.append(("collector", gc.isenabled()))
        return result

    real_finish = getattr(report_cli, "finish", None)

    def finish(code: int) -> Any:
        seen.append(("finish", code, gc.isenabled()))
        assert real_finish is not None
        return real_finish(code)

    monkeypatch.setattr(report_cli, "report_batch", report_batch)
    monkeypatch.setattr(report_cli, "finish", finish, raising=False)
    out = CliRunner().invoke(
        cli,
        ["report", "b1", "--state-dir", str(tmp_path / "state")],
        catch_exceptions=False,
    )
    return out.exit_code, seen


def test_the_collector_is_off_while_the_report_is_made_and_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, collector_on: None
) -> None:
    code, seen = _invoke(tmp_path, monkeypatch, _result(tmp_path))
    assert code == 0
    # off while the report is made and until the end (`finish`): never walked again
    assert seen == [("collector", False), ("finish", 0, False)]
    assert gc.isenabled()  # as it was, once the command is done (here: a test's runner)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"sheet_rows": 0}, ExitCode.OK),
        ({"sheet_rows": 5}, ExitCode.SOME_FAILED),  # counts do not add up: MISMATCH
        ({"provider_error": "down"}, ExitCode.CANNOT_START),
    ],
)
def test_the_exit_code_says_the_verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kwargs: Any, expected: ExitCode
) -> None:
    code, seen = _invoke(tmp_path, monkeypatch, _result(tmp_path, **kwargs))
    assert code == int(expected)
    assert seen[-1][:2] == ("finish", int(expected))
