"""Paged listings answer from cached sorted views (UGiftMe) and reversed views (both
sandboxes); every page must still be exactly what filtering and sorting all the
orders on each request gave: same order (ties broken by seq), totals, pagination."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from gifq_kit import ROOMY_RATE_LIMIT, GifqApi, payout_body
from ugiftme_kit import Api, item

from batcher.sandbox.jsonio import decode_json, encode_json
from batcher.sandbox.server import SandboxHandle

SORT_FIELDS = ("createdAt", "updatedAt", "valuePurchased", "productCode")
# (code, currency, allowed values): several merchants, currencies and equal values.
PRODUCTS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "GBP": [
        ("AMAZON_UK_STD", ("10.00", "25", "7.50")),
        ("TESCO_UK", ("10", "5", "25")),
        ("ARGOS_UK", ("10", "25", "5")),
        ("SPOTIFY_UK", ("10", "30")),
    ],
    "EUR": [("ZALANDO_EU", ("10", "25")), ("AMAZON_DE_STD", ("5", "10.00"))],
    "USD": [("AMAZON_US_STD", ("10", "5")), ("STEAM_US", ("5", "10", "20"))],
}
MERCHANTS = {
    "AMAZON_UK_STD": "Amazon UK",
    "TESCO_UK": "Tesco",
    "ARGOS_UK": "Argos",
    "SPOTIFY_UK": "Spotify",
    "ZALANDO_EU": "Zalando",
    "AMAZON_DE_STD": "Amazon DE",
    "AMAZON_US_STD": "Amazon US",
    "STEAM_US": "Steam",
}


def _bulk(api: Api, rng: random.Random, count: int, currency: str) -> None:
    items = []
    for _ in range(count):
        code, values = rng.choice(PRODUCTS[currency])
        items.append(item(code, rng.choice(values), merchant=MERCHANTS[code], currency=currency))
    reply = api.post("/orders/bulk", {"orders": items})
    assert reply.status in (201, 202), reply.body


def _place(api: Api, rng: random.Random, count: int) -> None:
    while count > 0:
        size = min(count, rng.randint(1, 60))
        _bulk(api, rng, size, rng.choice(("GBP", "GBP", "EUR", "USD")))
        count -= size


def _stored(handle: SandboxHandle, api_key: str) -> list[dict[str, Any]]:
    """The account's orders in seq order, as the list endpoints show them."""
    rows = handle.control("GET", "/orders", api_key=api_key)["orders"]
    listed = []
    for row in rows:
        body = {k: v for k, v in row.items() if k not in {"apiKey", "idempotencyKey", "cost"}}
        body.pop("orderRequestId")
        hidden = {"voucherCode", "redemptionUrl"}
        body["merchant"] = {k: v for k, v in body["merchant"].items() if k not in hidden}
        listed.append(body)
    return listed


def _moment(raw: str | None, *, end_of_day: bool) -> datetime | None:
    if not raw:
        return None
    moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if end_of_day and len(raw) == 10:
        moment += timedelta(days=1) - timedelta(milliseconds=1)
    return moment


def _expected(orders: list[dict[str, Any]], params: Mapping[str, str]) -> list[dict[str, Any]]:
    """The straightforward answer: filter every order, then sort all the matches."""
    merchant = params.get("merchant", "").strip().casefold()
    status = params.get("status", "").strip()
    flags = {name: params.get(name) for name in ("isActive", "isPaid")}
    start = _moment(params.get("startDate"), end_of_day=False)
    end = _moment(params.get("endDate"), end_of_day=True)

    def matches(order: dict[str, Any]) -> bool:
        created = datetime.fromisoformat(order["createdAt"].replace("Z", "+00:00"))
        return (
            (not merchant or merchant in order["merchant"]["name"].casefold())
            and (not status or order["status"] == status)
            and all(want is None or order[name] is (want == "true") for name, want in flags.items())
            and (start is None or created >= start)
            and (end is None or created <= end)
        )

    sort_by = params.get("sortBy", "createdAt")
    seq = {id(order): n for n, order in enumerate(orders)}
    found = [o for o in orders if matches(o)]
    return sorted(
        found,
        key=lambda o: (o[sort_by], seq[id(o)]),
        reverse=params.get("order", "desc") == "desc",
    )


def _all_pages(api: Api, path: str, limit: int, params: Mapping[str, str]) -> list[Any]:
    """Every page of a listing, checking each page's pagination fields on the way."""
    found: list[Any] = []
    page = 1
    while True:
        reply = api.get(path, page=page, limit=limit, **params)
        assert reply.status == 200, reply.body
        body = reply.body
        if path == "/orders":
            total, pages, rows = body["total"], body["totalPages"], body["orders"]
            assert body["page"] == page
        else:
            pagination = body["pagination"]
            total, pages, rows = pagination["total"], pagination["totalPages"], body["orders"]
            assert (pagination["currentPage"], pagination["limit"]) == (page, limit)
        assert pages == math.ceil(total / limit)
        found.extend(rows)
        if page >= pages:
            assert len(found) == total
            past = api.get(path, page=page + 1, limit=limit, **params).body
            assert past["orders"] == []
            return found
        assert len(rows) == limit
        page += 1


def _check_orders(api: Api, handle: SandboxHandle, searches: list[dict[str, str]]) -> int:
    """Every listing and search, in every sort, against the straightforward answer."""
    stored = _stored(handle, api.api_key)
    checked = 0
    for sort_by in SORT_FIELDS:
        for direction in ("asc", "desc"):
            sort = {"sortBy": sort_by, "order": direction}
            want = _expected(stored, sort)
            assert _all_pages(api, "/orders", 100, sort) == want
            for search in searches:
                params = {**search, **sort}
                want = _expected(stored, params)
                got = _all_pages(api, "/orders/search", 100, params)
                assert got == want, params
                checked += len(got)
    default = _expected(stored, {})
    assert _all_pages(api, "/orders", 7, {}) == default  # createdAt, desc
    assert _all_pages(api, "/orders/search", 9, {}) == default
    return checked


def _searches(stored: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Date bounds on real createdAt values (inclusive ends), bare dates, an offset."""
    stamps = sorted(o["createdAt"] for o in stored)
    low, high = stamps[len(stamps) // 4], stamps[3 * len(stamps) // 4]
    low_moment = datetime.fromisoformat(low.replace("Z", "+00:00"))
    as_offset = low_moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds")
    shifted = (
        (low_moment + timedelta(hours=2)).replace(tzinfo=None).isoformat(timespec="milliseconds")
    )
    today = stamps[-1][:10]
    return [
        {},
        {"startDate": low},
        {"startDate": stamps[-12]},  # few matches: sorted by themselves
        {"endDate": high},
        {"startDate": low, "endDate": high},
        {"startDate": high, "endDate": low},
        {"startDate": as_offset},  # no zone: UTC
        {"startDate": shifted + "+02:00"},  # the same instant as `low`
        {"startDate": today, "endDate": today},  # a bare end date covers the whole day
        {"endDate": "2000-01-01"},
        {"merchant": "amazon", "startDate": low},
        {"merchant": " AMAZON UK ", "endDate": high, "isPaid": "true"},
        {"merchant": "tesco"},
        {"status": "expired"},
        {"isActive": "false", "startDate": low},
        {"isPaid": "false", "isActive": "true"},
        {"status": "active", "isPaid": "true", "isActive": "true", "startDate": low},
    ]


def _mix_states(handle: SandboxHandle, api_key: str, rng: random.Random) -> None:
    """White-box: give orders other states and move createdAt/updatedAt out of seq
    order (the API never does; the listings must still follow the bodies)."""
    account = handle.app_state.accounts[api_key]
    for n, order in enumerate(account.orders):
        body = order.body
        if n % 5 == 0:
            body["status"], body["isActive"] = "expired", False
        if n % 7 == 0:
            body["isPaid"] = False
        if n % 3 == 0:
            moment = datetime.fromisoformat(body["createdAt"].replace("Z", "+00:00"))
            moment -= timedelta(seconds=rng.randint(0, 7200))
            stamp = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
            body["createdAt"] = stamp
        if n % 4 == 0:
            body["updatedAt"] = body["createdAt"][:-5] + "999Z"
    account.orders_changed()


def test_ugiftme_order_listings_match_a_full_sort(
    make_ugiftme_sandbox: Callable[..., SandboxHandle], api_for: Callable[..., Api]
) -> None:
    handle = make_ugiftme_sandbox(
        async_mode=False,
        rate_limit=ROOMY_RATE_LIMIT,
        api_keys=("key-a", "key-b"),
        funding={"GBP": "100000", "EUR": "100000", "USD": "100000"},
    )
    api, other = api_for(handle, "key-a"), api_for(handle, "key-b")
    rng = random.Random(20250115)
    _place(api, rng, 180)
    _place(other, rng, 25)
    stored = _stored(handle, "key-a")
    assert len(stored) == 180
    assert _check_orders(api, handle, _searches(stored)) > 0

    # More orders, some through the async worker: the cached listings must follow.
    _place(api, rng, 90)
    handle.control("PUT", "/mode", {"mode": "async"})
    request_id = api.post("/orders/bulk", {"orders": [item("TESCO_UK", "5")] * 30}).body[
        "orderRequestId"
    ]
    assert api.wait_for_request(request_id, {"succeeded", "failed"})["status"] == "succeeded"
    stored = _stored(handle, "key-a")
    assert len(stored) == 300
    _check_orders(api, handle, _searches(stored))
    assert _check_orders(other, handle, _searches(_stored(handle, "key-b"))) > 0

    _mix_states(handle, "key-a", rng)
    stored = _stored(handle, "key-a")
    assert {o["status"] for o in stored} == {"active", "expired"}
    assert _check_orders(api, handle, _searches(stored)) > 0


def test_ugiftme_search_when_created_strings_do_not_sort_chronologically(
    make_ugiftme_sandbox: Callable[..., SandboxHandle], api_for: Callable[..., Api]
) -> None:
    """Not something the sandbox writes, but a date search must still compare instants."""
    handle = make_ugiftme_sandbox(async_mode=False, rate_limit=ROOMY_RATE_LIMIT)
    api = api_for(handle)
    _place(api, random.Random(7), 40)
    account = handle.app_state.accounts[handle.api_key]
    for n, order in enumerate(account.orders):
        hour = 6 + n % 8
        zone = "+05:00" if n % 2 else "Z"
        order.body["createdAt"] = f"2025-06-01T{hour:02d}:{n:02d}:00.000{zone}"
    account.orders_changed()
    searches = [
        {"startDate": "2025-06-01T05:30:00Z"},
        {"endDate": "2025-06-01T07:00:00Z"},
        {"startDate": "2025-06-01T03:00:00+02:00", "endDate": "2025-06-01T09:00:00Z"},
        {"startDate": "2025-06-01", "merchant": "amazon"},
    ]
    assert _check_orders(api, handle, searches) > 0


def test_ugiftme_listing_errors_keep_their_precedence(sync_api: Api) -> None:
    sync_api.post("/orders", item())
    for path in ("/orders", "/orders/search"):
        assert sync_api.get(path, sortBy="price").body["message"].startswith("sortBy must be")
        assert sync_api.get(path, order="up").body["message"] == "order must be asc or desc"
        assert sync_api.get(path, sortBy="price", limit=500).body["message"].startswith("limit")
        assert sync_api.get(path, page=3).body["orders"] == []
    bad = sync_api.get("/orders/search", sortBy="price", startDate="soon").body
    assert bad["message"] == "startDate must be an ISO-8601 date"
    bad = sync_api.get("/orders/search", order="up", isPaid="maybe").body
    assert bad["message"] == "isPaid must be true or false"


def test_ugiftme_wallet_transactions_page_newest_first(sync_api: Api) -> None:
    rng = random.Random(3)
    _place(sync_api, rng, 120)
    sync_api.sandbox.control("POST", "/wallets/EUR/fund", {"amount": "5.00"})
    account = sync_api.sandbox.app_state.accounts[sync_api.api_key]
    want = decode_json(encode_json(list(reversed(account.transactions))))
    got: list[Any] = []
    for page in range(1, 20):
        body = sync_api.get("/wallet/transactions", page=page, limit=11).body
        assert body["pagination"] == {
            "currentPage": page,
            "totalPages": math.ceil(len(want) / 11),
            "totalTransactions": len(want),
            "limit": 11,
        }
        got.extend(body["transactions"])
        if page >= body["pagination"]["totalPages"]:
            break
    assert got == want and len(want) == 121
    assert sync_api.get("/wallet/transactions", page=99, limit=11).body["transactions"] == []


def test_gifq_listings_are_newest_first_by_seq(
    make_gifq_sandbox: Callable[..., SandboxHandle], gifq_api_for: Callable[..., GifqApi]
) -> None:
    handle = make_gifq_sandbox(
        rate_limit=ROOMY_RATE_LIMIT, fault_async_fail=0.3, seed=11, funding={"GBP": "100000"}
    )
    api = gifq_api_for(handle)
    rng = random.Random(5)
    payout_ids = []
    for n in range(150):
        value = Decimal(rng.choice(("10", "25", "15.00")))
        assert api.order(f"ref-{n}", face_value=value).status == 201
        if n % 30 == 0:
            payout_ids.append(api.post("/payout-orders", payout_body(1 + n % 3)).body["id"])
    for payout_id in payout_ids:
        api.wait_payout_order(payout_id)
    api.wait_order(api.get("/orders", limit=1).body[0]["id"])  # the last one queued

    def newest_first(rows: list[dict[str, Any]], drop: set[str]) -> list[dict[str, Any]]:
        return [{k: v for k, v in row.items() if k not in drop} for row in reversed(rows)]

    orders = handle.control("GET", "/orders")["orders"]
    assert {o["status"] for o in orders} >= {"completed", "failed"}
    control_only = {"apiKey", "charged", "chargedCurrency", "optionId", "requestId", "redemption"}
    assert api.all_pages("/orders") == newest_first(orders, control_only)
    payout_orders = handle.control("GET", "/payout-orders")["payoutOrders"]
    listed = api.all_pages("/payout-orders")
    assert [o["id"] for o in listed] == [o["id"] for o in reversed(payout_orders)]
    payouts = handle.control("GET", "/payouts")["payouts"]
    assert api.all_pages("/payouts") == newest_first(payouts, {"apiKey"})
    account = handle.app_state.accounts[api.api_key]
    want = decode_json(encode_json(list(reversed(account.transactions))))
    assert api.all_pages("/transactions") == want
    reply = api.get("/transactions", page=2, limit=7)
    assert reply.body == want[7:14]
    assert (reply.headers["current-page"], reply.headers["total-count"]) == ("2", str(len(want)))
    for items in (account.orders, account.payout_orders, account.payouts):
        assert [x.seq for x in items] == sorted(x.seq for x in items)  # what the views rely on
    assert api.get("/orders", page=99).status == 400  # GIFQ refuses a page past the end
