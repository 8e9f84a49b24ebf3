"""`batcher auth|catalog|wallet` end to end: the real CLI in a subprocess, the real sandbox."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from batcher.sandbox.server import SandboxHandle

# Recognisable, so a leak into any output is easy to spot.
API_KEY = "LEAKCHECK-7e57-4a11-b0b5-5ecre7c0ffee"


@pytest.fixture
def sandbox(make_ugiftme_sandbox: Callable[..., SandboxHandle]) -> SandboxHandle:
    return make_ugiftme_sandbox(api_keys=(API_KEY,))


def batcher(
    cwd: Path, *args: str, key: str | None = API_KEY, base_url: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI with only the environment a cron job would give it."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("UGIFTME_", "GIFQ_", "BATCHER_"))
    }
    env["BATCHER_CONFIG"] = str(cwd / "absent.toml")
    if key is not None:
        env["UGIFTME_API_KEY"] = key
    if base_url is not None:
        env["UGIFTME_BASE_URL"] = base_url
    return subprocess.run(
        [sys.executable, "-m", "batcher", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_cannot_start(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit 4, nothing on stdout, one line on stderr, no traceback, no key."""
    assert result.returncode == 4, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("batcher: error: ")
    assert "Traceback" not in result.stderr
    assert API_KEY not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ---------------------------------------------------------------------------
# Happy paths


def test_auth_shows_the_account(sandbox: SandboxHandle, tmp_path: Path) -> None:
    result = batcher(tmp_path, "auth", base_url=sandbox.base_url)
    assert result.returncode == 0, result.stderr
    assert "Account: Sandbox Trading Ltd (" in result.stdout
    assert "Plan:    business" in result.stdout
    assert "Status:  verified" in result.stdout
    assert API_KEY not in result.stdout + result.stderr


def test_a_bare_host_gets_the_api_root(sandbox: SandboxHandle, tmp_path: Path) -> None:
    result = batcher(tmp_path, "auth", "--base-url", sandbox.host_url)
    assert result.returncode == 0, result.stderr


def test_catalog_table_is_aligned(sandbox: SandboxHandle, tmp_path: Path) -> None:
    result = batcher(tmp_path, "catalog", base_url=sandbox.base_url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["CODE", "NAME", "MERCHANT", "CUR", "VALUES", "DISCOUNT", "ACTIVE"]
    assert len(lines) == 1 + 38
    column = lines[0].index("CUR")
    assert all(line[column : column + 3].isalpha() for line in lines[1:])
    argos = next(line for line in lines if line.startswith("ARGOS_UK"))
    assert "5.00, 10.00, 25.00, 50.00, 100.00, 250.00" in argos
    amazon = next(line for line in lines if line.startswith("AMAZON_UK_STD"))
    assert "1.00–2000.00" in amazon and "2.5%" in amazon and amazon.rstrip().endswith("yes")
    assert next(line for line in lines if line.startswith("HMV_UK")).rstrip().endswith("no")


def test_catalog_filters_and_json_keeps_exact_decimals(
    sandbox: SandboxHandle, tmp_path: Path
) -> None:
    result = batcher(
        tmp_path, "catalog", "--search", "amazon", "--currency", "eur", "--json",
        base_url=sandbox.base_url,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout, parse_float=Decimal)
    assert document["schema"] == "batcher.catalog/1"
    products = document["products"]
    assert [p["productCode"] for p in products] == ["AMAZON_DE_STD"]
    (amazon,) = products
    assert (amazon["discount"], amazon["minValue"], amazon["maxValue"]) == ("2.5", "1", "2000")
    assert amazon["isActive"] is True


def test_wallet_balances_and_transactions(sandbox: SandboxHandle, tmp_path: Path) -> None:
    sandbox.control("POST", "/wallets/GBP/fund", {"amount": "250.25"})
    sandbox.control("POST", "/wallets/JPY/fund", {"amount": "5000"})

    table = batcher(tmp_path, "wallet", base_url=sandbox.base_url)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["CURRENCY", "BALANCE", "AVAILABLE"]
    assert any(line.split() == ["GBP", "10250.25", "10250.25"] for line in lines)
    assert any(line.split() == ["JPY", "5000", "5000"] for line in lines)

    as_json = json.loads(batcher(tmp_path, "wallet", "--json", base_url=sandbox.base_url).stdout)
    assert as_json["schema"] == "batcher.wallet/1"
    gbp = next(w for w in as_json["wallets"] if w["currency"] == "GBP")
    assert gbp == {"currency": "GBP", "balance": "10250.25", "available": "10250.25"}

    movements = batcher(tmp_path, "wallet", "--transactions", base_url=sandbox.base_url)
    assert movements.returncode == 0, movements.stderr
    assert movements.stdout.splitlines()[0].split()[:4] == ["TIME", "TYPE", "AMOUNT", "CUR"]
    assert "funding" in movements.stdout and "250.25" in movements.stdout

    movements_json = batcher(
        tmp_path, "wallet", "--transactions", "--json", base_url=sandbox.base_url
    )
    movements_doc = json.loads(movements_json.stdout)
    assert movements_doc["schema"] == "batcher.transactions/1"
    newest = movements_doc["transactions"][0]
    assert (newest["type"], newest["amount"], newest["currency"]) == ("funding", "5000", "JPY")


# ---------------------------------------------------------------------------
# Cannot start: one line, exit 4, never the key


def test_missing_key(tmp_path: Path, sandbox: SandboxHandle) -> None:
    result = batcher(tmp_path, "auth", key=None, base_url=sandbox.base_url)
    assert_cannot_start(result, "no API key for ugiftme", "UGIFTME_API_KEY")


def test_the_key_is_never_a_flag(tmp_path: Path, sandbox: SandboxHandle) -> None:
    result = batcher(tmp_path, "auth", "--api-key", API_KEY, key=None, base_url=sandbox.base_url)
    assert result.returncode == 2
    assert "No such option" in result.stderr


def test_wrong_key(tmp_path: Path, sandbox: SandboxHandle) -> None:
    wrong = "LEAKCHECK-WRONG-0000-1111-2222"
    result = batcher(tmp_path, "wallet", key=wrong, base_url=sandbox.base_url)
    line = assert_cannot_start(result, "refused the API key", "HTTP 401", "UGIFTME_API_KEY")
    assert wrong not in line


def test_incomplete_profile(tmp_path: Path, sandbox: SandboxHandle) -> None:
    sandbox.control("PUT", "/account/profile", {"complete": False})
    result = batcher(tmp_path, "catalog", base_url=sandbox.base_url)
    assert_cannot_start(result, "denied access", "HTTP 403", "Business profile incomplete")


def test_unreachable_host(tmp_path: Path) -> None:
    port = free_port()
    result = batcher(tmp_path, "auth", base_url=f"http://127.0.0.1:{port}")
    assert_cannot_start(result, f"cannot reach 127.0.0.1:{port}: connection refused")


def test_plain_http_to_a_remote_host_is_refused(tmp_path: Path) -> None:
    result = batcher(tmp_path, "auth", base_url="http://api.ugift.me/api/v1/business")
    assert_cannot_start(result, "plain http", "use https")


def test_server_errors_end_cleanly(tmp_path: Path, sandbox: SandboxHandle) -> None:
    sandbox.control("PATCH", "/faults", {"500": 1})
    result = batcher(tmp_path, "wallet", base_url=sandbox.base_url)
    assert_cannot_start(result, "GET /wallet failed: HTTP 500")


def test_a_provider_without_a_client_yet_is_a_clear_error(tmp_path: Path) -> None:
    env_key = {"GIFQ_API_TOKEN": API_KEY}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UGIFTME_", "GIFQ_"))}
    result = subprocess.run(
        [sys.executable, "-m", "batcher", "auth", "--provider", "gifq"],
        cwd=tmp_path,
        env={**env, **env_key, "BATCHER_CONFIG": str(tmp_path / "absent.toml")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert_cannot_start(result, "gifq")
