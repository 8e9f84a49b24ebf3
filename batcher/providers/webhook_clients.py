"""The one place that maps a provider name to its webhook client and event reader."""

from __future__ import annotations

from batcher.config import ProviderSettings
from batcher.core.errors import UsageError
from batcher.providers.webhooks import EventReader, WebhookClient


def connect_webhooks(settings: ProviderSettings) -> WebhookClient:
    if settings.provider == "ugiftme":
        from batcher.providers.ugiftme_webhooks import UGiftMeWebhooks

        return UGiftMeWebhooks(settings)
    raise UsageError(f"{settings.provider} has no webhooks batcher can use")


def event_reader(provider: str) -> EventReader:
    if provider == "ugiftme":
        from batcher.providers.ugiftme_webhooks import read_event

        return read_event
    raise UsageError(f"{provider} has no webhooks batcher can use")
