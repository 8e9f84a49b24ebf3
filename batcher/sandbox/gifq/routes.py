"""The GIFQ API endpoints."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from batcher.sandbox.common import DroppedResponse, ReversedView
from batcher.sandbox.gifq.catalog import Brand
from batcher.sandbox.gifq.config import money_out
from batcher.sandbox.gifq.engine import GifqSandbox
from batcher.sandbox.gifq.errors import ApiError, request_id_of
from batcher.sandbox.gifq.params import (
    account_of,
    deferred_latency,
    paginated,
    sandbox_of,
)
from batcher.sandbox.gifq.parsing import parse_order, parse_payout_order
from batcher.sandbox.gifq.state import Account, Campaign, Payout, PayoutOrder
from batcher.sandbox.handlers import create_idempotently, idempotency_key, read_json
from batcher.sandbox.idempotency import StoredResponse
from batcher.sandbox.jsonio import encode_json, json_response


async def list_products(request: Request) -> Response:
    brands = list(sandbox_of(request).catalog.values())
    return paginated(request, brands, Brand.as_json)


async def create_order(request: Request) -> Response:
    """201 new, 200 known reference, 422 refused; the drop fault hits fresh commits only."""
    sandbox, account = sandbox_of(request), account_of(request)
    payload = await read_json(request)
    await deferred_latency(request)
    # From here to the answer nothing awaits, so checking and creating is atomic.
    reference, params = parse_order(payload)
    status, order = sandbox.place_order(account, reference, params, request_id_of(request) or "")
    body = encode_json(order.as_json(with_redemption=True))
    headers = {"content-type": "application/json"}
    if status == 201 and sandbox.faults.roll("drop"):
        request.scope["gifq.fault"] = "drop"
        return DroppedResponse(body, status, headers)
    return Response(body, status_code=status, headers=headers)


def _newest_first(items: Sequence[Any]) -> Sequence[Any]:
    """Orders, payout orders and payouts, highest `seq` first, without sorting.

    Every such list only grows by `append` right after `_next_seq()` hands out
    the item's seq (nothing awaits in between), so it is in ascending seq order
    and reading it backwards is the same as sorting it by seq, descending.
    """
    return ReversedView(items)


async def list_orders(request: Request) -> Response:
    orders = _newest_first(account_of(request).orders)
    return paginated(request, orders, lambda o: o.as_json(with_redemption=False))


async def get_order(request: Request) -> Response:
    order = account_of(request).orders_by_id.get(request.path_params["order_id"])
    if order is None:
        raise ApiError(404, "Order not found")
    return json_response(order.as_json(with_redemption=True))


async def list_balances(request: Request) -> Response:
    balances = sorted(account_of(request).balances.items())
    return json_response([{"currency": c, "amount": money_out(a, c)} for c, a in balances])


async def list_transactions(request: Request) -> Response:
    return paginated(request, ReversedView(account_of(request).transactions), lambda t: t)


async def list_campaigns(request: Request) -> Response:
    campaigns = sorted(account_of(request).campaigns.values(), key=lambda c: c.id)
    return paginated(request, campaigns, Campaign.as_json)


def _campaign(request: Request) -> Campaign:
    raw = request.path_params["campaign_id"]
    campaign = account_of(request).campaigns.get(int(raw)) if raw.isdigit() else None
    if campaign is None:
        raise ApiError(404, "Campaign not found")
    return campaign


async def campaign_catalog(request: Request) -> Response:
    campaign, catalog = _campaign(request), sandbox_of(request).catalog
    brands = [catalog[slug] for slug in sorted(campaign.brands) if slug in catalog]
    return paginated(request, brands, Brand.as_json)


async def create_payout_order(request: Request) -> Response:
    """202 queued; Idempotency-Key replays, 422 on a different payload, 409 in flight."""
    sandbox, account = sandbox_of(request), account_of(request)
    payload = await read_json(request)
    key = idempotency_key(request, lambda message: ApiError(422, message))

    async def handle() -> StoredResponse:
        await deferred_latency(request)  # held inside the idempotency window on purpose
        return _payout_answer(request, sandbox, account, payload, key)

    return await create_idempotently(
        request,
        sandbox,
        account.api_key,
        key,
        payload,
        handle,
        keep=lambda status: status < 300 or status == 422,
        mismatch=ApiError(422, "Idempotency-Key already used with a different payload"),
        in_flight=ApiError(409, "A request with this Idempotency-Key is in progress"),
        droppable=lambda status: status == 202,
        fault_scope_key="gifq.fault",
    )


def _payout_answer(
    request: Request, sandbox: GifqSandbox, account: Account, payload: Any, key: str | None
) -> StoredResponse:
    """The atomic part: no await between checking, charging and queueing."""
    headers = {"content-type": "application/json"}
    try:
        parsed = parse_payout_order(payload, sandbox.max_recipients)
        order = sandbox.place_payout_order(account, parsed, key)
    except ApiError as exc:
        return StoredResponse(exc.status_code, encode_json(exc.render(request)), headers)
    return StoredResponse(202, encode_json({"id": order.id, "status": order.status}), headers)


async def list_payout_orders(request: Request) -> Response:
    orders = _newest_first(account_of(request).payout_orders)
    return paginated(request, orders, PayoutOrder.as_json)


async def get_payout_order(request: Request) -> Response:
    order = account_of(request).payout_orders_by_id.get(request.path_params["payout_order_id"])
    if order is None:
        raise ApiError(404, "Payout order not found")
    return json_response(order.as_json())


async def list_payouts(request: Request) -> Response:
    account = account_of(request)
    wanted = request.query_params.get("payout_order_id")
    payouts: Sequence[Payout]
    if wanted:
        order = account.payout_orders_by_id.get(wanted)
        payouts = [account.payouts_by_id[i] for i in order.payout_ids] if order else []
    else:
        payouts = _newest_first(account.payouts)
    return paginated(request, payouts, Payout.as_json)


def api_routes() -> list[BaseRoute]:
    return [
        Route("/products", list_products, methods=["GET"]),
        Route("/orders", create_order, methods=["POST"]),
        Route("/orders", list_orders, methods=["GET"]),
        Route("/orders/{order_id}", get_order, methods=["GET"]),
        Route("/balances", list_balances, methods=["GET"]),
        Route("/transactions", list_transactions, methods=["GET"]),
        Route("/campaigns", list_campaigns, methods=["GET"]),
        Route("/campaigns/{campaign_id}/catalog", campaign_catalog, methods=["GET"]),
        Route("/payout-orders", create_payout_order, methods=["POST"]),
        Route("/payout-orders", list_payout_orders, methods=["GET"]),
        Route("/payout-orders/{payout_order_id}", get_payout_order, methods=["GET"]),
        Route("/payouts", list_payouts, methods=["GET"]),
    ]
