"""The startup configuration every sandbox shares: keys, rate limit, timing, funding
and faults. Each provider's config subclasses it, restating a default where it differs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import ClassVar

from batcher.sandbox.common import FAULT_KINDS, FaultSettings, merge_funding, unique_api_keys

# FaultSettings' knobs that a config carries under the same names.
_FAULT_KNOBS = ("latency_ms", "burst_seconds", "seed", "echo_credentials")


@dataclass
class SandboxConfig:
    """Everything the sandbox starts from; `reset` returns to exactly this."""

    fault_kinds: ClassVar[tuple[str, ...]] = FAULT_KINDS  # each has a `fault_<kind>` rate
    default_funding: ClassVar[Mapping[str, Decimal]] = {}

    api_keys: tuple[str, ...] = ()  # empty: one random UUID key is generated
    rate_limit: int = 120
    rate_window_seconds: float = 60.0
    async_delay_seconds: float = 1.0
    idempotency_ttl_seconds: float = 24 * 3600.0
    # Starting balances per currency, merged over `default_funding`; 0 empties one.
    funding: Mapping[str, Decimal | int | str] = field(default_factory=dict)
    seed: int | None = None
    fault_500: float = 0.0
    fault_429: float = 0.0
    fault_latency: float = 0.0
    latency_ms: int = 250
    fault_drop: float = 0.0
    fault_reject_item: float = 0.0  # a valid order refused
    fault_async_fail: float = 0.0  # an order ends failed and is refunded
    burst_seconds: float = 1.0
    echo_credentials: bool = False  # error texts repeat the caller's key (see FaultSettings)

    def __post_init__(self) -> None:
        self.api_keys = unique_api_keys(self.api_keys)
        self.funding = merge_funding(self.default_funding, self.funding)

    def fault_settings(self) -> FaultSettings:
        """The `fault_<kind>` rates (each checked to lie in 0..1) and the fault knobs."""
        rates = {kind: getattr(self, f"fault_{kind}") for kind in self.fault_kinds}
        for kind, rate in rates.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"fault rate for {kind!r} must be within 0..1")
        knobs = {name: getattr(self, name) for name in _FAULT_KNOBS}
        return FaultSettings(rates=rates, **knobs)
