"""`batcher sandbox serve --provider gifq` in a subprocess: URL, token, limit, controls."""

from __future__ import annotations

import os
import subprocess

import httpx
import pytest
from click.testing import CliRunner
from sandbox_kit import read_line, start_serve, stop

from batcher.cli.sandbox import sandbox
from batcher.sandbox.jsonio import decode_json

URL_LINE = "GIFQ sandbox listening on "


def _start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return start_serve("--provider", "gifq", *args, env=env)


def test_serve_gifq_with_the_token_from_the_environment() -> None:
    env = {**os.environ, "GIFQ_API_TOKEN": "env-token"}
    proc = _start("--fund", "GBP=25.50", "--fx-rate", "GBP/USD=1.3", "--seed", "4", env=env)
    try:
        base_url = read_line(proc).removeprefix(URL_LINE)
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/api")
        with httpx.Client(
            base_url=base_url, headers={"X-Api-Token": "env-token"}, trust_env=False
        ) as client:
            balances = {b["currency"]: b["amount"] for b in client.get("/balances").json()}
            assert balances == {"EUR": "5000.00", "GBP": "25.50", "USD": "5000.00"}
            statuses = [client.get("/products").status_code for _ in range(11)]
            assert statuses.count(429) >= 1  # the default limit is 10 per second
            assert client.get("/balances", headers={"X-Api-Token": "x"}).status_code in {401, 429}
            config = decode_json(client.get("/__sandbox/config").content)
            assert config["fxRates"]["GBP/USD"] == "1.3" and config["faults"]["seed"] == 4
            assert config["rateLimit"] == {"limit": 10, "windowSeconds": 1}
    finally:
        out, err = stop(proc)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "env-token" not in out
    assert "GIFQ sandbox stopped." in out


def test_serve_gifq_takes_tokens_from_the_flags() -> None:
    proc = _start("--api-key", "t1", "--api-key", "t2", "--rate-limit", "100/1")
    try:
        base_url = read_line(proc).removeprefix(URL_LINE)
        for token in ("t1", "t2"):
            reply = httpx.get(base_url + "/orders", headers={"X-Api-Token": token}, trust_env=False)
            assert reply.status_code == 200 and reply.headers["total-pages"] == "1"
    finally:
        stop(proc)
    assert proc.returncode == 0


@pytest.mark.parametrize(
    "args",
    [
        ["--provider", "gifq", "--sync"],
        ["--provider", "gifq", "--bulk-limit", "5"],
        ["--provider", "gifq", "--fx-rate", "GBP=1"],
        ["--provider", "ugiftme", "--fx-rate", "GBP/USD=1.2"],
        ["--provider", "ugiftme", "--fault-payout-fail", "0.5"],
    ],
)
def test_options_of_the_other_provider_are_usage_errors(args: list[str]) -> None:
    result = CliRunner().invoke(sandbox, ["serve", *args])
    assert result.exit_code == 2 and "Traceback" not in result.output
