"""The UGiftMe `/__sandbox` control endpoints (the shared ones are in
`batcher.sandbox.controls`; the package docstring lists them all)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import replace
from decimal import Decimal
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from batcher.core.money import round_money
from batcher.sandbox.common import FAULT_KINDS, iso_now, money_input
from batcher.sandbox.controls import (
    control_account,
    control_flag,
    control_money,
    control_number,
    control_object,
    faults_json,
    filtered_accounts,
    path_currency,
    rate_limit_json,
    shared_control_routes,
)
from batcher.sandbox.dialect import Dialect
from batcher.sandbox.jsonio import json_response
from batcher.sandbox.ugiftme.config import API_ROOT
from batcher.sandbox.ugiftme.engine import UGiftMeSandbox
from batcher.sandbox.ugiftme.errors import ApiError, invalid
from batcher.sandbox.ugiftme.params import sandbox_of
from batcher.sandbox.ugiftme.state import Account, Wallet
from batcher.sandbox.ugiftme.webhook_controls import webhook_control_routes


def _account(request: Request) -> Account:
    account: Account = control_account(request)
    return account


def _wallet_control_json(wallet: Wallet) -> dict[str, Any]:
    return {
        "currency": wallet.currency,
        "balance": wallet.balance,
        "held": wallet.held,
        "availableBalance": wallet.available,
        "holds": dict(wallet.holds),
    }


def _config_json(sandbox: UGiftMeSandbox) -> dict[str, Any]:
    return {
        "provider": "ugiftme",
        "apiRoot": API_ROOT,
        "apiKeys": sandbox.api_keys,
        "asyncMode": sandbox.async_mode,
        "asyncDelaySeconds": Decimal(str(sandbox.async_delay_seconds)),
        "bulkLimit": sandbox.bulk_limit,
        "idempotencyTtlSeconds": Decimal(str(sandbox.idempotency.ttl_seconds)),
        "idempotencyReplayErrors": sandbox.replay_errors,
        "webhookTimeScale": Decimal(str(sandbox.webhooks.time_scale)),
        "rateLimit": rate_limit_json(sandbox.limiter),
        "faults": faults_json(sandbox.faults),
    }


async def control_patch_config(request: Request) -> Response:
    sandbox, body = sandbox_of(request), await control_object(request)
    if "asyncMode" in body:
        sandbox.async_mode = control_flag(request, body, "asyncMode")
    if "asyncDelaySeconds" in body:
        sandbox.async_delay_seconds = control_number(request, body, "asyncDelaySeconds")
    if "bulkLimit" in body:
        sandbox.bulk_limit = int(control_number(request, body, "bulkLimit", low=1))
    if "idempotencyTtlSeconds" in body:
        sandbox.idempotency.ttl_seconds = control_number(request, body, "idempotencyTtlSeconds")
    if "webhookTimeScale" in body:
        sandbox.webhooks.time_scale = control_number(request, body, "webhookTimeScale")
    if "idempotencyReplayErrors" in body:
        sandbox.replay_errors = bool(body["idempotencyReplayErrors"])
    return json_response(_config_json(sandbox))


async def control_mode(request: Request) -> Response:
    sandbox, body = sandbox_of(request), await control_object(request)
    mode = body.get("mode")
    if mode not in {"sync", "async"}:
        raise invalid('mode must be "sync" or "async"')
    sandbox.async_mode = mode == "async"
    if "asyncDelaySeconds" in body:
        sandbox.async_delay_seconds = control_number(request, body, "asyncDelaySeconds")
    return json_response(_config_json(sandbox))


async def control_wallets(request: Request) -> Response:
    account = _account(request)
    wallets = sorted(account.wallets.values(), key=lambda w: w.currency)
    return json_response(
        {"apiKey": account.api_key, "wallets": [_wallet_control_json(w) for w in wallets]}
    )


async def control_fund(request: Request) -> Response:
    account, currency = _account(request), path_currency(request)
    body = await control_object(request)
    amount = control_money(request, body.get("amount"), currency, "amount")
    if amount <= 0:
        raise invalid("amount must be positive")
    wallet = sandbox_of(request).fund(account, currency, amount)
    return json_response(_wallet_control_json(wallet))


async def control_drain(request: Request) -> Response:
    account, currency = _account(request), path_currency(request)
    wallet = sandbox_of(request).set_balance(account, currency, round_money(Decimal(0), currency))
    return json_response(_wallet_control_json(wallet))


async def control_set_wallet(request: Request) -> Response:
    account, currency = _account(request), path_currency(request)
    body = await control_object(request)
    balance = control_money(request, body.get("balance"), currency, "balance")
    wallet = sandbox_of(request).set_balance(account, currency, balance)
    return json_response(_wallet_control_json(wallet))


async def control_ip_allow_list(request: Request) -> Response:
    account, body = _account(request), await control_object(request)
    ips = body.get("ips")
    if ips is not None:
        if not isinstance(ips, list) or not all(isinstance(ip, str) for ip in ips):
            raise invalid("ips must be a list of addresses or null")
        try:
            for entry in ips:
                ipaddress.ip_network(entry, strict=False)
        except ValueError as exc:
            raise invalid(str(exc)) from None
    account.ip_allow_list = ips
    return json_response({"apiKey": account.api_key, "ips": ips})


async def control_profile(request: Request) -> Response:
    account, body = _account(request), await control_object(request)
    if not isinstance(body.get("complete"), bool):
        raise invalid("complete must be a boolean")
    account.profile_complete = body["complete"]
    return json_response({"apiKey": account.api_key, "complete": account.profile_complete})


_PRODUCT_FIELDS = {
    "isActive": "is_active",
    "discount": "discount",
    "minValue": "min_value",
    "maxValue": "max_value",
    "denominations": "denominations",
}


async def control_patch_product(request: Request) -> Response:
    sandbox, body = sandbox_of(request), await control_object(request)
    product = sandbox.catalog.get(request.path_params["code"])
    if product is None:
        raise ApiError(404, "Product not found")
    changes: dict[str, Any] = {}
    for name, attr in _PRODUCT_FIELDS.items():
        if name not in body:
            continue
        value = body[name]
        if name == "isActive":
            if not isinstance(value, bool):
                raise invalid("isActive must be a boolean")
            changes[attr] = value
        elif name == "denominations":
            if not isinstance(value, list):
                raise invalid("denominations must be a list")
            changes[attr] = tuple(control_money(request, v, product.currency, name) for v in value)
        else:
            changes[attr] = _money_input_or_400(value, name)
    if not changes:
        raise invalid(f"provide one of {', '.join(_PRODUCT_FIELDS)}")
    updated = replace(product, **changes, updated_at=iso_now())
    sandbox.catalog[product.code] = updated
    sandbox.emit_product_updated(updated, [n for n in _PRODUCT_FIELDS if n in body])
    return json_response(updated.as_json())


def _money_input_or_400(raw: Any, name: str) -> Decimal:
    try:
        return money_input(raw)
    except (TypeError, ValueError):
        raise invalid(f"{name} must be a number") from None


async def control_orders(request: Request) -> Response:
    orders = sorted(
        (o for account in filtered_accounts(request) for o in account.orders), key=lambda o: o.seq
    )
    rows = [
        {
            **o.body,
            "apiKey": o.api_key,
            "idempotencyKey": o.idempotency_key,
            "orderRequestId": o.order_request_id,
            "cost": o.cost,
        }
        for o in orders
    ]
    return json_response({"total": len(rows), "orders": rows})


async def control_order_requests(request: Request) -> Response:
    rows = [
        {
            **r.as_json(),
            "apiKey": r.api_key,
            "idempotencyKey": r.idempotency_key,
            "currency": r.currency,
            "hold": r.hold,
            "orderCount": r.order_count,
        }
        for account in filtered_accounts(request)
        for r in account.requests.values()
    ]
    return json_response({"total": len(rows), "orderRequests": rows})


def control_routes() -> list[BaseRoute]:
    return [
        *shared_control_routes(),
        Route("/config", control_patch_config, methods=["PATCH"]),
        Route("/mode", control_mode, methods=["PUT"]),
        Route("/wallets", control_wallets, methods=["GET"]),
        Route("/wallets/{currency}/fund", control_fund, methods=["POST"]),
        Route("/wallets/{currency}/drain", control_drain, methods=["POST"]),
        Route("/wallets/{currency}", control_set_wallet, methods=["PUT"]),
        Route("/account/ip-allow-list", control_ip_allow_list, methods=["PUT"]),
        Route("/account/profile", control_profile, methods=["PUT"]),
        Route("/products/{code}", control_patch_product, methods=["PATCH"]),
        Route("/orders", control_orders, methods=["GET"]),
        Route("/order-requests", control_order_requests, methods=["GET"]),
        *webhook_control_routes(),
    ]


def _counts(accounts: Sequence[Account]) -> dict[str, int]:
    return {
        "orders": sum(len(a.orders) for a in accounts),
        "orderRequests": sum(len(a.requests) for a in accounts),
    }


DIALECT = Dialect(
    provider="ugiftme",
    token_headers=("x-api-key",),
    fault_kinds=FAULT_KINDS,
    invalid=invalid,
    invalid_json=lambda detail: ApiError(400, "Invalid JSON", message=detail),
    unknown_account=lambda: ApiError(404, "Unknown API key"),
    account_required=lambda count: ApiError(
        400, "X-API-Key required", message=f"{count} keys are configured"
    ),
    routing_error=lambda message: {"error": message},
    config_json=_config_json,
    counts=_counts,
)
