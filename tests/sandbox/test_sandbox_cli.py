"""`batcher sandbox serve` in a subprocess: prints its URL, serves, stops on SIGTERM."""

from __future__ import annotations

import os
from decimal import Decimal

import httpx
import pytest
from click.testing import CliRunner
from sandbox_kit import read_line, start_serve, stop

from batcher.cli.sandbox import sandbox
from batcher.sandbox.jsonio import decode_json

URL_LINE = "UGiftMe sandbox listening on "


def test_serve_prints_its_url_serves_and_stops_on_sigterm() -> None:
    proc = start_serve(
        "--api-key", "cli-key", "--sync", "--fund", "GBP=25.50", "--rate-limit", "7/60"
    )
    try:
        line = read_line(proc)
        assert line.startswith(URL_LINE)
        base_url = line.removeprefix(URL_LINE)
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/api/v1/business")
        with httpx.Client(
            base_url=base_url, headers={"X-API-Key": "cli-key"}, trust_env=False
        ) as client:
            auth = client.get("/auth")
            assert auth.status_code == 200 and auth.json()["businessId"]
            assert auth.headers["RateLimit-Limit"] == "7"
            wallets = {w["currency"]: w for w in decode_json(client.get("/wallet").content)}
            assert wallets["GBP"]["balance"] == Decimal("25.50")
            assert wallets["EUR"]["balance"] == Decimal("10000.00")
            assert client.get("/auth", headers={"X-API-Key": "other"}).status_code == 401
    finally:
        out, err = stop(proc)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "stopped" in out


def test_serve_generates_and_prints_a_key_when_none_is_given() -> None:
    env = {k: v for k, v in os.environ.items() if k != "UGIFTME_API_KEY"}
    proc = start_serve(env=env)
    try:
        base_url = read_line(proc).removeprefix(URL_LINE)
        key_line = read_line(proc)
        key = key_line.rsplit(" ", 1)[-1]
        assert "generated" in key_line and len(key) == 36
        assert (
            httpx.get(base_url + "/auth", headers={"X-API-Key": key}, trust_env=False).status_code
            == 200
        )
    finally:
        stop(proc)
    assert proc.returncode == 0


def test_serve_takes_the_key_from_the_environment() -> None:
    proc = start_serve(env={**os.environ, "UGIFTME_API_KEY": "env-key"})
    try:
        base_url = read_line(proc).removeprefix(URL_LINE)
        assert (
            httpx.get(
                base_url + "/auth", headers={"X-API-Key": "env-key"}, trust_env=False
            ).status_code
            == 200
        )
    finally:
        out, _ = stop(proc)
    assert "env-key" not in out  # a key the operator chose is never echoed


@pytest.mark.parametrize(
    "args",
    [["--rate-limit", "lots"], ["--fund", "GBP"], ["--fund", "GBP=abc"], ["--fault-500", "2"]],
)
def test_bad_options_are_usage_errors(args: list[str]) -> None:
    result = CliRunner().invoke(sandbox, ["serve", *args])
    assert result.exit_code == 2 and "Traceback" not in result.output
