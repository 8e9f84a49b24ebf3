"""Named accounts in batcher.toml ([accounts.NAME]): provider, base URL and the variable
that holds the key on this machine; never the key itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from batcher.config import account_settings, load_file_config
from batcher.core.errors import ConfigError

TOML = """
[accounts.acme]
provider = "ugiftme"
base_url = "http://127.0.0.1:9001"
api_key_env = "ACME_UGIFTME_KEY"

[accounts.globex]
provider = "gifq"
api_key_env = "GLOBEX_GIFQ_TOKEN"
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "batcher.toml"
    path.write_text(TOML, encoding="utf-8")
    return path


def test_an_account_names_its_provider_url_and_key_variable(config: Path) -> None:
    env = {"ACME_UGIFTME_KEY": "k-acme", "UGIFTME_API_KEY": "k-default"}
    settings = account_settings("acme", environ=env, config_path=config)
    assert settings.provider == "ugiftme"
    assert settings.base_url == "http://127.0.0.1:9001/api/v1/business"
    assert settings.api_key.get_secret_value() == "k-acme"  # not the provider's default key
    assert "k-acme" not in repr(settings)


def test_a_flag_beats_the_accounts_url_and_a_missing_url_is_the_sandbox_default(
    config: Path,
) -> None:
    env = {"ACME_UGIFTME_KEY": "k", "GLOBEX_GIFQ_TOKEN": "t"}
    flagged = account_settings("acme", base_url="http://localhost:7000", environ=env,
                               config_path=config)  # fmt: skip
    assert flagged.base_url.startswith("http://localhost:7000")
    gifq = account_settings("globex", environ=env, config_path=config)
    assert gifq.provider == "gifq" and gifq.base_url == gifq.profile.default_base_url


def test_a_missing_key_names_the_variable_and_an_unknown_account_the_known_ones(
    config: Path,
) -> None:
    with pytest.raises(ConfigError) as missing:
        account_settings("acme", environ={}, config_path=config)
    assert "account 'acme'" in str(missing.value)
    assert "ACME_UGIFTME_KEY" in (missing.value.hint or "")
    with pytest.raises(ConfigError) as unknown:
        account_settings("initech", environ={}, config_path=config)
    assert "acme, globex" in (unknown.value.hint or "")


def test_an_account_may_not_hold_the_key_itself(tmp_path: Path) -> None:
    path = tmp_path / "batcher.toml"
    path.write_text('[accounts.acme]\nprovider = "ugiftme"\napi_key = "s3cret"\n')
    with pytest.raises(ConfigError) as refused:
        load_file_config(path)
    assert "accounts.acme.api_key is not a setting" in str(refused.value)
    assert "s3cret" not in str(refused.value)
