"""`batcher --help` lists the commands without importing them, and lists them truly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest

from batcher.cli import _COMMANDS, cli
from tests.e2e.runkit import batcher, cli_env, make_rows, write_sheet

HEAVY = ("polars", "httpx", "openpyxl", "batcher.services", "batcher.cli.validate")


def test_help_lists_every_command_without_importing_one() -> None:
    script = (
        "import sys; from batcher.cli import cli\n"
        "try:\n    cli(['--help'], prog_name='batcher')\n"
        "except SystemExit:\n    pass\n"
        f"print('LOADED', sorted(m for m in sys.modules if m.startswith({HEAVY!r})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert "LOADED []" in result.stdout
    for name in _COMMANDS:
        assert f"\n  {name} " in result.stdout


#: what `batcher validate` of a CSV never needs: the workbook writer, the run path,
#: the XLSX reader, the live display (rich, which httpx's own CLI would pull in), the
#: ledger and reconciliation
NOT_FOR_CSV_VALIDATE = (
    "openpyxl",
    "rich",
    "pygments",
    "fastexcel",
    "batcher.execute.run",
    "batcher.execute.runner",
    "batcher.reporting.reports",
    "batcher.reporting.workbook",
    "batcher.intake.xlsx",
    "xml.etree",
    "email_validator",  # only for addresses the fast probe doubts; these ten are plain
    "batcher.ledger.store",
    "batcher.ledger.queue",
    "batcher.ledger.lock",
    "batcher.reporting.verdicts",
    "batcher.ledger.records",
    "batcher.ledger.backend",
    "sqlite3",
    # pydantic and the pydantic models were a sixth of the start-up: the domain models are
    # dataclasses and the settings hold keys in batcher.core.secrets.SecretStr
    "pydantic",
    "pydantic_core",
    "batcher.ledger.location",  # the ledger's URL: validate opens none
    "tomllib",  # only read when there is a batcher.toml
)


def _modules_after(args: list[str], env: dict[str, str]) -> tuple[int, list[str], str]:
    """Run `batcher ARGS` in a fresh interpreter; its exit code and the modules it loaded."""
    script = (
        "import sys\nfrom batcher.cli import cli\n"
        f"try:\n    cli({args!r}, prog_name='batcher')\n"
        "except SystemExit as exc:\n    code = exc.code\n"
        "print('LOADED', sorted(sys.modules))\nprint('EXIT', code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    loaded = next(x for x in result.stdout.splitlines() if x.startswith("LOADED "))
    code = next(x for x in result.stdout.splitlines() if x.startswith("EXIT "))
    names: list[str] = eval(loaded.removeprefix("LOADED "))  # a list literal we printed
    return int(code.removeprefix("EXIT ")), names, result.stderr


def test_validate_of_a_csv_loads_neither_the_run_path_nor_openpyxl_nor_rich(
    ugiftme_sandbox: Any, tmp_path: Path
) -> None:
    sheet = write_sheet(tmp_path / "ten.csv", make_rows(10))
    env = cli_env(ugiftme_sandbox, tmp_path / "state")
    code, loaded, stderr = _modules_after(
        ["validate", str(sheet), "--report-dir", str(tmp_path / "reports")], env
    )
    assert code == 0, stderr
    assert (tmp_path / "reports" / "ten" / "validation.csv").exists()
    assert "polars" in loaded and "httpx" in loaded  # it did read the sheet and ask the API
    heavy = sorted(
        m for m in loaded if any(m == n or m.startswith(f"{n}.") for n in NOT_FOR_CSV_VALIDATE)
    )
    assert heavy == []


def test_the_run_path_still_loads_through_the_front_door() -> None:
    """The names `batcher.services` re-exports lazily resolve to the real objects."""
    import batcher.services as services
    from batcher.execute.run import run_batch
    from batcher.transport.notify import send_notification

    assert services.run_batch is run_batch
    assert services.send_notification is send_notification
    for name in services.__all__:
        assert getattr(services, name) is not None
    with pytest.raises(AttributeError):
        _ = services.no_such_name  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", sorted(_COMMANDS))
def test_listed_help_line_is_the_commands_own(name: str) -> None:
    command = cli.get_command(click.Context(cli), name)
    assert command is not None
    assert _COMMANDS[name][1] == command.get_short_help_str(limit=1000)


@pytest.mark.parametrize("as_json", [False, True])
def test_validate_ends_at_once_with_everything_printed_and_written(
    ugiftme_sandbox: Any, tmp_path: Path, as_json: bool
) -> None:
    """`validate` skips the interpreter's teardown: nothing it prints or writes is lost,
    and its exit code is kept (0 valid, 2 invalid)."""
    rows = make_rows(12)
    rows[3]["Email"] = "not-an-address"
    sheet = write_sheet(tmp_path / "twelve.csv", rows)
    env = cli_env(ugiftme_sandbox, tmp_path / "state")
    args = ["validate", str(sheet), "--report-dir", str(tmp_path / "reports")]
    result = batcher([*args, "--json"] if as_json else args, env)
    assert result.returncode == 2, result.stderr
    folder = tmp_path / "reports" / "twelve"
    assert "not-an-address" in (folder / "validation.csv").read_text(encoding="utf-8")
    if as_json:
        document = json.loads(result.stdout)  # the whole document, flushed
        assert document["schema"] == "batcher.validate/1"
        assert json.loads((folder / "validation.json").read_text(encoding="utf-8")) == {
            k: v for k, v in document.items() if k != "funds_not_verified"
        }
    else:
        last = result.stdout.rstrip().splitlines()[-1]
        assert last == "Not ready: fix the errors and validate again. Nothing was ordered."

    good = write_sheet(tmp_path / "good.csv", make_rows(5))
    ok = batcher(["validate", str(good), "--report-dir", str(tmp_path / "reports")], env)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.rstrip().endswith("OK: every row is valid and funded.")


def test_the_collector_is_off_while_the_command_imports_and_on_when_it_runs() -> None:
    """`main` keeps the cyclic collector off while the command's modules load (they are
    all kept), then freezes them out of later collections and turns it back on."""
    script = (
        "import gc, sys\nimport batcher.cli as c\n"
        "seen = []\n"
        "class Probe:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'batcher.cli.validate':\n"
        "            seen.append(gc.isenabled())\n"
        "sys.meta_path.insert(0, Probe())\n"
        "sys.argv = ['batcher', 'validate', '--help']\n"
        "try:\n    c.main()\nexcept SystemExit:\n    pass\n"
        "print('DURING', seen, 'AFTER', gc.isenabled(), gc.get_freeze_count() > 0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert "DURING [False] AFTER True True" in result.stdout, result.stdout + result.stderr


def test_a_ledger_failure_is_still_named_with_the_database_check_loaded_late(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`handle_errors` imports the database check only when a command fails."""
    import sqlite3

    from batcher.cli.common import handle_errors
    from batcher.core.errors import ExitCode

    @handle_errors
    def broken() -> None:
        raise sqlite3.DatabaseError("database disk image is malformed")

    with pytest.raises(SystemExit) as exited:
        broken()
    assert exited.value.code == int(ExitCode.CANNOT_START)
    assert "the ledger could not be read or written" in capsys.readouterr().err


def test_the_run_command_starts_without_the_workbook_modules_and_warms_them_aside() -> None:
    """`batcher run` imports openpyxl on a side thread while it sends, not before its
    first request (about a tenth of a second), and the warmed modules are the ones
    the run's end writes the workbook with."""
    probe = (
        "import sys, threading\n"
        "import batcher.cli.run, batcher.execute.run as run\n"
        "print('openpyxl' in sys.modules)\n"
        "run._warm_report_imports()\n"
        "[t.join() for t in threading.enumerate() if t.name == 'batcher-report-imports']\n"
        "import batcher.reporting.reports as reports\n"
        "print(all(m in sys.modules for m in (*run.REPORT_MODULES, 'openpyxl')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert out == ["False", "True"]
