"""Settings: flags > environment > batcher.toml, and provider connection profiles.

API keys come only from the environment (or a 0600 config file), never from a
flag, and are held as `SecretStr` so that printing a settings object cannot leak them.
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from batcher.core.errors import ConfigError


@dataclass(frozen=True)
class ProviderProfile:
    """What batcher knows about a provider before it talks to it."""

    name: str
    api_key_env: str
    base_url_env: str
    default_base_url: str  # always the provider's sandbox host, never production
    api_root: str  # path appended to a bare host
    default_rate_per_second: float


PROFILES: dict[str, ProviderProfile] = {
    "ugiftme": ProviderProfile(
        name="ugiftme",
        api_key_env="UGIFTME_API_KEY",
        base_url_env="UGIFTME_BASE_URL",
        default_base_url="https://api-stage.ugift.me/api/v1/business",
        api_root="/api/v1/business",
        default_rate_per_second=2.0,  # 120 per 60 s until the headers say otherwise
    ),
    "gifq": ProviderProfile(
        name="gifq",
        api_key_env="GIFQ_API_TOKEN",
        base_url_env="GIFQ_BASE_URL",
        default_base_url="https://api-sandbox.gifq.com/api",
        api_root="/api",
        default_rate_per_second=10.0,
    ),
}

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}


def profile_for(provider: str) -> ProviderProfile:
    try:
        return PROFILES[provider.lower()]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise ConfigError(f"unknown provider {provider!r}", hint=f"use one of: {known}") from None


def normalise_base_url(raw: str, profile: ProviderProfile) -> str:
    """Validate a base URL and append the API root to a bare host.

    Anything but localhost must use https, so a key never crosses a network in clear.
    """
    url = raw.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ConfigError(
            f"base URL {url!r} is not an http(s) URL",
            hint=f"for example {profile.default_base_url}",
        )
    host = parts.hostname.lower()
    is_local = host in LOCAL_HOSTS or host.startswith("127.")
    if parts.scheme == "http" and not is_local:
        raise ConfigError(
            f"base URL {url!r} uses plain http to a non-local host",
            hint="use https; only localhost may use http",
        )
    if parts.path in {"", "/"}:
        url = url + profile.api_root
    return url


@dataclass(frozen=True)
class ProviderSettings:
    provider: str
    base_url: str
    api_key: SecretStr
    profile: ProviderProfile

    def __repr__(self) -> str:  # never print the key, even masked, in a traceback
        return f"ProviderSettings(provider={self.provider!r}, base_url={self.base_url!r})"


def load_file_config(path: Path | None = None) -> dict[str, Any]:
    """Read batcher.toml from the given path or the working directory, if any."""
    candidate = path or Path(os.environ.get("BATCHER_CONFIG", "batcher.toml"))
    if not candidate.exists():
        return {}
    try:
        with candidate.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{candidate}: not valid TOML ({exc})") from None
    return data


def _key_from_file(config: dict[str, Any], provider: str, path: Path) -> str | None:
    section = config.get("providers", {}).get(provider, {})
    key = section.get("api_key")
    if key is None:
        return None
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{path} holds an API key but is readable by others",
            hint=f"run: chmod 600 {path}",
        )
    return str(key)


def provider_settings(
    provider: str,
    *,
    base_url: str | None = None,
    environ: dict[str, str] | None = None,
    config_path: Path | None = None,
) -> ProviderSettings:
    """Resolve where and how to talk to a provider: flags > env > batcher.toml."""
    env = os.environ if environ is None else environ
    profile = profile_for(provider)
    path = config_path or Path(env.get("BATCHER_CONFIG", "batcher.toml"))
    file_config = load_file_config(path)
    section = file_config.get("providers", {}).get(profile.name, {})
    raw_url = base_url or env.get(profile.base_url_env) or section.get("base_url")
    url = normalise_base_url(raw_url or profile.default_base_url, profile)
    key = env.get(profile.api_key_env) or _key_from_file(file_config, profile.name, path)
    if not key or not key.strip():
        raise ConfigError(
            f"no API key for {profile.name}",
            hint=f"set the environment variable {profile.api_key_env}",
        )
    return ProviderSettings(profile.name, url, SecretStr(key.strip()), profile)


@dataclass(frozen=True)
class RunLimits:
    """Guardrails from batcher.toml's [limits] section, overridable by flags."""

    max_total: dict[str, Decimal] = field(default_factory=dict)


def limits_from_config(config: dict[str, Any]) -> RunLimits:
    raw = config.get("limits", {}).get("max_total", {})
    try:
        return RunLimits({str(k).upper(): Decimal(str(v)) for k, v in raw.items()})
    except ArithmeticError:
        raise ConfigError("batcher.toml: [limits.max_total] values must be amounts") from None
