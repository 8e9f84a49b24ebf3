"""A faithful local UGiftMe Business API, for rehearsals and end-to-end tests.

The API lives under ``/api/v1/business`` and follows the UGiftMe Business API contract
line by line. Each configured API key is its own business account, with its own
wallets, orders, order requests, idempotency keys, rate-limit window and webhooks.

Sandbox controls live at the host root under ``/__sandbox`` (never under the API
root, never rate limited, never faulted). An account is chosen with the
``X-API-Key`` header, which may be left out when only one key is configured.
Listing endpoints (orders, order-requests, stats) cover every account unless the
header narrows them to one. All bodies are JSON; money may be sent as a JSON
number or a decimal string.

====================================  ===================================================
``GET    /__sandbox/health``           ``{"ok": true}``
``GET    /__sandbox/config``           runtime settings (mode, delays, limits, faults, keys)
``PATCH  /__sandbox/config``           any of ``asyncMode``, ``asyncDelaySeconds``,
                                       ``bulkLimit``, ``idempotencyTtlSeconds``,
                                       ``webhookTimeScale``
``PUT    /__sandbox/mode``             ``{"mode": "sync"|"async", "asyncDelaySeconds"?}``
``GET    /__sandbox/faults``           ``{"500","429","latency","drop","reject_item",
                                       "async_fail","latencyMs","burstSeconds","seed",
                                       "echoCredentials","counts"}``
``PATCH  /__sandbox/faults``           any of the keys above (PUT too); ``seed``, even
                                       null, reseeds the one ``random.Random``;
                                       ``echoCredentials: true`` makes error messages,
                                       ``rejectedOrders`` reasons and ``order.failed``
                                       errors repeat the caller's ``X-API-Key``
``PUT    /__sandbox/rate-limit``       ``{"limit": 120, "windowSeconds": 60}``; windows restart
``GET    /__sandbox/wallets``          ``{"wallets": [{currency, balance, held,
                                       availableBalance, holds}]}``
``POST   /__sandbox/wallets/{cur}/fund``   ``{"amount": "100.00"}``: a ``funding``
                                       transaction; creates the wallet if needed
``POST   /__sandbox/wallets/{cur}/drain``  balance to 0 (no transaction)
``PUT    /__sandbox/wallets/{cur}``    ``{"balance": "5.00"}`` (no transaction)
``PUT    /__sandbox/account/ip-allow-list``  ``{"ips": ["10.0.0.0/8", ...] | null}``
``PUT    /__sandbox/account/profile``  ``{"complete": false}``: every API call gets 403
``PATCH  /__sandbox/products/{code}``  any of ``isActive``, ``discount``, ``minValue``,
                                       ``maxValue``, ``denominations``; emits
                                       ``product.updated``
``GET    /__sandbox/orders``           ``{"total", "orders": [order + apiKey,
                                       idempotencyKey, orderRequestId, cost]}``
``GET    /__sandbox/order-requests``   ``{"total", "orderRequests": [...]}``
``GET    /__sandbox/webhooks/deliveries``  every delivery with its attempts
                                       (``statusCode``, ``error``, ``duplicate``,
                                       ``waitedSeconds``)
``GET    /__sandbox/webhooks/hostility``  ``{timeScale, retryDelaysSeconds, duplicateRate,
                                       jitterSeconds, seed, outageRemainingSeconds}``
``PATCH  /__sandbox/webhooks/hostility``  any of ``duplicateRate`` (0..1),
                                       ``jitterSeconds``, ``seed`` (reseeds, even null),
                                       ``timeScale``, ``outageSeconds`` (the receiver
                                       is down from now on for that long; 0 ends it);
                                       all are checked before any applies
``POST   /__sandbox/webhooks/forge``   ``{"kind": "bad-signature"|"unsigned"|"replay",
                                       "url", "deliveryId"?}``: one forged POST to
                                       ``url``; a replay is the newest (or the given)
                                       real delivery's genuine signature over a changed
                                       body (``replayed: true``); 409 when there is
                                       nothing to replay, 404 for an unknown id
``GET    /__sandbox/stats``            ``{"requests": {key: n}, "tooManyRequests": {key: n},
                                       "tooManyRequestsTotal", "statusCounts", "faults",
                                       "orders", "orderRequests", "log": [{"seq", "t",
                                       "apiKey", "method", "path", "status",
                                       "retryAfter", "fault"}]}``; ``t`` is monotonic
                                       seconds; ``?since=SEQ``, ``?log=false``
``POST   /__sandbox/reset``            back to the startup configuration, all data gone
====================================  ===================================================

Choices where the contract is silent (each is pinned by a test in tests/sandbox):

- Sync bulk: items are validated one by one; the funding check covers the items
  that pass validation, all or nothing, before anything is created.
- Async: the request shape (JSON, ``orders`` array, size, one currency) is checked
  at acceptance (400); the hold covers the items that pass validation at that
  moment (402 if it cannot be placed). Item validation runs again in the worker,
  where rejections and the ``reject_item`` fault land in ``rejectedOrders``. A
  single async order that fails validation ends ``failed`` with the reason.
- A request whose items are all rejected still succeeds (201, or ``succeeded``)
  with ``orders: []`` and every item in ``rejectedOrders``.
- Idempotency: 2xx, 400 and 402 answers from the order handlers are stored and
  replayed (Stripe-like; ``idempotency_replay_errors=False`` stores only 2xx).
  401/403/409/429 and every 5xx are never stored, so a retry is handled afresh.
  Payloads are compared after canonical serialisation (sorted keys, numbers
  normalised, so 50 == 50.00), together with the route.
- The ``drop`` fault only hits a fresh commit, never a replay, so a retry with
  the same key always gets the committed answer.
- Order lists (``GET /orders`` and ``/orders/search``) strip ``voucherCode`` and
  ``redemptionUrl``; ``GET /orders/{id}`` and creation answers carry both.
- ``limit`` above 100 or a malformed ``page`` gets 400; a page past the end is empty.
- The webhook body is the event payload plus an ``event`` key; the signature is
  keyed with the secret's UTF-8 bytes. ``GET /webhooks`` answers ``{"webhooks": [...]}``.
- Hostile deliveries (config ``webhook_duplicate_rate``, ``webhook_jitter_seconds``,
  ``webhook_time_scale``, ``seed``, or the hostility control): a delivered event is
  sent once more, signed alike, with the duplicate rate; every attempt first waits a
  random 0..jitter seconds, so events arrive out of order; the draws come from one
  ``random.Random`` of their own, seeded, apart from the faults'. Retries follow
  the contract's 1 min, 5 min, 15 min, 1 h, 4 h times the time scale. During an
  outage attempts fail without a request, and once the schedule is spent retries
  go on at its last interval until the outage is over.
- Merchant names match case-insensitively; currency codes must match exactly.
- ``GET /wallet`` lists each wallet's 20 newest transactions; ``/wallet/transactions``
  pages through all of them. Control set/drain write no transaction.
- Order requests spend ``async_delay_seconds`` queued, then as long processing.
- The incomplete-profile 403 applies to every API call, not only ``/auth``.
"""

from batcher.sandbox.ugiftme.app import create_app
from batcher.sandbox.ugiftme.config import UGiftMeSandboxConfig

__all__ = ["UGiftMeSandboxConfig", "create_app"]
