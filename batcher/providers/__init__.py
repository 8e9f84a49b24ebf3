"""Provider clients. `connect` is the one place that maps a provider name to a class."""

from __future__ import annotations

from batcher.config import ProviderSettings
from batcher.core.errors import UsageError
from batcher.providers.base import Provider, ProviderOptions


def connect(
    settings: ProviderSettings,
    *,
    max_rate: float | None = None,
    options: ProviderOptions | None = None,
) -> Provider:
    """Open a client for the configured provider, with its shared rate limiter."""
    options = options or ProviderOptions()
    if settings.provider == "ugiftme":
        if options.mode != "orders":
            raise UsageError("UGiftMe has no payouts mode", hint="drop --payouts")
        from batcher.providers.ugiftme import UGiftMeProvider

        return UGiftMeProvider(settings, max_rate=max_rate, shared_pace=options.shared_pace)
    if settings.provider == "gifq":
        from batcher.providers.gifq import connect_gifq

        return connect_gifq(settings, max_rate=max_rate, options=options)
    raise UsageError(f"provider {settings.provider!r} has no client")
