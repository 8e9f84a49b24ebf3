"""The rehearsal snippet in docs/operator.md (and the README) works as written in a fresh shell."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from tests.e2e.runkit import ROOT

SNIPPET = re.compile(r"<!-- rehearsal -->\n```sh\n(?P<code>.*?)```\n<!-- /rehearsal -->", re.S)


def snippet(path: Path) -> str:
    match = SNIPPET.search(path.read_text(encoding="utf-8"))
    assert match, f"no rehearsal snippet in {path}"
    return match["code"]


def port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_readme_and_guide_show_the_same_snippet() -> None:
    assert snippet(ROOT / "README.md") == snippet(ROOT / "docs" / "operator.md")


def test_the_rehearsal_snippet_runs_as_written(tmp_path: Path) -> None:
    if port_in_use(8765):
        pytest.skip("port 8765 (the snippet's sandbox port) is in use")
    # a fresh shell: no provider settings, no batcher settings, a clean home
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        ["bash", "--noprofile", "--norc", "-c", snippet(ROOT / "docs" / "operator.md")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "dry run: would send" in done.stderr
    assert "exit 0: done" in done.stderr
    assert "reconciliation: RECONCILED" in done.stderr
    assert list(tmp_path.iterdir()) == [], "the snippet leaves no ledger or reports behind"
