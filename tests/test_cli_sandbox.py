"""`batcher sandbox serve` on a busy port: one clear line and exit 4, not uvicorn's errno."""

from __future__ import annotations

import socket
import subprocess
import sys

from tests.e2e.runkit import ROOT


def test_busy_port_is_a_clear_error() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "batcher", "sandbox", "serve", "--port", str(port),
             "--api-key", "k-0001"],
            cwd=ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    assert done.returncode == 4, done.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in done.stderr
    assert "Errno" not in done.stderr and "Traceback" not in done.stderr
