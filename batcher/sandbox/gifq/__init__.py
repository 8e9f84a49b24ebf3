"""A faithful local GIFQ API, for rehearsals and end-to-end tests.

The API lives under ``/api`` and follows the GIFQ API contract line by line.
Each configured token (``X-Api-Token``) is its own account, with its own
balances, transactions, orders, payout orders, campaigns, idempotency keys and
rate-limit window. The catalog (and its stock) is shared, as at GIFQ.

Sandbox controls live at ``/api/__sandbox`` (never rate limited, never faulted,
no token needed). An account is chosen with the ``X-Api-Token`` (or
``X-API-Key``) header, which may be left out when only one token is configured.
Listings (orders, payout orders, payouts, stats) cover every account unless the
header narrows them to one. Control bodies are JSON; money may be a JSON number
or a decimal string.

======================================  ===================================================
``GET    /health``                      ``{"ok": true, "provider": "gifq"}``
``GET    /config``                      runtime settings (delays, limits, FX, faults, tokens)
``PATCH  /config``                      any of ``asyncDelaySeconds``,
                                        ``idempotencyTtlSeconds``, ``maxRecipients``,
                                        ``fxRates`` (``{"GBP/USD": "1.27"}``, merged),
                                        ``fxFeePercent``, ``payoutRedeemRate``,
                                        ``daySeconds``, ``clampPageLimit``
``GET    /faults``                      ``{"500","429","latency","drop","reject_item",
                                        "async_fail","payout_fail","latencyMs",
                                        "burstSeconds","seed","echoCredentials","counts"}``
``PATCH  /faults``                      any of the keys above (PUT too); ``seed``, even
                                        null, reseeds the one ``random.Random``;
                                        ``echoCredentials: true`` makes error messages
                                        and ``failure_reason`` texts repeat the
                                        caller's ``X-Api-Token``
``PUT    /rate-limit``                  ``{"limit": 10, "windowSeconds": 1}``; windows restart
``GET    /balances``                    ``{"apiKey", "balances": [{currency, amount}]}``
``POST   /balances/{cur}/fund``         ``{"amount": "100.00"}``: a ``top_up`` transaction
``POST   /balances/{cur}/drain``        balance to 0 (no transaction)
``PUT    /balances/{cur}``              ``{"amount": "5.00"}`` (no transaction)
``GET    /campaigns``                   ``{"apiKey", "campaigns": [campaign]}``
``POST   /campaigns``                   ``{"title", "status"?, "brands"?, "id"?}`` -> 201;
                                        status defaults to active, brands to the catalog
``PATCH  /campaigns/{id}``              any of ``status``, ``title``, ``brands``
``PATCH  /products/{option_id}``        any of ``stock_count`` (null: unlimited),
                                        ``discount``, ``min_face_value``, ``max_face_value``
``GET    /orders``                      ``{"total", "orders": [order with redemption +
                                        apiKey, charged, chargedCurrency, optionId,
                                        requestId]}``, oldest first
``GET    /payout-orders``               ``{"total", "payoutOrders": [payout order + apiKey,
                                        idempotencyKey, charged, recipients]}``
``GET    /payouts``                     ``{"total", "payouts": [payout + apiKey]}``
``PATCH  /payouts/{id}``                ``{"status": "sent"|"redeemed"|"expired"}``
``GET    /callbacks``                   every ``callback_url`` delivery attempt
``GET    /stats``                       ``{"requests": {token: n}, "tooManyRequests",
                                        "tooManyRequestsTotal", "statusCounts", "faults",
                                        "orders", "payoutOrders", "payouts",
                                        "scheduledTasks", "workerErrors", "log": [{"seq",
                                        "t", "apiKey", "method", "path", "query",
                                        "status", "retryAfter", "fault"}]}``;
                                        ``?since=SEQ``, ``?log=false``
``POST   /reset``                       back to the startup configuration, all data gone
======================================  ===================================================

Choices where the contract is silent (each is pinned by a test in tests/sandbox):

- Every API answer carries ``X-Request-Id``; every 422 body repeats it as
  ``request_id``. Malformed JSON is 400; every other validation failure is 422.
- ``limit`` above 20 is refused with 400 ``Pagination error: expected :limit in
  1..20; got 50`` (``clamp_page_limit=True`` lowers it quietly instead, as pagy's
  ``max_items`` does). ``page-items`` is the page size in effect (pagy's meaning),
  not the number of items on the page. An empty list has one (empty) page. A
  ``Link`` header names the first, prev, next and last pages.
- The 10 req/s limit is a fixed one-second window per token, opened by the
  first request after the previous window closed (unauthenticated calls share a
  window per IP). Refused requests count too. ``Retry-After`` is whole seconds,
  at least 1. No other rate-limit header is ever sent.
- Catalog amounts (face values, discount) are JSON numbers; order, balance,
  transaction and payout amounts are decimal strings with the currency's minor
  units. Requests may use either.
- Order matching: ``brand`` is the exact slug, ``currency``/``country``/
  ``payment_currency`` are case-insensitive codes; the option must list the
  country, have the currency and admit the face value (min..max, minor units).
- The reference check comes first: a known reference answers 200 with the order
  as it is now (redemption included once completed, even if it ended ``failed``),
  or 422 when brand, currency, face value (numerically), country or payment
  currency differ. A refused creation creates nothing, so its reference stays free.
- ``payment_currency`` equal to ``currency`` (or null) means no conversion and no
  ``fx_fee``. With conversion: converted = price x rate, fee = converted x 1%,
  each half-up to the payment currency's minor units; transactions are an
  ``order`` debit of the converted price and an ``fx_fee`` debit of the fee.
- Stock is taken when the order is created and given back if it fails.
- The ``reject_item`` fault refuses a valid order with 422 ``Out of stock``;
  ``async_fail`` makes an order end ``failed``, refunded in one ``refund``
  transaction; ``payout_fail`` fails a whole payout order, refunded likewise,
  with one ``failed`` payout per recipient. ``drop`` hits fresh 201/202
  creations only, never a replay.
- Payout orders: recipients may use any currency with a rate to
  ``wallet_currency``; each amount is converted half-up, the 1% fee applies to
  the converted foreign part, ``total_amount`` is the converted sum before the
  fee and ``fx_fee`` (``rates``, ``fee_percentage``, ``fee_amount``,
  ``total_charged``, ``currency``) appears when a fee applies. The charge is one
  ``payout`` debit (plus ``fx_fee``). The answers carry no recipients; they are
  the payouts. ``GET /payouts?payout_order_id=`` lists them in recipient order
  (an unknown id gives an empty list); without the filter, newest first.
- ``Idempotency-Key`` on payout orders: same key and payload replays the stored
  answer (``Idempotent-Replayed: true``); a different payload is 422; a request
  still running is 409. 2xx and 422 answers are stored; 401/409/429/5xx are not.
- A payout order spends ``async_delay_seconds`` queued, then as long processing.
  Sent payouts become ``redeemed`` one more delay later with probability
  ``payout_redeem_rate`` (seeded), or ``expired`` after ``expires_in_days`` x
  ``day_seconds``; expiry refunds nothing. A control sets any payout's status.
- ``callback_url`` gets one best-effort POST of the payout order JSON when it
  completes or fails (no retries, no signature).
- Top-ups (including the starting balances) are ``top_up`` transactions, so
  transactions always sum to the balances. Control set/drain write none.
"""

from batcher.sandbox.gifq.app import create_app
from batcher.sandbox.gifq.config import GifqSandboxConfig

__all__ = ["GifqSandboxConfig", "create_app"]
