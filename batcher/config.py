"""Settings: flags > environment > batcher.toml, and provider connection profiles.

API keys come only from the environment (or a 0600 config file), never from a
flag, and are held as `SecretStr` (batcher.core.secrets) so that printing a settings object cannot leak them.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

from batcher.core.errors import BatcherError, ConfigError
from batcher.core.secrets import SecretStr


@dataclass(frozen=True)
class ProviderProfile:
    """What batcher knows about a provider before it talks to it."""

    name: str
    api_key_env: str
    base_url_env: str
    default_base_url: str  # always the provider's sandbox host, never production
    api_root: str  # path appended to a bare host
    default_rate_per_second: float


#: name, key variable, URL variable, default URL (always the sandbox host), API root, rate/s
_PROFILE_TABLE = (
    ("ugiftme", "UGIFTME_API_KEY", "UGIFTME_BASE_URL",
     "https://api-stage.ugift.me/api/v1/business", "/api/v1/business",
     2.0),  # 120 per 60 s until the headers say otherwise
    ("gifq", "GIFQ_API_TOKEN", "GIFQ_BASE_URL",
     "https://api-sandbox.gifq.com/api", "/api",
     10.0),
)  # fmt: skip
PROFILES: dict[str, ProviderProfile] = {row[0]: ProviderProfile(*row) for row in _PROFILE_TABLE}


def profile_for(provider: str) -> ProviderProfile:
    try:
        return PROFILES[provider.lower()]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise ConfigError(f"unknown provider {provider!r}", hint=f"use one of: {known}") from None


def is_loopback_host(host: str) -> bool:
    """Exactly `localhost`, or an IP address that parses as loopback (127.0.0.0/8, ::1).

    A host *name* that merely starts with "127." (127.attacker.example) is not loopback.
    """
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _url_for_messages(parts: SplitResult) -> str:
    """The URL without user info, query or fragment: safe to echo in an error."""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def normalise_base_url(raw: str, profile: ProviderProfile) -> str:
    """Validate a base URL and append the API root to a bare host.

    Only loopback may use plain http, so a key never crosses a network in clear.
    A URL carrying user info is refused without echoing it: it may hold a secret.
    """
    url = raw.strip().rstrip("/")
    example = f"for example {profile.default_base_url}"
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in url):
        raise ConfigError("the base URL contains spaces or control characters", hint=example)
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError:
        raise ConfigError("the base URL is not a valid URL", hint=example) from None
    if "@" in parts.netloc:
        raise ConfigError(
            "the base URL contains user info (user:password@host); it was not used or shown",
            hint="put the key in the environment, never in the URL",
        )
    if parts.scheme not in {"http", "https"} or not host:
        raise ConfigError("the base URL is not an http(s) URL", hint=example)
    del port  # parsed only to refuse a malformed port early
    if parts.query or parts.fragment:
        raise ConfigError(
            f"base URL {_url_for_messages(parts)} has a query or fragment", hint=example
        )
    if parts.scheme == "http" and not is_loopback_host(host):
        raise ConfigError(
            f"base URL {_url_for_messages(parts)} uses plain http to a non-loopback host",
            hint="use https; only localhost and loopback addresses may use http",
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


def config_path_from(environ: Mapping[str, str] | None = None) -> Path:
    """Where batcher.toml is read from: $BATCHER_CONFIG, else ./batcher.toml."""
    env = os.environ if environ is None else environ
    return Path(env.get("BATCHER_CONFIG") or "batcher.toml")


def load_file_config(path: Path | None = None) -> dict[str, Any]:
    """Read batcher.toml from the given path ($BATCHER_CONFIG, else the working directory).

    A missing file is an empty configuration; anything else that cannot be read as
    a TOML table (a folder, a FIFO, bytes that are not UTF-8, bad syntax) is a
    ConfigError naming the file.
    """
    candidate = path or config_path_from()
    try:
        info = candidate.stat()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration {candidate} ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(
            f"the configuration {candidate} is not a regular file",
            hint="point BATCHER_CONFIG (or --config) at a batcher.toml file",
        )
    try:
        text = candidate.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"the configuration {candidate} is not UTF-8 text (byte {exc.start})",
            hint="save it as UTF-8",
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration {candidate} ({exc.strerror})") from None
    import tomllib  # only when there is a file: most runs have none

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{candidate}: not valid TOML ({exc})") from None
    _check_shape(data, candidate)
    return data


def _check_shape(data: dict[str, Any], path: Path) -> None:
    """Refuse values of the wrong type with the key that holds them."""

    def table(value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: [{where}] must be a table, not {type(value).__name__}")
        return value

    for name, section in table(data.get("providers", {}), "providers").items():
        for key, value in table(section, f"providers.{name}").items():
            if key in {"api_key", "base_url"} and not isinstance(value, str):
                raise ConfigError(f"{path}: providers.{name}.{key} must be a string")
    for name, section in table(data.get("accounts", {}), "accounts").items():
        for key, value in table(section, f"accounts.{name}").items():
            if key not in ACCOUNT_KEYS:
                known = ", ".join(ACCOUNT_KEYS)
                raise ConfigError(f"{path}: accounts.{name}.{key} is not a setting ({known})")
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{path}: accounts.{name}.{key} must be a non-empty string")
    limits = table(data.get("limits", {}), "limits")
    table(limits.get("max_total", {}), "limits.max_total")


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


def check_api_key(key: str, source: str) -> str:
    """A key that can travel in an HTTP header: printable ASCII, no spaces inside.

    The message names where the key came from, never the key.
    """
    key = key.strip()
    if not key.isascii() or any(not ch.isprintable() or ch.isspace() for ch in key):
        raise ConfigError(
            f"the API key in {source} contains characters that cannot be sent "
            "(non-ASCII, spaces or control characters)",
            hint="copy the key again from the provider's dashboard",
        )
    return key


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
    path = config_path or config_path_from(env)
    file_config = load_file_config(path)
    section = file_config.get("providers", {}).get(profile.name, {})
    raw_url = base_url or env.get(profile.base_url_env) or section.get("base_url")
    url = normalise_base_url(raw_url or profile.default_base_url, profile)
    env_key = env.get(profile.api_key_env)
    key = env_key or _key_from_file(file_config, profile.name, path)
    if not key or not key.strip():
        raise ConfigError(
            f"no API key for {profile.name}",
            hint=f"set the environment variable {profile.api_key_env}",
        )
    source = f"${profile.api_key_env}" if env_key else str(path)
    return ProviderSettings(profile.name, url, SecretStr(check_api_key(key, source)), profile)


#: what an [accounts.NAME] table of batcher.toml may say. Never the key itself: a
#: named account says which environment variable holds it, on each machine.
ACCOUNT_KEYS = ("provider", "base_url", "api_key_env")


def account_names(
    environ: Mapping[str, str] | None = None, config_path: Path | None = None
) -> list[str]:
    """The named accounts of batcher.toml, sorted."""
    path = config_path or config_path_from(environ)
    return sorted(load_file_config(path).get("accounts", {}))


def account_settings(
    account: str,
    *,
    base_url: str | None = None,
    environ: Mapping[str, str] | None = None,
    config_path: Path | None = None,
) -> ProviderSettings:
    """A named account of batcher.toml ([accounts.NAME]: provider, base_url, api_key_env).

    Flags > environment > batcher.toml, as for a provider: --base-url over the
    account's base_url; the key only from the environment variable the account
    names (so one file can list 40 client accounts and each machine hold the keys
    of the ones it serves). Without base_url, the provider's sandbox default.
    """
    env = os.environ if environ is None else environ
    path = config_path or config_path_from(env)
    accounts = load_file_config(path).get("accounts", {})
    section = accounts.get(account)
    if section is None:
        known = ", ".join(sorted(accounts)) or "none"
        raise ConfigError(
            f"no account named {account!r} in {path} [accounts]",
            hint=f"known accounts: {known}; add [accounts.{account}] with provider and api_key_env",
        )
    where = f"{path} [accounts.{account}]"
    if "provider" not in section:
        raise ConfigError(f"{where} has no provider", hint='e.g. provider = "ugiftme"')
    profile = profile_for(section["provider"])
    variable = section.get("api_key_env")
    if variable is None:
        raise ConfigError(
            f"{where} has no api_key_env",
            hint=f'name the variable that holds its key, e.g. api_key_env = "{account.upper()}_KEY"',
        )
    url = normalise_base_url(
        base_url or section.get("base_url") or profile.default_base_url, profile
    )
    key = env.get(variable)
    if not key or not key.strip():
        raise ConfigError(
            f"no API key for account {account!r} ({profile.name})",
            hint=f"set the environment variable {variable} on this machine",
        )
    return ProviderSettings(
        profile.name, url, SecretStr(check_api_key(key, f"${variable}")), profile
    )


@dataclass(frozen=True)
class RunLimits:
    """Guardrails from batcher.toml's [limits] section, overridable by flags."""

    max_total: dict[str, Decimal] = field(default_factory=dict)


def parse_limit(
    currency: str, amount: Any, source: str, error: type[BatcherError] = ConfigError
) -> tuple[str, Decimal]:
    """One spend limit: a three-letter currency and a finite, positive amount."""
    code = str(currency).strip().upper()
    if len(code) != 3 or not code.isalpha() or not code.isascii():
        raise error(f"{source}: {currency!r} is not a currency code", hint="e.g. GBP")
    try:
        value = Decimal(str(amount).strip())
    except ArithmeticError:
        value = Decimal("NaN")
    if not value.is_finite() or value < 0 or isinstance(amount, bool):
        raise error(
            f"{source}: the limit for {code} must be a positive amount, not {str(amount)[:20]!r}",
            hint=f"e.g. {code}=5000",
        )
    return code, value


def limits_from_config(config: dict[str, Any], path: Path | None = None) -> RunLimits:
    raw = config.get("limits", {}).get("max_total", {})
    source = f"{path or config_path_from()} [limits.max_total]"
    return RunLimits(dict(parse_limit(k, v, source) for k, v in raw.items()))


@dataclass(frozen=True)
class WebhookSettings:
    """batcher.toml's [webhooks] section, with the environment over it.

    `enabled` makes `batcher run` settle order requests from received events and
    poll only as a slow fallback. The signing secret is read only by the
    listener, from `<PROVIDER>_WEBHOOK_SECRET` or a 0600 `secret_file`.
    """

    enabled: bool = False
    poll_margin_seconds: float = 90.0  # a first retry comes 1 min after a failed delivery
    secret_file: Path | None = None

    def secret(self, provider: str, environ: Mapping[str, str] | None = None) -> SecretStr:
        env = os.environ if environ is None else environ
        variable = webhook_secret_env(provider)
        value = env.get(variable)
        source = f"${variable}"
        if not value and self.secret_file is not None:
            value = _read_secret_file(self.secret_file)
            source = str(self.secret_file)
        if not value or not value.strip():
            raise ConfigError(
                f"no webhook signing secret for {provider}",
                hint=f"set {variable}, or secret_file in [webhooks] of batcher.toml",
            )
        value = value.strip()
        if not value.isascii() or any(not ch.isprintable() or ch.isspace() for ch in value):
            raise ConfigError(
                f"the webhook secret in {source} contains characters a provider never issues",
                hint="copy the secret again, exactly as `batcher webhooks subscribe` wrote it",
            )
        return SecretStr(value)


def webhook_secret_env(provider: str) -> str:
    return f"{profile_for(provider).name.upper()}_WEBHOOK_SECRET"


def _read_secret_file(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"{path} holds a webhook secret but is readable by others",
                hint=f"run: chmod 600 {path}",
            )
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the webhook secret file {path} ({exc.strerror})") from None


def _truthy(raw: str) -> bool:
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def webhook_settings(
    config: Mapping[str, Any], environ: Mapping[str, str] | None = None, path: Path | None = None
) -> WebhookSettings:
    """Flags aside, the environment wins over batcher.toml."""
    env = os.environ if environ is None else environ
    section = config.get("webhooks", {})
    where = f"{path or config_path_from(env)} [webhooks]"
    if not isinstance(section, Mapping):
        raise ConfigError(f"{where} must be a table")
    enabled = section.get("enabled", False)
    if "BATCHER_WEBHOOKS" in env:
        enabled = _truthy(env["BATCHER_WEBHOOKS"])
    if not isinstance(enabled, bool):
        raise ConfigError(f"{where}: enabled must be true or false")
    margin = env.get("BATCHER_WEBHOOK_POLL_MARGIN", section.get("poll_margin_seconds", 90.0))
    try:
        margin_seconds = float(margin)
    except (TypeError, ValueError):
        margin_seconds = -1.0
    if not margin_seconds >= 0:  # also refuses NaN
        raise ConfigError(f"{where}: poll_margin_seconds must be a number of seconds >= 0")
    raw_file = section.get("secret_file")
    if raw_file is not None and not isinstance(raw_file, str):
        raise ConfigError(f"{where}: secret_file must be a path")
    secret_file = None
    if raw_file:
        secret_file = Path(raw_file).expanduser()
        if not secret_file.is_absolute() and path is not None:
            secret_file = path.parent / secret_file  # relative to batcher.toml
    return WebhookSettings(bool(enabled), margin_seconds, secret_file)
