"""[webhooks] settings: where the signing secret may come from, and what is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from batcher.config import webhook_settings
from batcher.core.errors import ConfigError

SECRET = "whsec_" + "12" * 24


def test_the_environment_wins_over_the_file(tmp_path: Path) -> None:
    file = tmp_path / "secret"
    file.write_text("whsec_from_file\n")
    file.chmod(0o600)
    config = {"webhooks": {"enabled": False, "secret_file": str(file), "poll_margin_seconds": 5}}
    env = {"BATCHER_WEBHOOKS": "1", "UGIFTME_WEBHOOK_SECRET": SECRET}
    settings = webhook_settings(config, env)
    assert settings.enabled and settings.poll_margin_seconds == 5.0
    assert settings.secret("ugiftme", env).get_secret_value() == SECRET
    assert settings.secret("ugiftme", {}).get_secret_value() == "whsec_from_file"


def test_a_secret_file_others_can_read_is_refused_without_showing_it(tmp_path: Path) -> None:
    file = tmp_path / "secret"
    file.write_text(SECRET)
    file.chmod(0o644)
    settings = webhook_settings({"webhooks": {"secret_file": str(file)}}, {})
    with pytest.raises(ConfigError) as caught:
        settings.secret("ugiftme", {})
    assert "chmod 600" in caught.value.hint and SECRET not in str(caught.value)


def test_no_secret_and_bad_values_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="UGIFTME_WEBHOOK_SECRET"):
        webhook_settings({}, {}).secret("ugiftme", {})
    with pytest.raises(ConfigError, match="poll_margin_seconds"):
        webhook_settings({"webhooks": {"poll_margin_seconds": "soon"}}, {})
    with pytest.raises(ConfigError, match="enabled"):
        webhook_settings({"webhooks": {"enabled": "yes"}}, {})
    with pytest.raises(ConfigError, match="characters"):
        webhook_settings({}, {}).secret("ugiftme", {"UGIFTME_WEBHOOK_SECRET": "a b"})
