"""Every hostile corpus file through the real CLI: `validate` and `run` agree, nothing is
ordered from a file that fails, and no file gives a traceback or a hang."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batcher.sandbox.server import running_sandbox
from tests.e2e.runkit import batcher, cli_env, sandbox_orders

DATA = Path(__file__).resolve().parents[1] / "data"


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("make_hostile_cli", DATA / "make_hostile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


FILES = _generator().FILES


def cli_flags(options: dict[str, Any]) -> list[str]:
    """The read_sheet keywords of a corpus case, as the CLI spells them."""
    flags: list[str] = []
    for name, value in options.items():
        if name == "mapping":
            for field, header in value.items():
                flags += ["--map", f"{field}={header}"]
        elif name == "sheet":
            flags += ["--sheet", value]
        elif name == "skip_hidden" and value:
            flags.append("--skip-hidden")
        else:
            raise AssertionError(f"no CLI flag for {name}")
    return flags


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Any]:
    with running_sandbox("ugiftme") as running:
        yield running


@pytest.mark.parametrize("name", sorted(FILES))
def test_validate_and_run_agree(sandbox: Any, tmp_path: Path, name: str) -> None:
    path = DATA / "hostile" / name
    flags = cli_flags(FILES[name][1].options)
    env = cli_env(sandbox, tmp_path / "state")
    before = len(sandbox_orders(sandbox))
    checked = batcher(
        ["validate", str(path), *flags, "--report-dir", str(tmp_path / "v")], env, timeout=60
    )
    ran = batcher(
        ["run", str(path), "--yes", "--batch", "corpus", *flags,
         "--report-dir", str(tmp_path / "r")],
        env,
        timeout=60,
    )  # fmt: skip
    for done in (checked, ran):
        assert "Traceback" not in done.stderr + done.stdout, done.stderr
        assert done.returncode in (0, 1, 2, 3, 4), done.returncode  # never a native abort
    if checked.returncode != 0:
        assert ran.returncode == checked.returncode, (checked.stderr, ran.stderr)
        assert len(sandbox_orders(sandbox)) == before, "a file that failed validation was ordered"
    validated = tmp_path / "v" / path.stem / "validation.csv"
    run_errors = tmp_path / "r" / "corpus" / "validation.csv"
    if validated.exists() and run_errors.exists():
        assert validated.read_bytes() == run_errors.read_bytes()


def test_a_fifo_is_refused_by_both_commands_without_hanging(sandbox: Any, tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "sheet.csv"
    os.mkfifo(fifo)
    env = cli_env(sandbox, tmp_path / "state")
    for command in (["validate", str(fifo)], ["run", str(fifo), "--yes"]):
        done = batcher([*command, "--report-dir", str(tmp_path / "r")], env, timeout=30)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
