"""The UGiftMe API endpoints: auth, products, orders and wallets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from batcher.sandbox.asgi import (
    sleep_deferred_latency,
)
from batcher.sandbox.common import ReversedView
from batcher.sandbox.handlers import create_idempotently, idempotency_key, read_json
from batcher.sandbox.idempotency import StoredResponse
from batcher.sandbox.jsonio import encode_json, json_response
from batcher.sandbox.ugiftme.catalog import CatalogProduct
from batcher.sandbox.ugiftme.config import ASYNC_HEADER, ORDER_SORT_FIELDS
from batcher.sandbox.ugiftme.engine import UGiftMeSandbox
from batcher.sandbox.ugiftme.errors import ApiError, echoed
from batcher.sandbox.ugiftme.params import (
    account_of,
    bool_param,
    date_param,
    page_params,
    paginate,
    sandbox_of,
)
from batcher.sandbox.ugiftme.state import Account, OrderSearchKey, RequestType, StoredOrder
from batcher.sandbox.ugiftme.webhook_routes import (
    create_webhook,
    delete_webhook,
    list_webhooks,
    test_webhook,
    update_webhook,
    webhook_test_sample,
)


async def auth(request: Request) -> Response:
    account = account_of(request)
    return json_response(
        {
            "businessId": account.business_id,
            "name": account.name,
            "verificationStatus": "verified" if account.profile_complete else "pending",
            "email": account.email,
            "plan": "business",
        }
    )


def _products_page(products: list[CatalogProduct], request: Request) -> Response:
    page, limit = page_params(request)
    items, total_pages = paginate(products, page, limit)
    return json_response(
        {
            "products": [p.as_json() for p in items],
            "pagination": {
                "total": len(products),
                "totalPages": total_pages,
                "currentPage": page,
                "limit": limit,
            },
        }
    )


async def list_products(request: Request) -> Response:
    return _products_page(list(sandbox_of(request).catalog.values()), request)


async def search_products(request: Request) -> Response:
    query = request.query_params
    text = (query.get("q") or "").strip().casefold()
    exact = {
        "merchant": (query.get("merchant") or "").strip().casefold(),
        "category": (query.get("category") or "").strip().casefold(),
        "currency": (query.get("currency") or "").strip().casefold(),
    }
    country = (query.get("country") or "").strip().upper()

    def matches(p: CatalogProduct) -> bool:
        haystack = f"{p.code} {p.name} {p.merchant} {p.category}".casefold()
        fields = {"merchant": p.merchant, "category": p.category, "currency": p.currency}
        return (
            (not text or text in haystack)
            and all(not want or fields[name].casefold() == want for name, want in exact.items())
            and (not country or country in p.countries)
        )

    return _products_page([p for p in sandbox_of(request).catalog.values() if matches(p)], request)


async def product_filters(request: Request) -> Response:
    products = sandbox_of(request).catalog.values()
    return json_response(
        {
            "categories": sorted({p.category for p in products}),
            "merchants": sorted({p.merchant for p in products}),
            "currencies": sorted({p.currency for p in products}),
        }
    )


async def create_single_order(request: Request) -> Response:
    return await _create_orders(request, "single")


async def create_bulk_order(request: Request) -> Response:
    return await _create_orders(request, "bulk")


async def _create_orders(request: Request, kind: RequestType) -> Response:
    """Order creation with idempotency, deferred latency and the drop fault."""
    sandbox, account = sandbox_of(request), account_of(request)
    payload = await read_json(request)
    key = idempotency_key(
        request, lambda message: ApiError(400, "Invalid Idempotency-Key", message=message)
    )

    async def handle() -> StoredResponse:
        # held inside the idempotency window on purpose
        await sleep_deferred_latency(request.scope, "ugiftme.deferred_latency")
        return _handle_order_payload(sandbox, account, kind, payload, key)

    return await create_idempotently(
        request,
        sandbox,
        account.api_key,
        key,
        payload,
        handle,
        keep=lambda status: _should_store(sandbox, status),
        mismatch=ApiError(400, "Idempotency key reused with a different payload"),
        in_flight=ApiError(409, "Request with this Idempotency-Key is in progress"),
        droppable=lambda status: status < 300,
        fault_scope_key="ugiftme.fault",
    )


def _handle_order_payload(
    sandbox: UGiftMeSandbox, account: Account, kind: RequestType, payload: Any, key: str | None
) -> StoredResponse:
    """The atomic part: no await between reading and changing state."""
    is_async = sandbox.async_mode
    headers = {"content-type": "application/json", ASYNC_HEADER: "true" if is_async else "false"}
    try:
        if is_async:
            status, body = sandbox.accept_async(account, kind, payload, key)
        elif kind == "single":
            status, body = sandbox.place_single_sync(account, payload, key)
        else:
            status, body = sandbox.place_bulk_sync(account, payload, key)
    except ApiError as exc:
        status, body = exc.status_code, echoed(exc.body, sandbox.faults, account.api_key)
    return StoredResponse(status, encode_json(body), headers)


def _should_store(sandbox: UGiftMeSandbox, status_code: int) -> bool:
    if 200 <= status_code < 300:
        return True
    return sandbox.replay_errors and status_code in {400, 402}


async def get_order_request(request: Request) -> Response:
    order_request = account_of(request).requests.get(request.path_params["request_id"])
    if order_request is None:
        raise ApiError(404, "Order request not found")
    return json_response(order_request.as_json())


def _sort_params(request: Request) -> tuple[str, bool]:
    """(sortBy, descending), or 400."""
    sort_by = request.query_params.get("sortBy") or "createdAt"
    direction = (request.query_params.get("order") or "desc").lower()
    if sort_by not in ORDER_SORT_FIELDS:
        raise ApiError(
            400, "Invalid query", message=f"sortBy must be one of {', '.join(ORDER_SORT_FIELDS)}"
        )
    if direction not in {"asc", "desc"}:
        raise ApiError(400, "Invalid query", message="order must be asc or desc")
    return sort_by, direction == "desc"


def _directed(ascending: list[StoredOrder], descending: bool) -> Sequence[StoredOrder]:
    return ReversedView(ascending) if descending else ascending


async def list_orders(request: Request) -> Response:
    page, limit = page_params(request)
    sort_by, descending = _sort_params(request)
    account = account_of(request)
    orders = _directed(account.listings.ascending(account, sort_by), descending)
    items, total_pages = paginate(orders, page, limit)
    return json_response(
        {
            "total": len(orders),
            "page": page,
            "totalPages": total_pages,
            "orders": [o.listing() for o in items],
        }
    )


async def search_orders(request: Request) -> Response:
    page, limit = page_params(request)
    merchant = (request.query_params.get("merchant") or "").strip().casefold()
    status = (request.query_params.get("status") or "").strip()
    is_active = bool_param(request, "isActive")
    is_paid = bool_param(request, "isPaid")
    start = date_param(request, "startDate", end_of_day=False)
    end = date_param(request, "endDate", end_of_day=True)
    sort_by, descending = _sort_params(request)
    account = account_of(request)
    key: OrderSearchKey = (sort_by, merchant, status, is_active, is_paid, start, end)
    found = _directed(
        account.listings.search(account, key, lambda: _search_ascending(account, key)),
        descending,
    )
    items, total_pages = paginate(found, page, limit)
    return json_response(
        {
            "success": True,
            "orders": [o.listing() for o in items],
            "pagination": {
                "total": len(found),
                "totalPages": total_pages,
                "currentPage": page,
                "limit": limit,
            },
        }
    )


def _search_ascending(account: Account, key: OrderSearchKey) -> list[StoredOrder]:
    """The orders a search matches, by ``(body[sortBy], seq)`` ascending: one pass
    over the account's sorted list (the result is kept for the search's next pages)."""
    sort_by, merchant, status, is_active, is_paid, start, end = key
    ordered = account.listings.ascending(account, sort_by)
    filters = (merchant, status, is_active, is_paid, start, end)
    if all(f is None or f == "" for f in filters):
        return ordered

    def matches(order: StoredOrder) -> bool:
        body = order.body
        return (
            (not merchant or merchant in body["merchant"]["name"].casefold())
            and (not status or body["status"] == status)
            and (is_active is None or body["isActive"] is is_active)
            and (is_paid is None or body["isPaid"] is is_paid)
            and (start is None or order.created >= start)
            and (end is None or order.created <= end)
        )

    return [o for o in ordered if matches(o)]


async def get_order(request: Request) -> Response:
    order = account_of(request).orders_by_id.get(request.path_params["order_id"])
    if order is None:
        raise ApiError(404, "Order not found")
    return json_response(order.body)


async def get_wallets(request: Request) -> Response:
    wallets = account_of(request).wallets.values()
    return json_response([w.as_json() for w in sorted(wallets, key=lambda w: w.currency)])


async def wallet_transactions(request: Request) -> Response:
    page, limit = page_params(request)
    newest_first = ReversedView(account_of(request).transactions)
    items, total_pages = paginate(newest_first, page, limit)
    return json_response(
        {
            "transactions": items,
            "pagination": {
                "currentPage": page,
                "totalPages": total_pages,
                "totalTransactions": len(newest_first),
                "limit": limit,
            },
        }
    )


def api_routes() -> list[BaseRoute]:
    return [
        Route("/auth", auth, methods=["GET"]),
        Route("/products", list_products, methods=["GET"]),
        Route("/products/search", search_products, methods=["GET"]),
        Route("/products/filters", product_filters, methods=["GET"]),
        Route("/orders", create_single_order, methods=["POST"]),
        Route("/orders", list_orders, methods=["GET"]),
        Route("/orders/bulk", create_bulk_order, methods=["POST"]),
        Route("/orders/search", search_orders, methods=["GET"]),
        Route("/orders/order-requests/{request_id}", get_order_request, methods=["GET"]),
        Route("/orders/{order_id}", get_order, methods=["GET"]),
        Route("/wallet", get_wallets, methods=["GET"]),
        Route("/wallet/transactions", wallet_transactions, methods=["GET"]),
        Route("/webhooks", create_webhook, methods=["POST"]),
        Route("/webhooks", list_webhooks, methods=["GET"]),
        Route("/webhooks/test", test_webhook, methods=["POST"]),
        Route("/webhooks/test-sample", webhook_test_sample, methods=["GET"]),
        Route("/webhooks/{webhook_id}", update_webhook, methods=["PATCH"]),
        Route("/webhooks/{webhook_id}", delete_webhook, methods=["DELETE"]),
    ]
