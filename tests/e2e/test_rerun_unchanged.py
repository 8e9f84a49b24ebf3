"""A rerun that changes nothing keeps the last report (proven by its ledger stamp) and
points to it; any change to the ledger or the sheet's rows, or `batcher report`,
makes the next run write it again. Real CLI, real sandbox."""

from __future__ import annotations

from pathlib import Path

from batcher.sandbox.server import running_sandbox
from tests.e2e.runkit import batcher, cli_env, make_rows, read_summary, sandbox_orders, write_sheet

FAST = {"rate_limit": 100_000, "async_mode": False}
REPORT_FILES = ("reconciliation.xlsx", "failed_rows.csv", "rows.csv")


def _written(folder: Path) -> dict[str, int]:
    return {name: (folder / name).stat().st_mtime_ns for name in REPORT_FILES}


def test_an_unchanged_rerun_keeps_the_report_and_a_change_rewrites_it(tmp_path: Path) -> None:
    with running_sandbox("ugiftme", **FAST) as sandbox:
        rows = make_rows(12)
        sheet = write_sheet(tmp_path / "steady.csv", rows)
        reports = tmp_path / "r"
        env = cli_env(sandbox, tmp_path / "state")
        args = ["run", str(sheet), "--yes", "--report-dir", str(reports)]
        folder = reports / "steady"

        first = batcher(args, env)
        assert first.returncode == 0, first.stderr
        summary = read_summary(reports, "steady")
        assert summary["reconciliation"]["verdict"] == "RECONCILED"
        written = _written(folder)

        rerun = batcher(args, env)
        assert rerun.returncode == 0, rerun.stderr
        assert "nothing changed since the report of run " + summary["run_id"] in rerun.stderr
        assert _written(folder) == written  # not one report file rewritten
        kept = read_summary(reports, "steady")
        assert kept["run_id"] != summary["run_id"]
        assert kept["reconciliation"]["kept_from_run"] == summary["run_id"]
        assert kept["reconciliation"]["verdict"] == "RECONCILED"
        assert Path(kept["reconciliation"]["workbook"]) == folder / "reconciliation.xlsx"
        for figure in ("rows_total", "by_state", "totals_by_currency", "paid_orders"):
            assert kept[figure] == summary[figure], figure
        assert kept["requests"]["submits"] == 0 and len(sandbox_orders(sandbox)) == 12

        # Another column of one row changed: nothing to order, but the report shows it.
        rows[3]["Cost centre"] = "CC-moved"
        write_sheet(sheet, rows)
        edited = batcher(args, env)
        assert edited.returncode == 0, edited.stderr
        assert "nothing changed" not in edited.stderr
        rewritten = _written(folder)
        assert all(rewritten[n] != written[n] for n in REPORT_FILES)
        assert "kept_from_run" not in read_summary(reports, "steady")["reconciliation"]

        # `batcher report` rewrites the workbook itself: the next run cannot vouch for it.
        report = batcher(["report", "steady", "--report-dir", str(reports)], env)
        assert report.returncode == 0, report.stderr
        after_report = batcher(args, env)
        assert after_report.returncode == 0, after_report.stderr
        assert "nothing changed" not in after_report.stderr
        assert len(sandbox_orders(sandbox)) == 12
