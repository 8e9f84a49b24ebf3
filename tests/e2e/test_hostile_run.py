"""Hostile environment, end to end: the real CLI against a real sandbox over HTTP."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from batcher.sandbox.server import running_sandbox
from tests.e2e.runkit import batcher, cli_env, make_rows, sandbox_orders, write_sheet


@pytest.fixture(scope="module")
def sandbox():  # type: ignore[no-untyped-def]
    with running_sandbox("ugiftme") as running:
        yield running


@pytest.mark.parametrize(
    ("blocked", "named"), [("reports", "--report-dir"), ("state", "state folder")]
)
def test_a_folder_that_cannot_be_written_orders_nothing(  # type: ignore[no-untyped-def]
    sandbox, tmp_path: Path, blocked: str, named: str
) -> None:
    """A doomed write is found before the first send: a file where a folder must go."""
    sheet = write_sheet(tmp_path / f"doomed-{blocked}.csv", make_rows(3, prefix=f"DOOM{blocked}"))
    (tmp_path / blocked).write_text("not a folder")
    folders = {"reports": tmp_path / "reports", "state": tmp_path / "state"}
    folders[blocked] = folders[blocked] / "sub"
    before = len(sandbox_orders(sandbox))
    done = batcher(
        ["run", str(sheet), "--yes", "--report-dir", str(folders["reports"])],
        cli_env(sandbox, folders["state"]),
    )
    assert done.returncode == 4, done.stderr
    assert "nothing was sent" in done.stderr and named in done.stderr
    assert "Traceback" not in done.stderr
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


@pytest.mark.parametrize("fault", ["reject_item", "async_fail"])
def test_a_provider_that_echoes_the_key_leaks_it_nowhere(tmp_path: Path, fault: str) -> None:
    with running_sandbox("ugiftme") as echoing:
        echoing.control("PATCH", "/faults", json={fault: 1.0, "echoCredentials": True})
        sheet = write_sheet(tmp_path / "echo.csv", make_rows(4, prefix="ECHO"))
        reports = tmp_path / "reports"
        state = tmp_path / "state"
        env = cli_env(echoing, state)
        done = batcher(["run", str(sheet), "--yes", "--report-dir", str(reports)], env)
        assert done.returncode in (1, 3), done.stderr
        faults = echoing.control("GET", "/faults")
        assert faults["echoCredentials"] is True
        key = echoing.api_key.encode()
        assert key not in (done.stdout + done.stderr).encode()
        written = [p for p in [*reports.rglob("*"), *state.rglob("*")] if p.is_file()]
        assert any(p.name == "rows.csv" for p in written)
        assert any(p.suffix == ".xlsx" for p in written)
        leaks = [str(p) for p in written if key in _plain_bytes(p)]
        assert not leaks, f"the API key reached {leaks}"
        rows = (reports / "echo" / "rows.csv").read_text()
        assert "***" in rows, "the provider's echoed text should be kept, with the key blanked"


def _plain_bytes(path: Path) -> bytes:
    """A file's bytes, with an XLSX's compressed parts unpacked so a search can see them."""
    if path.suffix == ".xlsx":
        with zipfile.ZipFile(path) as archive:
            return b"".join(archive.read(name) for name in archive.namelist())
    return path.read_bytes()
