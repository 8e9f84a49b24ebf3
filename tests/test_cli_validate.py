"""`batcher validate` end to end: the real CLI in a subprocess against a real sandbox."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from batcher.cli.common import parse_mappings
from batcher.core.errors import UsageError
from batcher.reporting.cells import safe_cell
from batcher.sandbox.server import SandboxHandle

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
CORPUS = Path(__file__).parent / "data" / "corpus"


@pytest.fixture
def sandbox(make_ugiftme_sandbox: Callable[..., SandboxHandle]) -> SandboxHandle:
    return make_ugiftme_sandbox()


def batcher_validate(
    sandbox: SandboxHandle | None,
    cwd: Path,
    *args: str,
    key: str | None = None,
    base_url: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `batcher validate` with only the environment a cron job would give it."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("UGIFTME_", "GIFQ_", "BATCHER_"))
    }
    env["BATCHER_CONFIG"] = str(cwd / "absent.toml")
    env["UGIFTME_API_KEY"] = key or (sandbox.api_key if sandbox else "no-key")
    url = base_url or (sandbox.base_url if sandbox else "http://127.0.0.1:9")
    return subprocess.run(
        [sys.executable, "-m", "batcher", "validate", *args, "--base-url", url],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def report_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle))


def assert_clean_failure(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr
    assert "Traceback" not in result.stdout


# ---------------------------------------------------------------------------
# The samples.


@pytest.mark.parametrize("name", ["recipients.xlsx", "recipients.csv"])
def test_samples_are_valid_and_funded(sandbox: SandboxHandle, tmp_path: Path, name: str) -> None:
    result = batcher_validate(sandbox, tmp_path, str(SAMPLES / name))
    assert result.returncode == 0, result.stdout + result.stderr
    assert_clean_failure(result)
    assert "300 rows read, 300 valid, 0 invalid" in result.stdout
    assert "OK: every row is valid and funded." in result.stdout
    for currency in ("GBP", "EUR", "USD"):
        assert f"  {currency}  cost " in result.stdout
    report = tmp_path / "reports" / "recipients" / "validation.csv"
    assert report_rows(report) == []  # the header only


def test_errors_sample_reports_every_kind(sandbox: SandboxHandle, tmp_path: Path) -> None:
    result = batcher_validate(sandbox, tmp_path, str(SAMPLES / "recipients-with-errors.xlsx"))
    assert result.returncode == 2
    assert_clean_failure(result)
    assert "23 rows read, 4 valid, 19 invalid" in result.stdout
    assert "Nothing was ordered." in result.stdout
    rows = report_rows(tmp_path / "reports" / "recipients-with-errors" / "validation.csv")
    assert [(r["row"], r["column"], r["code"]) for r in rows] == [
        ("3", "Email", "bad_email"),
        ("4", "Email", "missing_value"),
        ("5", "Product code", "unknown_product"),
        ("6", "Product code", "product_inactive"),
        ("7", "Currency", "currency_mismatch"),
        ("8", "Amount", "amount_not_allowed"),
        ("9", "Amount", "amount_not_allowed"),
        ("10", "Amount", "amount_too_many_decimals"),
        ("11", "Amount", "amount_not_positive"),
        ("12", "Amount", "amount_is_date"),
        ("13", "Amount", "bad_amount"),
        ("14", "Amount", "amount_currency_conflict"),
        ("15", "Currency", "bad_currency"),
        ("16", "Country", "bad_country"),
        ("17", "Country", "country_not_allowed"),
        ("18", "Merchant", "merchant_mismatch"),
        ("19", "Gift message", "message_too_long"),
        ("20", "Reference", "duplicate_reference"),
        ("22", "Email", "duplicate_row"),
    ]
    assert rows[4]["hint"] == "set the currency to GBP or choose a EUR product"
    assert "row 5 Product code: unknown_product:" in result.stdout


def test_json_output_matches_the_json_report(sandbox: SandboxHandle, tmp_path: Path) -> None:
    result = batcher_validate(
        sandbox, tmp_path, str(SAMPLES / "recipients-with-errors.xlsx"), "--json"
    )
    assert result.returncode == 2
    document = json.loads(result.stdout)
    saved = json.loads(
        (tmp_path / "reports" / "recipients-with-errors" / "validation.json").read_text()
    )
    assert document == saved
    assert (document["rows_read"], document["valid_rows"], document["invalid_rows"]) == (23, 4, 19)
    assert document["ok"] is False
    assert document["sheet"] == "Recipients"
    assert document["currencies"]["GBP"]["available"] == "10000.00"
    assert len(document["errors"]) == 19
    assert document["errors"][0] == {
        "row": 3,
        "column": "Email",
        "code": "bad_email",
        "message": "'jose.alvarez@' is not a valid email address",
        "hint": "There must be something after the @-sign.",
        "value": "jose.alvarez@",
    }


def test_short_wallet_exits_2_with_the_shortfall(
    make_ugiftme_sandbox: Callable[..., SandboxHandle], tmp_path: Path
) -> None:
    poor = make_ugiftme_sandbox(funding={"GBP": "100.00"})
    result = batcher_validate(
        poor, tmp_path, str(SAMPLES / "recipients.csv"), "--report-dir", "out"
    )
    assert result.returncode == 2
    assert "300 rows read, 300 valid, 0 invalid" in result.stdout
    line = next(x for x in result.stdout.splitlines() if "insufficient_funds" in x)
    assert "GBP wallet is short: needs £" in line
    assert "available £100.00, short by £" in line
    assert "(top up and rerun)" in line
    rows = report_rows(tmp_path / "out" / "recipients" / "validation.csv")
    assert [(r["row"], r["code"]) for r in rows] == [("", "insufficient_funds")]


# ---------------------------------------------------------------------------
# Reports are safe to open in Excel.


def test_report_cells_cannot_run_as_formulas(sandbox: SandboxHandle, tmp_path: Path) -> None:
    result = batcher_validate(sandbox, tmp_path, str(CORPUS / "formula_injection.csv"))
    assert result.returncode == 2
    rows = report_rows(tmp_path / "reports" / "formula_injection" / "validation.csv")
    values = [r["value"] for r in rows]
    assert values == ['\'=HYPERLINK("http://evil.example","x")', "'+SUM(1,2)", "'@25"]
    for row in rows:
        for cell in row.values():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("=1+1", "'=1+1"),
        ("+44 20", "'+44 20"),
        ("-5", "'-5"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("plain", "plain"),
        ("", ""),
        (None, None),
        (12, 12),
    ],
)
def test_safe_cell(value: object, expected: object) -> None:
    assert safe_cell(value) == expected


# ---------------------------------------------------------------------------
# Failures: one line, the right exit code, never a traceback.


def test_unreadable_sheet_exits_2_before_calling_the_provider(tmp_path: Path) -> None:
    result = batcher_validate(None, tmp_path, str(CORPUS / "empty.csv"))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "batcher: error: empty.csv is empty "
        "(export the sheet again; it needs a header row and at least one data row)"
    )
    assert_clean_failure(result)


def test_wrong_key_exits_4(sandbox: SandboxHandle, tmp_path: Path) -> None:
    result = batcher_validate(
        sandbox,
        tmp_path,
        str(SAMPLES / "recipients.csv"),
        key="00000000-0000-0000-0000-000000000000",
    )
    assert result.returncode == 4
    assert result.stderr.startswith("batcher: error:")
    assert_clean_failure(result)


def test_unreachable_provider_exits_4(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = batcher_validate(
        None, tmp_path, str(SAMPLES / "recipients.csv"), base_url=f"http://127.0.0.1:{port}"
    )
    assert result.returncode == 4
    assert result.stderr.startswith("batcher: error:")
    assert_clean_failure(result)


def test_bad_map_option_exits_2(sandbox: SandboxHandle, tmp_path: Path) -> None:
    result = batcher_validate(sandbox, tmp_path, str(SAMPLES / "recipients.csv"), "--map", "amount")
    assert result.returncode == 2
    assert "--map 'amount' is not FIELD=HEADER" in result.stderr
    assert_clean_failure(result)


def test_map_option_reads_a_renamed_column(sandbox: SandboxHandle, tmp_path: Path) -> None:
    result = batcher_validate(
        sandbox, tmp_path, str(CORPUS / "missing_amount_column.csv"), "--map", "amount=Amt"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 row read, 1 valid, 0 invalid" in result.stdout


def test_unwritable_report_dir_exits_4(sandbox: SandboxHandle, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the report folder should go")
    result = batcher_validate(
        sandbox, tmp_path, str(SAMPLES / "recipients.csv"), "--report-dir", str(blocker / "sub")
    )
    assert result.returncode == 4
    assert result.stderr.startswith("batcher: error: cannot write the report in ")
    assert_clean_failure(result)


def test_parse_mappings() -> None:
    assert parse_mappings(["amount=Card value", " Currency = CCY "]) == {
        "amount": "Card value",
        "currency": "CCY",
    }
    with pytest.raises(UsageError):
        parse_mappings(["=Value"])
