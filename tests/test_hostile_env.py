"""Hostile environment: URLs, configuration files, batch names, cells and terminal text."""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batcher.cli.terminal import printable
from batcher.config import (
    PROFILES,
    limits_from_config,
    load_file_config,
    normalise_base_url,
    provider_settings,
)
from batcher.core.errors import ConfigError, UsageError
from batcher.core.names import batch_name_from_stem, check_batch_name
from batcher.reporting.cells import is_formula_like, safe_cell

UGIFTME = PROFILES["ugiftme"]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.attacker.example/api",
        "http://127.0.0.1.nip.io/api",
        "http://localhost.attacker.example",
        "http://10.0.0.1:8080",
        "http://[::ffff:8.8.8.8]/",
    ],
)
def test_plain_http_only_to_loopback(url: str) -> None:
    with pytest.raises(ConfigError, match="plain http"):
        normalise_base_url(url, UGIFTME)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8765", "http://127.9.9.9", "http://localhost:1", "http://[::1]:80"]
)
def test_loopback_may_use_http(url: str) -> None:
    assert normalise_base_url(url, UGIFTME).endswith("/api/v1/business")


def test_user_info_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as caught:
        normalise_base_url("https://user:s3cr3t@api.example.com", UGIFTME)
    assert "s3cr3t" not in str(caught.value)
    assert "user info" in str(caught.value)


@pytest.mark.parametrize("url", ["http://[::1", "https://host:99999", "ftp://x", "https://"])
def test_malformed_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        normalise_base_url(url, UGIFTME)


def test_non_ascii_key_is_a_config_error() -> None:
    env = {"UGIFTME_API_KEY": "kéy-ünïcode", "BATCHER_CONFIG": "/nonexistent.toml"}
    with pytest.raises(ConfigError) as caught:
        provider_settings("ugiftme", environ=env)
    assert "kéy" not in str(caught.value)
    assert "$UGIFTME_API_KEY" in str(caught.value)


def test_config_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a regular file"):
        load_file_config(tmp_path)


def test_config_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "batcher.toml"
    path.write_bytes(b'[limits.max_total]\nGBP = "\xff\xfe"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_file_config(path)


@pytest.mark.parametrize(
    "text",
    ['providers = "x"\n', "[providers.ugiftme]\napi_key = 123\n", "limits = 5\n"],
)
def test_config_with_wrong_types(tmp_path: Path, text: str) -> None:
    path = tmp_path / "batcher.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=str(path)):
        load_file_config(path)


@pytest.mark.parametrize("value", ["nan", "inf", "-5", "abc", True])
def test_limits_must_be_positive_finite_amounts(value: object) -> None:
    with pytest.raises(ConfigError):
        limits_from_config({"limits": {"max_total": {"GBP": value}}}, Path("b.toml"))


def test_limits_parse() -> None:
    assert limits_from_config({"limits": {"max_total": {"gbp": "100.50"}}}).max_total == {
        "GBP": Decimal("100.50")
    }


@pytest.mark.parametrize(
    "name", ["../../../x", "/tmp/x", "a/b", "..", "x" * 65, "", "-rf", "a\x1bb", "ok name"]
)
def test_unsafe_batch_names_are_refused(name: str) -> None:
    with pytest.raises(UsageError):
        check_batch_name(name)


@given(st.text(max_size=120))
def test_default_batch_names_are_always_safe(stem: str) -> None:
    assert check_batch_name(batch_name_from_stem(stem))


@pytest.mark.parametrize(
    "text",
    [
        "=1+1",
        " =1+1",
        "\n=1+1",
        "\u00a0=1+1",
        "\ufeff=1+1",
        "\u200b=1+1",
        "＝1+1",
        "＋1",
        "\t@SUM(A1)",
        "\r-1",
        "  +44 20",
        "@cmd",
    ],
)
def test_formula_guard_covers_what_spreadsheets_evaluate(text: str) -> None:
    assert is_formula_like(text)
    assert safe_cell(text) == "'" + text


@pytest.mark.parametrize("text", ["Zoë", "a=b", "1+1", "", "   ", "£25.00"])
def test_plain_text_is_left_alone(text: str) -> None:
    assert safe_cell(text) == text


def test_escape_sequences_never_reach_the_terminal() -> None:
    shown = printable("a\x1b[2Jb\x1b]0;owned\x07c\u202ed\x9be")
    assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown
    assert "\x9b" not in shown
    assert shown.startswith("a\\x1b[2Jb")
    assert printable("line\n\tindented") == "line\n\tindented"


def test_printable_keeps_ordinary_unicode() -> None:
    assert printable("Zoë Ångström — €25") == "Zoë Ångström — €25"


def test_fifo_config_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "batcher.toml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_file_config(fifo)
