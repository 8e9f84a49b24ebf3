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

from batcher.sandbox.asgi import RouteTable
from batcher.sandbox.common import FAULT_KINDS, iso_now, money_input
from batcher.sandbox.controls import (
    balance_control_routes,
    config_response,
    control_account,
    control_flag,
    control_money,
    control_number,
    control_object,
    filtered_accounts,
    number_setting,
)
from batcher.sandbox.dialect import Dialect, Setting
from batcher.sandbox.jsonio import json_response
from batcher.sandbox.ugiftme.config import API_ROOT
from batcher.sandbox.ugiftme.engine import UGiftMeSandbox
from batcher.sandbox.ugiftme.errors import ApiError, invalid
from batcher.sandbox.ugiftme.params import sandbox_of
from batcher.sandbox.ugiftme.state import Account, Wallet
from batcher.sandbox.ugiftme.webhook_controls import webhook_control_routes

CONTROLS = RouteTable()


def _wallet_json(wallet: Wallet) -> dict[str, Any]:
    return {**wallet.balance_json(), "held": wallet.held, "holds": dict(wallet.holds)}


def _settings_json(sandbox: UGiftMeSandbox) -> dict[str, Any]:
    return {
        "asyncMode": sandbox.async_mode,
        "asyncDelaySeconds": Decimal(str(sandbox.async_delay_seconds)),
        "bulkLimit": sandbox.bulk_limit,
        "idempotencyTtlSeconds": Decimal(str(sandbox.idempotency.ttl_seconds)),
        "idempotencyReplayErrors": sandbox.replay_errors,
        "webhookTimeScale": Decimal(str(sandbox.webhooks.time_scale)),
    }


_SETTINGS: dict[str, Setting] = {
    "asyncMode": ("async_mode", control_flag),
    "asyncDelaySeconds": ("async_delay_seconds", number_setting()),
    "bulkLimit": ("bulk_limit", number_setting(low=1, whole=True)),
    "idempotencyTtlSeconds": ("idempotency.ttl_seconds", number_setting()),
    "webhookTimeScale": ("webhooks.time_scale", number_setting()),
    "idempotencyReplayErrors": ("replay_errors", lambda _request, body, name: bool(body[name])),
}


@CONTROLS.route("/mode", "PUT")
async def control_mode(request: Request) -> Response:
    sandbox, body = sandbox_of(request), await control_object(request)
    mode = body.get("mode")
    if mode not in {"sync", "async"}:
        raise invalid('mode must be "sync" or "async"')
    sandbox.async_mode = mode == "async"
    if "asyncDelaySeconds" in body:
        sandbox.async_delay_seconds = control_number(request, body, "asyncDelaySeconds")
    return config_response(request)


CONTROLS.include(balance_control_routes("/wallets", "balance", lambda _, w: _wallet_json(w)))


@CONTROLS.route("/wallets", "GET")
async def control_wallets(request: Request) -> Response:
    account = control_account(request, Account)
    wallets = sorted(account.wallets.values(), key=lambda w: w.currency)
    return json_response({"apiKey": account.api_key, "wallets": [_wallet_json(w) for w in wallets]})


@CONTROLS.route("/account/ip-allow-list", "PUT")
async def control_ip_allow_list(request: Request) -> Response:
    account, body = control_account(request, Account), await control_object(request)
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


@CONTROLS.route("/account/profile", "PUT")
async def control_profile(request: Request) -> Response:
    account, body = control_account(request, Account), await control_object(request)
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


@CONTROLS.route("/products/{code}", "PATCH")
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


@CONTROLS.route("/order-requests", "GET")
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


@CONTROLS.route("/orders", "GET")
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


CONTROLS.include(webhook_control_routes())


def _counts(accounts: Sequence[Account]) -> dict[str, int]:
    return {
        "orders": sum(len(a.orders) for a in accounts),
        "orderRequests": sum(len(a.requests) for a in accounts),
    }


DIALECT = Dialect(
    provider="ugiftme",
    api_root=API_ROOT,
    token_headers=("x-api-key",),
    fault_kinds=FAULT_KINDS,
    invalid=invalid,
    invalid_json=lambda detail: ApiError(400, "Invalid JSON", message=detail),
    unknown_account=lambda: ApiError(404, "Unknown API key"),
    account_required=lambda count: ApiError(
        400, "X-API-Key required", message=f"{count} keys are configured"
    ),
    routing_error=lambda message: {"error": message},
    settings_json=_settings_json,
    settings=_SETTINGS,
    counts=_counts,
)
