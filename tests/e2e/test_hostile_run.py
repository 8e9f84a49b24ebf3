"""Hostile environment, end to end: the real CLI against a real sandbox over HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest

from batcher.sandbox.server import running_sandbox
from tests.e2e.runkit import batcher, cli_env, make_rows, sandbox_orders, write_sheet


@pytest.fixture(scope="module")
def sandbox():  # type: ignore[no-untyped-def]
    with running_sandbox("ugiftme") as running:
        yield running


def test_report_dir_that_is_a_file_orders_nothing(sandbox, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sheet = write_sheet(tmp_path / "doomed.csv", make_rows(3, prefix="DOOM"))
    blocker = tmp_path / "reports"
    blocker.write_text("not a folder")
    before = len(sandbox_orders(sandbox))
    done = batcher(
        ["run", str(sheet), "--yes", "--report-dir", str(blocker / "sub")],
        cli_env(sandbox, tmp_path / "state"),
    )
    assert done.returncode == 4, done.stderr
    assert "nothing was sent" in done.stderr and "--report-dir" in done.stderr
    assert "Traceback" not in done.stderr
    assert len(sandbox_orders(sandbox)) == before


def test_state_dir_that_cannot_be_written_orders_nothing(sandbox, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sheet = write_sheet(tmp_path / "doomed2.csv", make_rows(3, prefix="DOOM2"))
    blocker = tmp_path / "state"
    blocker.write_text("not a folder")
    before = len(sandbox_orders(sandbox))
    done = batcher(
        ["run", str(sheet), "--yes", "--report-dir", str(tmp_path / "r")],
        cli_env(sandbox, blocker / "sub"),
    )
    assert done.returncode == 4, done.stderr
    assert "state folder" in done.stderr
    assert len(sandbox_orders(sandbox)) == before


@pytest.mark.parametrize("name", ["../../../escaped", "/tmp/escaped-batch", "a" * 300])
def test_batch_names_cannot_escape_the_report_dir(sandbox, tmp_path: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    sheet = write_sheet(tmp_path / "trav.csv", make_rows(2, prefix="TRAV"))
    work = tmp_path / "a" / "b" / "c"
    work.mkdir(parents=True)
    done = batcher(
        ["run", str(sheet), "--yes", "--batch", name, "--report-dir", str(work / "reports")],
        cli_env(sandbox, work / "state"),
    )
    assert done.returncode == 2, done.stderr
    assert "batch name" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/escaped-batch").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "trav.csv"]


def test_key_never_goes_to_a_host_that_only_looks_local(tmp_path: Path) -> None:
    sheet = write_sheet(tmp_path / "k.csv", make_rows(1, prefix="KEY"))
    env = {
        "UGIFTME_API_KEY": "sk-live-should-not-leak",
        "UGIFTME_BASE_URL": "http://127.attacker.example:9/api",
        "BATCHER_STATE_DIR": str(tmp_path / "s"),
    }
    done = batcher(["validate", str(sheet), "--report-dir", str(tmp_path / "r")], env, timeout=30)
    assert done.returncode == 4
    assert "plain http" in done.stderr
    assert "sk-live" not in done.stdout + done.stderr


def test_escape_sequences_in_cells_are_shown_not_run(sandbox, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rows = make_rows(2, prefix="ESC")
    rows[0]["Email"] = "evil\x1b[2J\x1b]0;pwned\x07@example.com"
    sheet = write_sheet(tmp_path / "esc.csv", rows)
    done = batcher(
        ["validate", str(sheet), "--report-dir", str(tmp_path / "r")],
        cli_env(sandbox, tmp_path / "state"),
    )
    assert done.returncode == 2
    out = done.stdout + done.stderr
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b[2J" in out
