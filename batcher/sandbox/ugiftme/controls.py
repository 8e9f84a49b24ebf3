"""The UGiftMe `/__sandbox` control endpoints."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterator, Mapping
from dataclasses import replace
from decimal import Decimal
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from batcher.core.money import fits_currency, is_currency_code, round_money
from batcher.sandbox.common import (
    FAULT_KINDS,
    iso_now,
    json_response,
    money_input,
    parse_bool,
)
from batcher.sandbox.controls import (
    control_get_faults,
    control_reset,
    faults_json,
    rate_limit_json,
    setting_number,
    stats_json,
    update_faults,
    update_rate_limit,
)
from batcher.sandbox.ugiftme.config import API_ROOT
from batcher.sandbox.ugiftme.engine import UGiftMeSandbox
from batcher.sandbox.ugiftme.errors import ApiError
from batcher.sandbox.ugiftme.params import int_param, json_body, sandbox_of
from batcher.sandbox.ugiftme.state import Account, Wallet


def _control_account(request: Request) -> Account:
    sandbox = sandbox_of(request)
    key = request.headers.get("x-api-key")
    if key:
        account = sandbox.accounts.get(key)
        if account is None:
            raise ApiError(404, "Unknown API key")
        return account
    if len(sandbox.accounts) == 1:
        return next(iter(sandbox.accounts.values()))
    raise ApiError(
        400, "X-API-Key required", message=f"{len(sandbox.accounts)} keys are configured"
    )


def _filtered_accounts(request: Request) -> list[Account]:
    if request.headers.get("x-api-key"):
        return [_control_account(request)]
    return list(sandbox_of(request).accounts.values())


def _amount(raw: Any, currency: str, name: str) -> Decimal:
    try:
        amount = money_input(raw)
    except (TypeError, ValueError):
        raise ApiError(
            400, "Validation failed", message=f"{name} must be a number or decimal string"
        ) from None
    if not fits_currency(amount, currency):
        raise ApiError(
            400, "Validation failed", message=f"{name} has too many decimals for {currency}"
        )
    return round_money(amount, currency)


def _currency(request: Request) -> str:
    currency = request.path_params["currency"].upper()
    if not is_currency_code(currency):
        raise ApiError(400, "Validation failed", message="currency must be a 3-letter ISO code")
    return currency


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


@contextlib.contextmanager
def _refused_setting() -> Iterator[None]:
    """A control setting's ValueError as this contract's 400."""
    try:
        yield
    except ValueError as exc:
        raise ApiError(400, "Validation failed", message=str(exc)) from None


def _number(
    body: Mapping[str, Any], name: str, *, low: float = 0.0, high: float | None = None
) -> float:
    with _refused_setting():
        return setting_number(body, name, low=low, high=high)


async def _control_object(request: Request) -> Mapping[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    body = await json_body(request)
    if not isinstance(body, Mapping):
        raise ApiError(400, "Validation failed", message="body must be a JSON object")
    return body


async def control_health(request: Request) -> Response:
    return json_response({"ok": True, "provider": "ugiftme"})


async def control_get_config(request: Request) -> Response:
    return json_response(_config_json(sandbox_of(request)))


async def control_patch_config(request: Request) -> Response:
    sandbox, body = sandbox_of(request), await _control_object(request)
    if "asyncMode" in body:
        if not isinstance(body["asyncMode"], bool):
            raise ApiError(400, "Validation failed", message="asyncMode must be a boolean")
        sandbox.async_mode = body["asyncMode"]
    if "asyncDelaySeconds" in body:
        sandbox.async_delay_seconds = _number(body, "asyncDelaySeconds")
    if "bulkLimit" in body:
        sandbox.bulk_limit = int(_number(body, "bulkLimit", low=1))
    if "idempotencyTtlSeconds" in body:
        sandbox.idempotency.ttl_seconds = _number(body, "idempotencyTtlSeconds")
    if "webhookTimeScale" in body:
        sandbox.webhooks.time_scale = _number(body, "webhookTimeScale")
    if "idempotencyReplayErrors" in body:
        sandbox.replay_errors = bool(body["idempotencyReplayErrors"])
    return json_response(_config_json(sandbox))


async def control_mode(request: Request) -> Response:
    sandbox, body = sandbox_of(request), await _control_object(request)
    mode = body.get("mode")
    if mode not in {"sync", "async"}:
        raise ApiError(400, "Validation failed", message='mode must be "sync" or "async"')
    sandbox.async_mode = mode == "async"
    if "asyncDelaySeconds" in body:
        sandbox.async_delay_seconds = _number(body, "asyncDelaySeconds")
    return json_response(_config_json(sandbox))


async def control_patch_faults(request: Request) -> Response:
    sandbox, body = sandbox_of(request), await _control_object(request)
    with _refused_setting():
        update_faults(sandbox.faults, body, FAULT_KINDS)
    return json_response(faults_json(sandbox.faults))


async def control_rate_limit(request: Request) -> Response:
    sandbox, body = sandbox_of(request), await _control_object(request)
    with _refused_setting():
        update_rate_limit(sandbox.limiter, body)
    return json_response(rate_limit_json(sandbox.limiter))


async def control_wallets(request: Request) -> Response:
    account = _control_account(request)
    wallets = sorted(account.wallets.values(), key=lambda w: w.currency)
    return json_response(
        {"apiKey": account.api_key, "wallets": [_wallet_control_json(w) for w in wallets]}
    )


async def control_fund(request: Request) -> Response:
    account, currency = _control_account(request), _currency(request)
    body = await _control_object(request)
    amount = _amount(body.get("amount"), currency, "amount")
    if amount <= 0:
        raise ApiError(400, "Validation failed", message="amount must be positive")
    wallet = sandbox_of(request).fund(account, currency, amount)
    return json_response(_wallet_control_json(wallet))


async def control_drain(request: Request) -> Response:
    account, currency = _control_account(request), _currency(request)
    wallet = sandbox_of(request).set_balance(account, currency, round_money(Decimal(0), currency))
    return json_response(_wallet_control_json(wallet))


async def control_set_wallet(request: Request) -> Response:
    account, currency = _control_account(request), _currency(request)
    body = await _control_object(request)
    balance = _amount(body.get("balance"), currency, "balance")
    wallet = sandbox_of(request).set_balance(account, currency, balance)
    return json_response(_wallet_control_json(wallet))


async def control_ip_allow_list(request: Request) -> Response:
    account, body = _control_account(request), await _control_object(request)
    ips = body.get("ips")
    if ips is not None:
        if not isinstance(ips, list) or not all(isinstance(ip, str) for ip in ips):
            raise ApiError(
                400, "Validation failed", message="ips must be a list of addresses or null"
            )
        try:
            for entry in ips:
                ipaddress.ip_network(entry, strict=False)
        except ValueError as exc:
            raise ApiError(400, "Validation failed", message=str(exc)) from None
    account.ip_allow_list = ips
    return json_response({"apiKey": account.api_key, "ips": ips})


async def control_profile(request: Request) -> Response:
    account, body = _control_account(request), await _control_object(request)
    if not isinstance(body.get("complete"), bool):
        raise ApiError(400, "Validation failed", message="complete must be a boolean")
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
    sandbox, body = sandbox_of(request), await _control_object(request)
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
                raise ApiError(400, "Validation failed", message="isActive must be a boolean")
            changes[attr] = value
        elif name == "denominations":
            if not isinstance(value, list):
                raise ApiError(400, "Validation failed", message="denominations must be a list")
            changes[attr] = tuple(_amount(v, product.currency, name) for v in value)
        else:
            changes[attr] = _money_input_or_400(value, name)
    if not changes:
        raise ApiError(
            400, "Validation failed", message=f"provide one of {', '.join(_PRODUCT_FIELDS)}"
        )
    updated = replace(product, **changes, updated_at=iso_now())
    sandbox.catalog[product.code] = updated
    sandbox.emit_product_updated(updated, [n for n in _PRODUCT_FIELDS if n in body])
    return json_response(updated.as_json())


def _money_input_or_400(raw: Any, name: str) -> Decimal:
    try:
        return money_input(raw)
    except (TypeError, ValueError):
        raise ApiError(400, "Validation failed", message=f"{name} must be a number") from None


async def control_orders(request: Request) -> Response:
    orders = sorted(
        (o for account in _filtered_accounts(request) for o in account.orders), key=lambda o: o.seq
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
        for account in _filtered_accounts(request)
        for r in account.requests.values()
    ]
    return json_response({"total": len(rows), "orderRequests": rows})


async def control_deliveries(request: Request) -> Response:
    key = request.headers.get("x-api-key") or None
    deliveries = sandbox_of(request).webhooks.deliveries_json(key)
    return json_response({"total": len(deliveries), "deliveries": deliveries})


async def control_stats(request: Request) -> Response:
    sandbox = sandbox_of(request)
    key = request.headers.get("x-api-key") or None
    since = int_param(request, "since", 0, 0)
    include_log = parse_bool(request.query_params.get("log")) is not False
    accounts = _filtered_accounts(request)
    counts = {
        "orders": sum(len(a.orders) for a in accounts),
        "orderRequests": sum(len(a.requests) for a in accounts),
    }
    return json_response(
        stats_json(sandbox, counts, since=since, bucket=key, include_log=include_log)
    )


def control_routes() -> list[BaseRoute]:
    return [
        Route("/health", control_health, methods=["GET"]),
        Route("/config", control_get_config, methods=["GET"]),
        Route("/config", control_patch_config, methods=["PATCH"]),
        Route("/mode", control_mode, methods=["PUT"]),
        Route("/faults", control_get_faults, methods=["GET"]),
        Route("/faults", control_patch_faults, methods=["PATCH", "PUT"]),
        Route("/rate-limit", control_rate_limit, methods=["PUT"]),
        Route("/wallets", control_wallets, methods=["GET"]),
        Route("/wallets/{currency}/fund", control_fund, methods=["POST"]),
        Route("/wallets/{currency}/drain", control_drain, methods=["POST"]),
        Route("/wallets/{currency}", control_set_wallet, methods=["PUT"]),
        Route("/account/ip-allow-list", control_ip_allow_list, methods=["PUT"]),
        Route("/account/profile", control_profile, methods=["PUT"]),
        Route("/products/{code}", control_patch_product, methods=["PATCH"]),
        Route("/orders", control_orders, methods=["GET"]),
        Route("/order-requests", control_order_requests, methods=["GET"]),
        Route("/webhooks/deliveries", control_deliveries, methods=["GET"]),
        Route("/stats", control_stats, methods=["GET"]),
        Route("/reset", control_reset, methods=["POST"]),
    ]
