"""Local simulators of the gift-card providers, for rehearsals and end-to-end tests.

- `batcher sandbox serve [--provider gifq] --port 0` runs one in the foreground and
  prints its URL.
- `batcher.sandbox.server.running_sandbox("ugiftme", **overrides)` runs one in a
  thread and yields a `SandboxHandle` (`base_url`, `api_key`, `control(...)`).
- `batcher.sandbox.ugiftme` is the UGiftMe API; its docstring lists the
  `/__sandbox` control endpoints and the choices made where the contract is silent.
- `batcher.sandbox.gifq` is the GIFQ API (`running_sandbox("gifq")`, base URL
  `.../api`); its docstring does the same for its `/api/__sandbox` controls.
- `batcher.sandbox.common` holds what a second provider's sandbox reuses: rate
  limiter, fault injector, idempotency store, Decimal-exact JSON, the connection
  drop, the request log and the delayed-task scheduler, plus the config inputs
  (money, keys, funding, fault rates), JSON answers and the idempotency flow.
- `batcher.sandbox.controls` holds the `/__sandbox` control logic both share (faults,
  rate limit, stats, reset); `batcher.sandbox.asgi` the gate mechanics (latency fault,
  forwarding with extra headers) and the app lifespan.

Nothing here is imported by the batcher client; the sandbox only speaks HTTP.
"""
