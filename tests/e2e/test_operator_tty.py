"""`batcher run` on a real terminal, driven through tmux: the live progress display,
and Ctrl-C at the confirmation prompt cancelling at once with nothing sent."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from batcher.sandbox.server import running_sandbox
from tests.e2e.runkit import (
    ROOT,
    batcher,
    cli_env,
    make_rows,
    sandbox_orders,
    wait_for,
    write_sheet,
)

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

FAST = {"rate_limit": 100_000, "rate_window_seconds": 60, "async_delay_seconds": 0.05}


class Pane:
    def __init__(self, socket: str, session: str) -> None:
        self.socket = socket
        self.session = session

    def tmux(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True
        )
        return done.stdout

    def text(self) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-S", "-200", "-t", self.session)

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", self.session, *keys)


@contextmanager
def terminal(command: list[str], env: dict[str, str]) -> Iterator[Pane]:
    """`command` in a 160x50 tmux pane; 'EXIT=<code>' is printed when it ends."""
    socket, session = f"batcher-test-{uuid.uuid4().hex[:8]}", "run"
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    script = f"cd {shlex.quote(str(ROOT))} && env -i {exports} {shlex.join(command)}; echo EXIT=$?; sleep 60"
    subprocess.run(
        ["tmux", "-L", socket, "new-session", "-d", "-s", session, "-x", "160", "-y", "50",
         "bash", "--noprofile", "--norc", "-c", script],
        check=True,
    )  # fmt: skip
    try:
        yield Pane(socket, session)
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True)


def tty_env(sandbox: object, state: Path) -> dict[str, str]:
    env = cli_env(sandbox, state)
    keep = {"PATH", "LANG", "LC_ALL", "PYTHONPATH", "UGIFTME_API_KEY", "UGIFTME_BASE_URL"}
    return {k: v for k, v in env.items() if k in keep or k.startswith("BATCHER_")} | {
        "TERM": "xterm-256color",
        "HOME": str(state.parent),
    }


def test_ctrl_c_at_the_prompt_cancels_at_once(tmp_path: Path) -> None:
    with running_sandbox("ugiftme", **FAST) as sandbox:
        sheet = write_sheet(tmp_path / "prompt.csv", make_rows(5))
        command = [sys.executable, "-m", "batcher", "run", str(sheet),
                   "--report-dir", str(tmp_path / "reports")]  # fmt: skip
        with terminal(command, tty_env(sandbox, tmp_path / "state")) as pane:
            assert wait_for(lambda: "send these orders?" in pane.text(), timeout=30), pane.text()
            pane.keys("C-c")
            # At once: waiting for nothing (no request timeout, no 60 s wait). The bound is
            # loose only for a loaded machine, where a process can stall for seconds.
            assert wait_for(lambda: "EXIT=" in pane.text(), timeout=15), pane.text()
            screen = pane.text()
        assert "EXIT=2" in screen, screen
        assert "cancelled at the confirmation prompt" in screen
        assert sandbox_orders(sandbox) == []


def test_live_progress_display_per_phase(tmp_path: Path) -> None:
    with running_sandbox("ugiftme", async_mode=True, **FAST) as sandbox:
        sheet = write_sheet(tmp_path / "live.csv", make_rows(40))
        command = [sys.executable, "-m", "batcher", "run", str(sheet), "--yes",
                   "--chunk-size", "4", "--report-dir", str(tmp_path / "reports")]  # fmt: skip
        with terminal(command, tty_env(sandbox, tmp_path / "state")) as pane:
            assert wait_for(lambda: "EXIT=" in pane.text(), timeout=60), pane.text()
            screen = pane.text()
        assert "EXIT=0" in screen, screen
        lines = screen.splitlines()
        assert any("submit" in line and "40/40" in line for line in lines), screen
        assert any("poll" in line and "40/40" in line for line in lines), screen
        assert any("reconcile" in line for line in lines), screen
        # on a TTY, lines are for a person: no timestamps or run ids
        assert not any(line.startswith("20") and " batch=" in line for line in lines), screen
        assert "reconciliation: RECONCILED" in screen


def test_no_at_the_prompt_leaves_released_rows_held(tmp_path: Path) -> None:
    """--release-held was persisted before the prompt: answering no still released the
    rows, and the next plain run ordered them."""
    with running_sandbox("ugiftme", **FAST) as sandbox:
        rows = [dict(r, Reference="") for r in make_rows(3, seed=17)]
        sheet = write_sheet(tmp_path / "held.csv", rows)
        state, reports = tmp_path / "state", tmp_path / "reports"
        env = cli_env(sandbox, state)
        args = ["run", str(sheet), "--yes", "--report-dir", str(reports)]
        assert batcher(args, env).returncode == 0
        write_sheet(sheet, [rows[0], dict(rows[1], Amount="42.42"), rows[2]])
        assert batcher(args, env).returncode == 5  # held: a possible duplicate
        command = [sys.executable, "-m", "batcher", "run", str(sheet), "--release-held",
                   "all", "--report-dir", str(reports)]  # fmt: skip
        with terminal(command, tty_env(sandbox, state)) as pane:
            assert wait_for(lambda: "send these orders?" in pane.text(), timeout=30), pane.text()
            pane.keys("n", "Enter")
            assert wait_for(lambda: "EXIT=" in pane.text(), timeout=10), pane.text()
            screen = pane.text()
        assert "EXIT=2" in screen, screen
        again = batcher(args, env)
        assert again.returncode == 5, again.stderr
        assert len(sandbox_orders(sandbox)) == 3, "a declined release was kept"
