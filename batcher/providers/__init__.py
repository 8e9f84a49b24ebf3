"""Provider clients. `connect` is the one place that maps a provider name to a class."""

from __future__ import annotations

from batcher.config import ProviderSettings
from batcher.providers.base import Provider


def connect(settings: ProviderSettings, *, max_rate: float | None = None) -> Provider:
    """Open a client for the configured provider, with its shared rate limiter."""
    if settings.provider == "ugiftme":
        from batcher.providers.ugiftme import UGiftMeProvider

        return UGiftMeProvider(settings, max_rate=max_rate)
    raise NotImplementedError(f"provider {settings.provider!r} has no client yet")
