"""Local simulators of the gift-card providers, for rehearsals and end-to-end tests.

- `batcher sandbox serve [--provider gifq] --port 0` runs one in the foreground and
  prints its URL.
- `batcher.sandbox.server.running_sandbox("ugiftme", **overrides)` runs one in a
  thread and yields a `SandboxHandle` (`base_url`, `api_key`, `control(...)`).
- `batcher.sandbox.ugiftme` is the UGiftMe API (a package: config, catalog, state,
  engine, webhooks, routes, gate, controls, app); its docstring lists the
  `/__sandbox` control endpoints and the choices made where the contract is silent.
- `batcher.sandbox.gifq` is the GIFQ API (`running_sandbox("gifq")`, base URL
  `.../api`), laid out the same; its docstring does the same for `/api/__sandbox`.
- Shared by both: `common` (rate limiter, fault injector, request log, delayed-task
  scheduler, the connection drop, config inputs), `jsonio` (Decimal-exact JSON),
  `idempotency` (keys and the idempotent flow), `base` (`SandboxCore`, the state
  every sandbox starts with), `dialect` (how a provider words its errors),
  `handlers` (JSON body, Idempotency-Key, idempotent creation), `controls` (the
  control handlers and account selection both share) and `asgi` (gate mechanics,
  lifespan and the app factory).

Nothing here is imported by the batcher client; the sandbox only speaks HTTP.
"""
