"""Where the ledger lives: a fixed XDG folder by default, whatever the working directory,
and a refusal when a batch's reports exist but its ledger does not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from batcher.sandbox.server import running_sandbox
from tests.e2e.runkit import batcher, cli_env, make_rows, sandbox_orders, write_sheet

FAST = {"rate_limit": 100_000, "rate_window_seconds": 60, "async_delay_seconds": 0.05}


def test_default_state_dir_is_xdg_and_a_lost_ledger_is_refused(tmp_path: Path) -> None:
    with running_sandbox("ugiftme", **FAST) as sandbox:
        sheet = write_sheet(tmp_path / "cron.csv", make_rows(5))
        xdg = tmp_path / "xdg-state"
        env = cli_env(sandbox, tmp_path / "unused", XDG_STATE_HOME=str(xdg))
        del env["BATCHER_STATE_DIR"]
        elsewhere = tmp_path / "some-other-cwd"
        elsewhere.mkdir()
        reports = tmp_path / "reports"
        args = ["run", str(sheet), "--yes", "--report-dir", str(reports)]

        first = batcher(args, env, cwd=elsewhere)
        assert first.returncode == 0, first.stderr
        ledger = xdg / "batcher" / "ledger.sqlite"
        assert ledger.exists() and not (elsewhere / ".batcher").exists()
        assert f"ledger {ledger}" in first.stderr
        status = batcher(["status", "--json"], env, cwd=tmp_path)
        assert json.loads(status.stdout)["ledger"] == str(ledger)

        shutil.rmtree(xdg)
        refused = batcher(args, env, cwd=elsewhere)
        assert refused.returncode == 4, refused.stderr
        assert "has no record of it" in refused.stderr and "--ledger-lost" in refused.stderr
        assert len(sandbox_orders(sandbox)) == 5

        again = batcher([*args, "--ledger-lost"], env, cwd=elsewhere)
        assert again.returncode == 0, again.stderr
        assert len(sandbox_orders(sandbox)) == 5, "the provider deduplicated the same keys"


def test_an_old_dot_batcher_ledger_is_not_silently_ignored(tmp_path: Path) -> None:
    old = tmp_path / ".batcher"
    old.mkdir()
    (old / "ledger.sqlite").write_bytes(b"")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "x")}
    done = batcher(["status"], env, cwd=tmp_path)
    assert done.returncode == 4, done.stderr
    assert "old default" in done.stderr and "--state-dir .batcher" in done.stderr
