"""The UGiftMe sandbox's constants and its startup configuration."""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from batcher.sandbox.config import SandboxConfig

API_ROOT = "/api/v1/business"
CONTROL_ROOT = "/__sandbox"
ASYNC_HEADER = "X-Business-Orders-Async"
DEFAULT_FUNDING: Mapping[str, Decimal] = {
    "GBP": Decimal("10000.00"),
    "EUR": Decimal("10000.00"),
    "USD": Decimal("10000.00"),
}
WEBHOOK_RETRY_DELAYS = (60.0, 300.0, 900.0, 3600.0, 14400.0)  # seconds, before scaling
MAX_KEPT_DELIVERIES = 10_000  # the control listing keeps the most recent ones
MAX_PAGE_LIMIT = 100
DEFAULT_PAGE_LIMIT = 50
ORDER_SORT_FIELDS = ("createdAt", "updatedAt", "valuePurchased", "productCode")
KEPT_ORDER_SEARCHES = 16  # per account: the filtered listings kept for the next page
EMAIL_PATTERN = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
VOUCHER_ALPHABET = "".join(c for c in string.ascii_uppercase + string.digits if c not in "O0I1")


@dataclass
class UGiftMeSandboxConfig(SandboxConfig):
    default_funding = DEFAULT_FUNDING  # 10,000 GBP/EUR/USD

    async_mode: bool = True
    async_delay_seconds: float = 1.0  # time spent in `queued`, then again in `processing`
    idempotency_replay_errors: bool = True  # replay stored 400/402 answers too
    bulk_limit: int = 100
    webhook_time_scale: float = 1.0  # retry delays x this (0.001: 1 min -> 60 ms)
    webhook_duplicate_rate: float = 0.0  # chance a delivered event is delivered again
    webhook_jitter_seconds: float = 0.0  # each attempt waits 0..this first: out of order
    webhook_timeout_seconds: float = 5.0
    business_name: str = "Sandbox Trading Ltd"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bulk_limit < 1:
            raise ValueError("bulk_limit must be at least 1")
        if not 0.0 <= self.webhook_duplicate_rate <= 1.0:
            raise ValueError("webhook_duplicate_rate must be within 0..1")
        if self.webhook_jitter_seconds < 0 or self.webhook_time_scale < 0:
            raise ValueError("webhook_jitter_seconds and webhook_time_scale must not be negative")
