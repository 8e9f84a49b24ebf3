"""GIFQ API client, in two modes.

**Orders mode** (`GifqOrders`): one gift card per `POST /api/orders`, so the
submit unit is a single item and the idempotency key travels in the body as the
order's `reference` (GIFQ deduplicates on it: the same reference and body
return the existing order with 200).

**Payouts mode** (`GifqPayouts`): up to 1,000 recipients per
`POST /api/payout-orders`, who later choose their own card. The key travels in
an `Idempotency-Key` header, which GIFQ does not document, so an unanswered
payout order is looked up before anything is resent.

Choices where the contract is silent (each one is tested):

- Requests are paced to GIFQ's documented 10 per second (`RATE_WINDOW`): ten
  back to back, the eleventh a second (and 2 ms) after the first one's answer. GIFQ counts
  fixed one-second windows and sends no remaining-count headers.
- Completion is read from the newest-first order list, 20 orders a page. Polls
  are answered from an `OrderBoard` that is read again only when a poll needs
  it and it is stale (see `OrderBoard.stale`: while orders are created fast,
  once two pages would be nearly full), and then only as many pages as the
  orders being waited for need. An order not on the first `SCAN_PAGES`
  pages is fetched with `GET /api/orders/:id` from then on. Each read reaches the
  newest order of the one before, so together they are one unbroken stretch of
  the list (`ListedStretch`), which `orders()` reuses: it reads only the orders
  above the stretch, those not final in it, and those below it in the window.
- The order list carries no redemption details, so a result read from it has
  no voucher code; `redemption(order_id)` fetches them. They are bearer
  credentials: they go into the returned object and nowhere else.
- An order's cost is its `price` in its own currency; a cross-currency order
  costs `fx_fee.total_charged` in the payment currency (converted price plus
  the 1% fee), which is what its wallet `order` and `fx_fee` debits add up to.
- A failed order (refunded automatically) gets error_code `request_failed`, a
  fulfilment failure the next run retries. A 422 gets `insufficient_funds`
  (with the shortfall read from its message), `out_of_stock`,
  `idempotency_key_reused` or `validation_error`, and keeps its `request_id`.
- `lookup` in orders mode scans at most `LOOKUP_PAGES` pages for the reference.
  None means "not on those pages": never created, or older than the pages
  scanned. Either way the caller resends the same bytes, which GIFQ
  deduplicates by reference, so a resend never creates a second card.
- `lookup` in payouts mode matches campaign, wallet currency, recipient count,
  total and (once listed) the recipients themselves; see `GifqPayouts.lookup`
  for when it answers None and when it stops the run instead of guessing.
- Payouts carry no item index, so they are matched to rows by (email, amount,
  currency), preferring the same name; rows equal on all of these are
  interchangeable and are paired in listing order.
- Wallet transactions are read newest first only once the list shows itself
  so (GIFQ does not document its order); otherwise every page is read.

The token never appears in a message: `ApiClient` scrubs provider text, and the
account id is a fingerprint, never the token.
"""

from __future__ import annotations

from batcher.config import ProviderSettings
from batcher.providers.base import Provider, ProviderOptions
from batcher.providers.gifq.board import ListedStretch, ListOrder, OrderBoard
from batcher.providers.gifq.common import LOOKUP_PAGES, PACE_MARGIN, GifqBase, account_fingerprint
from batcher.providers.gifq.orders import SCAN_PAGES, GifqOrders
from batcher.providers.gifq.parse import (
    PAGE_LIMIT,
    amount_text,
    is_last_page,
    map_payouts,
    order_body,
    order_cost,
    order_result,
    page_params,
    parse_brand,
    parse_redemption,
    parse_transaction,
    payout_order_body,
    rejection_code,
    shortfall,
)
from batcher.providers.gifq.payouts import CLOCK_SKEW, PAYOUT_LOOKUP_PAGES, GifqPayouts


def connect_gifq(
    settings: ProviderSettings, *, options: ProviderOptions, max_rate: float | None = None
) -> Provider:
    """The GIFQ client for the run's mode: orders or payouts."""
    if options.mode == "payouts":
        return GifqPayouts(settings, options=options, max_rate=max_rate)
    return GifqOrders(settings, options=options, max_rate=max_rate)


__all__ = [
    "CLOCK_SKEW",
    "LOOKUP_PAGES",
    "PACE_MARGIN",
    "PAGE_LIMIT",
    "PAYOUT_LOOKUP_PAGES",
    "SCAN_PAGES",
    "GifqBase",
    "GifqOrders",
    "GifqPayouts",
    "ListOrder",
    "ListedStretch",
    "OrderBoard",
    "account_fingerprint",
    "amount_text",
    "connect_gifq",
    "is_last_page",
    "map_payouts",
    "order_body",
    "order_cost",
    "order_result",
    "page_params",
    "parse_brand",
    "parse_redemption",
    "parse_transaction",
    "payout_order_body",
    "rejection_code",
    "shortfall",
]
