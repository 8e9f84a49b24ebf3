"""`batcher validate` and `batcher run` take one validation path (batcher.execute.check)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import batcher.execute.check
import batcher.execute.run
import batcher.services
from batcher.cli import cli
from batcher.sandbox.server import running_sandbox
from tests.e2e.runkit import ROOT, cli_env, sandbox_orders
from tests.e2e.runkit import batcher as run_cli

ERRORS_SHEET = ROOT / "samples" / "recipients-with-errors.xlsx"


def test_validate_and_run_write_the_same_errors(tmp_path: Path) -> None:
    with running_sandbox("ugiftme") as sandbox:
        env = cli_env(sandbox, tmp_path / "state")
        checked = run_cli(["validate", str(ERRORS_SHEET), "--report-dir", str(tmp_path / "v")], env)
        assert checked.returncode == 2, checked.stderr
        ran = run_cli(
            [
                "run",
                str(ERRORS_SHEET),
                "--yes",
                "--batch",
                "errs",
                "--report-dir",
                str(tmp_path / "r"),
            ],
            env,
        )
        assert ran.returncode == 2, ran.stderr
        assert "Traceback" not in ran.stderr + checked.stderr
        assert not sandbox_orders(sandbox), "a sheet that failed validation was ordered"
        from_validate = (tmp_path / "v" / ERRORS_SHEET.stem / "validation.csv").read_bytes()
        from_run = (tmp_path / "r" / "errs" / "validation.csv").read_bytes()
        assert from_validate == from_run


def test_both_commands_call_check_sheet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = batcher.execute.check.check_sheet

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(str(args[1]))
        return real(*args, **kwargs)

    monkeypatch.setattr(batcher.execute.check, "check_sheet", spy)
    monkeypatch.setattr(batcher.execute.run, "check_sheet", spy)
    monkeypatch.setattr(batcher.services, "check_sheet", spy)
    with running_sandbox("ugiftme") as sandbox:
        env = {"UGIFTME_API_KEY": sandbox.api_key, "UGIFTME_BASE_URL": sandbox.base_url}
        runner = CliRunner()
        report = ["--report-dir", str(tmp_path / "r")]
        first = runner.invoke(cli, ["validate", str(ERRORS_SHEET), *report], env=env)
        second = runner.invoke(
            cli,
            ["run", str(ERRORS_SHEET), "--yes", "--state-dir", str(tmp_path / "s"), *report],
            env=env,
        )
    assert (first.exit_code, second.exit_code) == (2, 2), (first.output, second.output)
    assert calls == [str(ERRORS_SHEET), str(ERRORS_SHEET)]
