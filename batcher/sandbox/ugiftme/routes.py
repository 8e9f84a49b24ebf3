"""The UGiftMe API endpoints: auth, products, orders and wallets."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from batcher.sandbox.asgi import RouteTable
from batcher.sandbox.common import ReversedView
from batcher.sandbox.handlers import CreationRules, create_idempotently, found
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
from batcher.sandbox.ugiftme.webhook_routes import WEBHOOK_API

API = RouteTable()


@API.route("/auth", "GET")
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


@API.route("/products", "GET")
async def list_products(request: Request) -> Response:
    return _products_page(list(sandbox_of(request).catalog.values()), request)


@API.route("/products/search", "GET")
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


@API.route("/products/filters", "GET")
async def product_filters(request: Request) -> Response:
    products = sandbox_of(request).catalog.values()
    return json_response(
        {
            "categories": sorted({p.category for p in products}),
            "merchants": sorted({p.merchant for p in products}),
            "currencies": sorted({p.currency for p in products}),
        }
    )


@API.route("/orders", "POST")
async def create_single_order(request: Request) -> Response:
    return await _create_orders(request, "single")


@API.route("/orders/bulk", "POST")
async def create_bulk_order(request: Request) -> Response:
    return await _create_orders(request, "bulk")


async def _create_orders(request: Request, kind: RequestType) -> Response:
    """Order creation with idempotency, deferred latency and the drop fault."""
    return await create_idempotently(request, _ORDER_KEYS, partial(_handle_order_payload, kind))


def _handle_order_payload(
    kind: RequestType, sandbox: UGiftMeSandbox, account: Account, payload: Any, key: str | None
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


_ORDER_KEYS = CreationRules(
    refuse_key=lambda message: ApiError(400, "Invalid Idempotency-Key", message=message),
    keep=_should_store,
    mismatch=ApiError(400, "Idempotency key reused with a different payload"),
    in_flight=ApiError(409, "Request with this Idempotency-Key is in progress"),
    droppable=lambda status: status < 300,
)


@API.route("/orders/order-requests/{request_id}", "GET")
async def get_order_request(request: Request) -> Response:
    order_request = account_of(request).requests.get(request.path_params["request_id"])
    return json_response(found(order_request, ApiError(404, "Order request not found")).as_json())


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


@API.route("/orders", "GET")
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


@API.route("/orders/search", "GET")
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


@API.route("/orders/{order_id}", "GET")
async def get_order(request: Request) -> Response:
    order = account_of(request).orders_by_id.get(request.path_params["order_id"])
    return json_response(found(order, ApiError(404, "Order not found")).body)


@API.route("/wallet", "GET")
async def get_wallets(request: Request) -> Response:
    wallets = account_of(request).wallets.values()
    return json_response([w.as_json() for w in sorted(wallets, key=lambda w: w.currency)])


@API.route("/wallet/transactions", "GET")
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


API.include(WEBHOOK_API.routes)
