"""The GIFQ `/api/__sandbox` control endpoints."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from batcher.core.money import fits_currency, is_currency_code, round_money
from batcher.sandbox.common import (
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
from batcher.sandbox.gifq.config import (
    API_ROOT,
    CAMPAIGN_STATUSES,
    GIFQ_FAULT_KINDS,
    PAYOUT_CONTROL_STATUSES,
    merge_rates,
    money_out,
)
from batcher.sandbox.gifq.engine import GifqSandbox
from batcher.sandbox.gifq.errors import ApiError
from batcher.sandbox.gifq.params import json_body, sandbox_of
from batcher.sandbox.gifq.state import Account, Campaign


def _control_token(request: Request) -> str | None:
    return request.headers.get("x-api-token") or request.headers.get("x-api-key") or None


def _control_account(request: Request) -> Account:
    sandbox, token = sandbox_of(request), _control_token(request)
    if token:
        account = sandbox.accounts.get(token)
        if account is None:
            raise ApiError(404, "Unknown API token")
        return account
    if len(sandbox.accounts) == 1:
        return next(iter(sandbox.accounts.values()))
    raise ApiError(400, f"X-Api-Token required: {len(sandbox.accounts)} tokens are configured")


def _filtered_accounts(request: Request) -> list[Account]:
    if _control_token(request):
        return [_control_account(request)]
    return list(sandbox_of(request).accounts.values())


async def _control_object(request: Request) -> Mapping[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    body = await json_body(request)
    if not isinstance(body, Mapping):
        raise ApiError(400, "The body must be a JSON object")
    return body


@contextlib.contextmanager
def _refused_setting() -> Iterator[None]:
    """A control setting's ValueError as this contract's 400."""
    try:
        yield
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None


def _number(
    body: Mapping[str, Any], name: str, *, low: float = 0.0, high: float | None = None
) -> float:
    with _refused_setting():
        return setting_number(body, name, low=low, high=high)


def _control_money(raw: Any, currency: str, name: str) -> Decimal:
    try:
        amount = money_input(raw)
    except (TypeError, ValueError):
        raise ApiError(400, f"{name} must be a number or a decimal string") from None
    if not fits_currency(amount, currency):
        raise ApiError(400, f"{name} has too many decimals for {currency}")
    return round_money(amount, currency)


def _control_percent(raw: Any, name: str) -> Decimal:
    try:
        value = money_input(raw)
    except (TypeError, ValueError):
        raise ApiError(400, f"{name} must be a number or a decimal string") from None
    if not 0 <= value <= 100:
        raise ApiError(400, f"{name} must be within 0..100")
    return value


def _path_currency(request: Request) -> str:
    currency: str = request.path_params["currency"].upper()
    if not is_currency_code(currency):
        raise ApiError(400, "currency must be a 3-letter ISO code")
    return currency


def _dec(value: float) -> Decimal:
    return Decimal(str(value))


def _config_json(sandbox: GifqSandbox) -> dict[str, Any]:
    return {
        "provider": "gifq",
        "apiRoot": API_ROOT,
        "apiKeys": sandbox.api_keys,
        "asyncDelaySeconds": _dec(sandbox.async_delay_seconds),
        "idempotencyTtlSeconds": _dec(sandbox.idempotency.ttl_seconds),
        "maxRecipients": sandbox.max_recipients,
        "maxPageLimit": sandbox.config.max_page_limit,
        "clampPageLimit": sandbox.clamp_page_limit,
        "fxRates": {pair: str(rate) for pair, rate in sorted(sandbox.fx_rates.items())},
        "fxFeePercent": str(sandbox.fx_fee_percent),
        "payoutRedeemRate": _dec(sandbox.payout_redeem_rate),
        "daySeconds": _dec(sandbox.day_seconds),
        "rateLimit": rate_limit_json(sandbox.limiter),
        "faults": faults_json(sandbox.faults),
    }


async def control_health(request: Request) -> Response:
    return json_response({"ok": True, "provider": "gifq"})


async def control_get_config(request: Request) -> Response:
    return json_response(_config_json(sandbox_of(request)))


async def control_patch_config(request: Request) -> Response:
    sandbox, body = sandbox_of(request), await _control_object(request)
    if "asyncDelaySeconds" in body:
        sandbox.async_delay_seconds = _number(body, "asyncDelaySeconds")
    if "idempotencyTtlSeconds" in body:
        sandbox.idempotency.ttl_seconds = _number(body, "idempotencyTtlSeconds")
    if "maxRecipients" in body:
        sandbox.max_recipients = int(_number(body, "maxRecipients", low=1))
    if "payoutRedeemRate" in body:
        sandbox.payout_redeem_rate = _number(body, "payoutRedeemRate", high=1.0)
    if "daySeconds" in body:
        sandbox.day_seconds = _number(body, "daySeconds")
    if "clampPageLimit" in body:
        if not isinstance(body["clampPageLimit"], bool):
            raise ApiError(400, "clampPageLimit must be a boolean")
        sandbox.clamp_page_limit = body["clampPageLimit"]
    if "fxFeePercent" in body:
        sandbox.fx_fee_percent = _control_percent(body["fxFeePercent"], "fxFeePercent")
    if "fxRates" in body:
        rates = body["fxRates"]
        if not isinstance(rates, Mapping):
            raise ApiError(400, 'fxRates must be an object like {"GBP/USD": "1.27"}')
        try:
            sandbox.fx_rates = merge_rates(sandbox.fx_rates, rates)
        except (TypeError, ValueError) as exc:
            raise ApiError(400, str(exc)) from None
    return json_response(_config_json(sandbox))


async def control_patch_faults(request: Request) -> Response:
    sandbox, body = sandbox_of(request), await _control_object(request)
    with _refused_setting():
        update_faults(sandbox.faults, body, GIFQ_FAULT_KINDS)
    return json_response(faults_json(sandbox.faults))


async def control_rate_limit(request: Request) -> Response:
    sandbox, body = sandbox_of(request), await _control_object(request)
    with _refused_setting():
        update_rate_limit(sandbox.limiter, body)
    return json_response(rate_limit_json(sandbox.limiter))


def _balances_json(account: Account) -> dict[str, Any]:
    balances = sorted(account.balances.items())
    return {
        "apiKey": account.api_key,
        "balances": [{"currency": c, "amount": money_out(a, c)} for c, a in balances],
    }


async def control_balances(request: Request) -> Response:
    return json_response(_balances_json(_control_account(request)))


async def control_fund(request: Request) -> Response:
    account, currency = _control_account(request), _path_currency(request)
    body = await _control_object(request)
    amount = _control_money(body.get("amount"), currency, "amount")
    if amount <= 0:
        raise ApiError(400, "amount must be positive")
    sandbox_of(request).top_up(account, currency, amount)
    return json_response(_balances_json(account))


async def control_drain(request: Request) -> Response:
    account, currency = _control_account(request), _path_currency(request)
    sandbox_of(request).set_balance(account, currency, round_money(Decimal(0), currency))
    return json_response(_balances_json(account))


async def control_set_balance(request: Request) -> Response:
    account, currency = _control_account(request), _path_currency(request)
    body = await _control_object(request)
    amount = _control_money(body.get("amount"), currency, "amount")
    sandbox_of(request).set_balance(account, currency, amount)
    return json_response(_balances_json(account))


def _checked_campaign_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if "title" in body:
        if not isinstance(body["title"], str) or not body["title"].strip():
            raise ApiError(400, "title must be a non-empty string")
        fields["title"] = body["title"].strip()
    if "status" in body:
        if body["status"] not in CAMPAIGN_STATUSES:
            raise ApiError(400, f"status must be one of {', '.join(CAMPAIGN_STATUSES)}")
        fields["status"] = body["status"]
    if "brands" in body:
        brands = body["brands"]
        if not isinstance(brands, list) or not all(isinstance(b, str) for b in brands):
            raise ApiError(400, "brands must be a list of brand slugs")
        fields["brands"] = list(dict.fromkeys(brands))
    return fields


async def control_campaigns(request: Request) -> Response:
    account = _control_account(request)
    campaigns = sorted(account.campaigns.values(), key=lambda c: c.id)
    return json_response({"apiKey": account.api_key, "campaigns": [c.as_json() for c in campaigns]})


async def control_create_campaign(request: Request) -> Response:
    account, body = _control_account(request), await _control_object(request)
    fields = _checked_campaign_fields(body)
    if "title" not in fields:
        raise ApiError(400, "title is required")
    campaign_id = body.get("id", max(account.campaigns, default=100) + 1)
    if isinstance(campaign_id, bool) or not isinstance(campaign_id, int) or campaign_id < 1:
        raise ApiError(400, "id must be a positive integer")
    if campaign_id in account.campaigns:
        raise ApiError(409, f"Campaign {campaign_id} already exists")
    now = iso_now()
    campaign = Campaign(
        campaign_id,
        fields["title"],
        fields.get("status", "active"),
        fields.get("brands", sorted(sandbox_of(request).catalog)),
        now,
        now,
    )
    account.campaigns[campaign.id] = campaign
    return json_response(campaign.as_json(), 201)


async def control_patch_campaign(request: Request) -> Response:
    account, body = _control_account(request), await _control_object(request)
    raw = request.path_params["campaign_id"]
    campaign = account.campaigns.get(int(raw)) if raw.isdigit() else None
    if campaign is None:
        raise ApiError(404, "Campaign not found")
    fields = _checked_campaign_fields(body)
    if not fields:
        raise ApiError(400, "provide at least one of title, status, brands")
    for name, value in fields.items():
        setattr(campaign, name, value)
    campaign.updated_at = iso_now()
    return json_response(campaign.as_json())


async def control_patch_product(request: Request) -> Response:
    sandbox, body = sandbox_of(request), await _control_object(request)
    raw = request.path_params["option_id"]
    option = sandbox.find_option(int(raw)) if raw.isdigit() else None
    if option is None:
        raise ApiError(404, "Product option not found")
    changes: dict[str, Any] = {}
    if "stock_count" in body:
        stock = body["stock_count"]
        if stock is not None and (
            isinstance(stock, bool) or not isinstance(stock, int) or stock < 0
        ):
            raise ApiError(400, "stock_count must be a whole number or null")
        changes["stock_count"] = stock
    for name in ("discount", "min_face_value", "max_face_value"):
        if name in body:
            try:
                changes[name] = money_input(body[name])
            except (TypeError, ValueError):
                raise ApiError(400, f"{name} must be a number") from None
    if not changes:
        raise ApiError(400, "provide one of stock_count, discount, min_face_value, max_face_value")
    for name, value in changes.items():
        setattr(option, name, value)
    return json_response(option.as_json())


async def control_orders(request: Request) -> Response:
    orders = sorted((o for a in _filtered_accounts(request) for o in a.orders), key=lambda o: o.seq)
    rows = [
        {
            **o.as_json(with_redemption=True),
            "apiKey": o.api_key,
            "charged": money_out(o.charged, o.params.payment_currency),
            "chargedCurrency": o.params.payment_currency,
            "optionId": o.option_id,
            "requestId": o.request_id,
        }
        for o in orders
    ]
    return json_response({"total": len(rows), "orders": rows})


async def control_payout_orders(request: Request) -> Response:
    accounts = _filtered_accounts(request)
    orders = sorted((o for a in accounts for o in a.payout_orders), key=lambda o: o.seq)
    rows = [
        {
            **o.as_json(),
            "apiKey": o.api_key,
            "idempotencyKey": o.idempotency_key,
            "charged": money_out(o.charged, o.wallet_currency),
            "recipients": [r.as_json() for r in o.recipients],
        }
        for o in orders
    ]
    return json_response({"total": len(rows), "payoutOrders": rows})


async def control_payouts(request: Request) -> Response:
    payouts = sorted(
        (p for a in _filtered_accounts(request) for p in a.payouts), key=lambda p: p.seq
    )
    rows = [{**p.as_json(), "apiKey": p.api_key} for p in payouts]
    return json_response({"total": len(rows), "payouts": rows})


async def control_patch_payout(request: Request) -> Response:
    payout_id = request.path_params["payout_id"]
    payout = next(
        (
            a.payouts_by_id[payout_id]
            for a in _filtered_accounts(request)
            if payout_id in a.payouts_by_id
        ),
        None,
    )
    if payout is None:
        raise ApiError(404, "Payout not found")
    body = await _control_object(request)
    status = body.get("status")
    if status not in PAYOUT_CONTROL_STATUSES:
        raise ApiError(400, f"status must be one of {', '.join(PAYOUT_CONTROL_STATUSES)}")
    if payout.status == "failed":
        raise ApiError(409, "A failed payout was refunded and cannot change")
    sandbox_of(request).set_payout_status(payout, status)
    return json_response(payout.as_json())


async def control_callbacks(request: Request) -> Response:
    token = _control_token(request)
    rows = [
        d for d in sandbox_of(request).callbacks.deliveries if token is None or d["apiKey"] == token
    ]
    return json_response({"total": len(rows), "callbacks": rows})


def _since(request: Request) -> int:
    raw = request.query_params.get("since") or "0"
    if not raw.isdigit():
        raise ApiError(400, "since must be a whole number")
    return int(raw)


async def control_stats(request: Request) -> Response:
    sandbox, token = sandbox_of(request), _control_token(request)
    since = _since(request)
    include_log = parse_bool(request.query_params.get("log")) is not False
    accounts = _filtered_accounts(request)
    counts = {
        "orders": sum(len(a.orders) for a in accounts),
        "payoutOrders": sum(len(a.payout_orders) for a in accounts),
        "payouts": sum(len(a.payouts) for a in accounts),
    }
    return json_response(
        stats_json(sandbox, counts, since=since, bucket=token, include_log=include_log)
    )


def control_routes() -> list[BaseRoute]:
    return [
        Route("/health", control_health, methods=["GET"]),
        Route("/config", control_get_config, methods=["GET"]),
        Route("/config", control_patch_config, methods=["PATCH"]),
        Route("/faults", control_get_faults, methods=["GET"]),
        Route("/faults", control_patch_faults, methods=["PATCH", "PUT"]),
        Route("/rate-limit", control_rate_limit, methods=["PUT"]),
        Route("/balances", control_balances, methods=["GET"]),
        Route("/balances/{currency}/fund", control_fund, methods=["POST"]),
        Route("/balances/{currency}/drain", control_drain, methods=["POST"]),
        Route("/balances/{currency}", control_set_balance, methods=["PUT"]),
        Route("/campaigns", control_campaigns, methods=["GET"]),
        Route("/campaigns", control_create_campaign, methods=["POST"]),
        Route("/campaigns/{campaign_id}", control_patch_campaign, methods=["PATCH"]),
        Route("/products/{option_id}", control_patch_product, methods=["PATCH"]),
        Route("/orders", control_orders, methods=["GET"]),
        Route("/payout-orders", control_payout_orders, methods=["GET"]),
        Route("/payouts", control_payouts, methods=["GET"]),
        Route("/payouts/{payout_id}", control_patch_payout, methods=["PATCH"]),
        Route("/callbacks", control_callbacks, methods=["GET"]),
        Route("/stats", control_stats, methods=["GET"]),
        Route("/reset", control_reset, methods=["POST"]),
    ]
