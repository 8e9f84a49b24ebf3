"""The webhook event names in the providers' contracts (docs/webhooks.md).

Both the UGiftMe client and the UGiftMe sandbox speak this vocabulary, so it lives
here, where both may import it, rather than in two copies that could drift apart.
"""

from __future__ import annotations

from typing import Final

#: every event a UGiftMe webhook subscription may name (the contract's `validEvents`)
UGIFTME_EVENTS: Final = (
    "order.queued",
    "order.processing",
    "order.succeeded",
    "order.failed",
    "product.updated",
    "wallet.updated",
)
