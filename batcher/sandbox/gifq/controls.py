"""The GIFQ `/api/__sandbox` control endpoints (the shared ones are in
`batcher.sandbox.controls`; the package docstring lists them all)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from batcher.core.money import round_money
from batcher.sandbox.common import iso_now, money_input
from batcher.sandbox.controls import (
    control_account,
    control_flag,
    control_money,
    control_number,
    control_object,
    control_token,
    faults_json,
    filtered_accounts,
    path_currency,
    rate_limit_json,
    shared_control_routes,
)
from batcher.sandbox.dialect import Dialect
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
from batcher.sandbox.gifq.params import sandbox_of
from batcher.sandbox.gifq.state import Account, Campaign
from batcher.sandbox.jsonio import json_response


def _account(request: Request) -> Account:
    account: Account = control_account(request)
    return account


def _control_percent(raw: Any, name: str) -> Decimal:
    try:
        value = money_input(raw)
    except (TypeError, ValueError):
        raise ApiError(400, f"{name} must be a number or a decimal string") from None
    if not 0 <= value <= 100:
        raise ApiError(400, f"{name} must be within 0..100")
    return value


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


async def control_patch_config(request: Request) -> Response:
    sandbox, body = sandbox_of(request), await control_object(request)
    if "asyncDelaySeconds" in body:
        sandbox.async_delay_seconds = control_number(request, body, "asyncDelaySeconds")
    if "idempotencyTtlSeconds" in body:
        sandbox.idempotency.ttl_seconds = control_number(request, body, "idempotencyTtlSeconds")
    if "maxRecipients" in body:
        sandbox.max_recipients = int(control_number(request, body, "maxRecipients", low=1))
    if "payoutRedeemRate" in body:
        sandbox.payout_redeem_rate = control_number(request, body, "payoutRedeemRate", high=1.0)
    if "daySeconds" in body:
        sandbox.day_seconds = control_number(request, body, "daySeconds")
    if "clampPageLimit" in body:
        sandbox.clamp_page_limit = control_flag(request, body, "clampPageLimit")
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


def _balances_json(account: Account) -> dict[str, Any]:
    balances = sorted(account.balances.items())
    return {
        "apiKey": account.api_key,
        "balances": [{"currency": c, "amount": money_out(a, c)} for c, a in balances],
    }


async def control_balances(request: Request) -> Response:
    return json_response(_balances_json(_account(request)))


async def control_fund(request: Request) -> Response:
    account, currency = _account(request), path_currency(request)
    body = await control_object(request)
    amount = control_money(request, body.get("amount"), currency, "amount")
    if amount <= 0:
        raise ApiError(400, "amount must be positive")
    sandbox_of(request).top_up(account, currency, amount)
    return json_response(_balances_json(account))


async def control_drain(request: Request) -> Response:
    account, currency = _account(request), path_currency(request)
    sandbox_of(request).set_balance(account, currency, round_money(Decimal(0), currency))
    return json_response(_balances_json(account))


async def control_set_balance(request: Request) -> Response:
    account, currency = _account(request), path_currency(request)
    body = await control_object(request)
    amount = control_money(request, body.get("amount"), currency, "amount")
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
    account = _account(request)
    campaigns = sorted(account.campaigns.values(), key=lambda c: c.id)
    return json_response({"apiKey": account.api_key, "campaigns": [c.as_json() for c in campaigns]})


async def control_create_campaign(request: Request) -> Response:
    account, body = _account(request), await control_object(request)
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
    account, body = _account(request), await control_object(request)
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
    sandbox, body = sandbox_of(request), await control_object(request)
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
    orders = sorted((o for a in filtered_accounts(request) for o in a.orders), key=lambda o: o.seq)
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
    accounts = filtered_accounts(request)
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
        (p for a in filtered_accounts(request) for p in a.payouts), key=lambda p: p.seq
    )
    rows = [{**p.as_json(), "apiKey": p.api_key} for p in payouts]
    return json_response({"total": len(rows), "payouts": rows})


async def control_patch_payout(request: Request) -> Response:
    payout_id = request.path_params["payout_id"]
    payout = next(
        (
            a.payouts_by_id[payout_id]
            for a in filtered_accounts(request)
            if payout_id in a.payouts_by_id
        ),
        None,
    )
    if payout is None:
        raise ApiError(404, "Payout not found")
    body = await control_object(request)
    status = body.get("status")
    if status not in PAYOUT_CONTROL_STATUSES:
        raise ApiError(400, f"status must be one of {', '.join(PAYOUT_CONTROL_STATUSES)}")
    if payout.status == "failed":
        raise ApiError(409, "A failed payout was refunded and cannot change")
    sandbox_of(request).set_payout_status(payout, status)
    return json_response(payout.as_json())


async def control_callbacks(request: Request) -> Response:
    token = control_token(request)
    rows = [
        d for d in sandbox_of(request).callbacks.deliveries if token is None or d["apiKey"] == token
    ]
    return json_response({"total": len(rows), "callbacks": rows})


def control_routes() -> list[BaseRoute]:
    return [
        *shared_control_routes(),
        Route("/config", control_patch_config, methods=["PATCH"]),
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
    ]


def _counts(accounts: Sequence[Account]) -> dict[str, int]:
    return {
        "orders": sum(len(a.orders) for a in accounts),
        "payoutOrders": sum(len(a.payout_orders) for a in accounts),
        "payouts": sum(len(a.payouts) for a in accounts),
    }


def _invalid(message: str) -> ApiError:
    return ApiError(400, message)


DIALECT = Dialect(
    provider="gifq",
    token_headers=("x-api-token", "x-api-key"),
    fault_kinds=GIFQ_FAULT_KINDS,
    invalid=_invalid,
    invalid_json=lambda detail: ApiError(400, f"Invalid JSON: {detail}"),
    unknown_account=lambda: ApiError(404, "Unknown API token"),
    account_required=lambda count: ApiError(
        400, f"X-Api-Token required: {count} tokens are configured"
    ),
    routing_error=lambda message: {"message": message, "status": "error"},
    config_json=_config_json,
    counts=_counts,
)
