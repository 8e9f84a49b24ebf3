"""Every endpoint of docs/providers/ugiftme.md, over real HTTP against the sandbox."""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal

import httpx
import pytest
from ugiftme_kit import Api, WebhookReceiver, item

from batcher.core.money import cost_after_discount
from batcher.sandbox.server import SandboxHandle

OBJECT_ID = re.compile(r"^[0-9a-f]{24}$")
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


# -- auth and conventions ------------------------------------------------------


def test_auth_returns_the_business(api: Api) -> None:
    reply = api.get("/auth")
    assert reply.status == 200
    assert set(reply.body) == {"businessId", "name", "verificationStatus", "email", "plan"}
    assert OBJECT_ID.match(reply.body["businessId"])


def test_missing_and_unknown_keys_get_401(ugiftme_sandbox: SandboxHandle) -> None:
    with httpx.Client(base_url=ugiftme_sandbox.base_url, trust_env=False) as client:
        missing = client.get("/auth")
        unknown = client.get("/auth", headers={"X-API-Key": "not-a-key"})
    assert missing.status_code == 401 and missing.json() == {"error": "Missing API key"}
    assert unknown.status_code == 401
    assert unknown.json()["error"] == "Invalid API key" and unknown.json()["reason"]
    assert "RateLimit-Limit" in missing.headers and "RateLimit-Remaining" in unknown.headers


def test_ip_allow_list_gives_403_outside_it(ugiftme_sandbox: SandboxHandle, api: Api) -> None:
    ugiftme_sandbox.control("PUT", "/account/ip-allow-list", json={"ips": ["10.0.0.0/8"]})
    refused = api.get("/products")
    assert refused.status == 403 and "127.0.0.1" in refused.body["reason"]
    ugiftme_sandbox.control("PUT", "/account/ip-allow-list", json={"ips": ["127.0.0.1"]})
    assert api.get("/products").status == 200
    ugiftme_sandbox.control("PUT", "/account/ip-allow-list", json={"ips": None})
    assert api.get("/products").status == 200


def test_incomplete_profile_gets_403(ugiftme_sandbox: SandboxHandle, api: Api) -> None:
    ugiftme_sandbox.control("PUT", "/account/profile", json={"complete": False})
    reply = api.get("/auth")
    assert reply.status == 403 and reply.body["error"] == "Business profile incomplete"


def test_unknown_path_is_a_json_404(api: Api) -> None:
    reply = api.get("/no/such/thing")
    assert reply.status == 404 and reply.body == {"error": "Not found"}
    assert reply.headers["RateLimit-Limit"] == "120"


def test_every_api_response_carries_rate_limit_headers(api: Api) -> None:
    replies = [
        api.get("/auth"),
        api.get("/products", limit=1),
        api.get("/orders/does-not-exist"),
        api.post("/orders", {"productCode": "X"}),
        api.post("/orders/bulk", {"orders": []}),
        api.get("/wallet"),
        api.send("DELETE", "/webhooks/nope"),
    ]
    remaining = [int(r.headers["RateLimit-Remaining"]) for r in replies]
    assert remaining == list(range(119, 119 - len(replies), -1))
    for reply in replies:
        assert reply.headers["RateLimit-Limit"] == "120"
        assert 1 <= int(reply.headers["RateLimit-Reset"]) <= 60


@pytest.mark.parametrize(
    "ugiftme_sandbox", [{"rate_limit": 3, "rate_window_seconds": 1}], indirect=True
)
def test_over_the_limit_gets_429_with_retry_after(api: Api) -> None:
    replies = [api.get("/auth") for _ in range(4)]
    assert [r.status for r in replies] == [200, 200, 200, 429]
    refused = replies[-1]
    assert refused.body == {"error": "Too many requests"}
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert refused.headers["Retry-After"] == refused.headers["RateLimit-Reset"] == "1"


# -- catalog -----------------------------------------------------------------------


def test_products_paging_and_limit(api: Api) -> None:
    first = api.get("/products", page=1, limit=10).body
    total = first["pagination"]["total"]
    assert total >= 30 and len(first["products"]) == 10
    assert first["pagination"] == {
        "total": total,
        "totalPages": -(-total // 10),
        "currentPage": 1,
        "limit": 10,
    }
    everything = api.get("/products", limit=100).body["products"]
    assert len(everything) == total
    assert api.get("/products", page=99).body["products"] == []
    assert api.get("/products", limit=101).status == 400
    assert api.get("/products", page="x").body["error"] == "Invalid query"


def test_catalog_content_is_exact_decimal_and_varied(api: Api) -> None:
    products = api.get("/products", limit=100).body["products"]
    assert {p["currency"] for p in products} >= {"GBP", "EUR", "USD"}
    assert any(p["denominations"] for p in products)
    assert any(not p["denominations"] for p in products)
    assert any(p["discount"] < 0 for p in products)
    assert any(not p["isActive"] for p in products)
    amazon = next(p for p in products if p["productCode"] == "AMAZON_UK_STD")
    assert amazon["discount"] == Decimal("2.5") and isinstance(amazon["minValue"], int | Decimal)
    fields = {
        "productCode", "name", "merchant", "currency", "countries", "category", "minValue",
        "maxValue", "denominations", "discount", "isActive", "imageUrl", "updatedAt",
    }  # fmt: skip
    assert all(set(p) == fields for p in products)


def test_product_search_and_filters(api: Api) -> None:
    found = api.get("/products/search", q="amazon").body
    assert {p["productCode"] for p in found["products"]} >= {"AMAZON_UK_STD", "AMAZON_US_STD"}
    assert found["pagination"]["currentPage"] == 1
    eur = api.get("/products/search", currency="EUR", category="Fashion").body["products"]
    assert eur and all(p["currency"] == "EUR" and p["category"] == "Fashion" for p in eur)
    steam = api.get("/products/search", merchant="steam", limit=2).body
    assert steam["pagination"]["total"] == 3 and len(steam["products"]) == 2
    filters = api.get("/products/filters").body
    assert "Gaming" in filters["categories"] and "Tesco" in filters["merchants"]


# -- orders (sync) -------------------------------------------------------------------


def test_sync_single_order_has_the_contract_shape(sync_api: Api) -> None:
    before = sync_api.wallet("GBP")["balance"]
    reply = sync_api.post("/orders", item("AMAZON_UK_STD", "25.50"))
    assert reply.status == 201
    assert reply.headers["X-Business-Orders-Async"] == "false"
    order = reply.body
    assert OBJECT_ID.match(order["_id"])
    assert re.fullmatch(r"txn_[0-9A-Z]{26}", order["transactionId"])
    assert order["status"] == "active" and order["isPaid"] is True and order["isActive"] is True
    assert order["valuePurchased"] == Decimal("25.50") and b'"valuePurchased":25.50' in reply.raw
    merchant = order["merchant"]
    assert merchant["name"] == "Amazon UK" and merchant["distributionMethod"] == "email"
    assert re.fullmatch(r"[A-Z2-9]{4}(-[A-Z2-9]{4}){3}", merchant["voucherCode"])
    assert merchant["redemptionUrl"].startswith("https://")
    assert order["giftOrder"] == {
        "message": "Thank you!",
        "recipientEmail": "ann@example.com",
        "recipientName": "Ann Example",
    }
    for stamp in ("createdAt", "updatedAt", "expiryDate"):
        assert TIMESTAMP.match(order[stamp])
    cost = cost_after_discount(Decimal("25.50"), Decimal("2.5"), "GBP")
    assert sync_api.wallet("GBP")["balance"] == before - cost == Decimal("9975.14")


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"productCode": "NOPE"}, "Product not found"),
        ({"productCode": "HMV_UK", "merchant": "HMV"}, "Product inactive"),
        ({"merchant": "Tesco"}, "Merchant mismatch"),
        ({"currency": "EUR"}, "Currency mismatch"),
        ({"valuePurchased": Decimal("5000")}, "Invalid value"),
        ({"valuePurchased": Decimal("10.005")}, "Invalid value"),
        ({"valuePurchased": "10"}, "Validation failed"),
        ({"merchant": None}, "Validation failed"),
        ({"recipientEmail": "not-an-email"}, "Validation failed"),
    ],
)
def test_sync_single_order_validation_errors(sync_api: Api, changes: dict, error: str) -> None:
    reply = sync_api.post("/orders", {**item(), **changes})
    assert reply.status == 400
    assert reply.body["error"] == error and reply.body["message"]


def test_denomination_products_accept_only_listed_values(sync_api: Api) -> None:
    assert sync_api.post("/orders", item("ARGOS_UK", "25")).status == 201
    assert sync_api.post("/orders", item("ARGOS_UK", "30")).body["error"] == "Invalid value"


def test_fee_products_charge_more_than_face(sync_api: Api) -> None:
    before = sync_api.wallet("GBP")["balance"]
    assert sync_api.post("/orders", item("SPOTIFY_UK", "10")).status == 201
    assert before - sync_api.wallet("GBP")["balance"] == Decimal("10.15")  # 1.5% fee


def test_invalid_json_is_400(sync_api: Api) -> None:
    response = sync_api.client.post("/orders", content=b"{oops")
    assert response.status_code == 400 and response.json()["error"] == "Invalid JSON"


def test_sync_bulk_creates_valid_items_and_rejects_the_rest(sync_api: Api) -> None:
    orders = [
        item("AMAZON_UK_STD", "10", "a@example.com"),
        item("NOPE", "10", "b@example.com"),
        item("TESCO_UK", "20", "c@example.com"),
        item("ARGOS_UK", "7", "d@example.com"),
    ]
    reply = sync_api.post("/orders/bulk", {"orders": orders})
    assert reply.status == 201
    body = reply.body
    assert body["success"] is True
    assert [o["giftOrder"]["recipientEmail"] for o in body["orders"]] == [
        "a@example.com",
        "c@example.com",
    ]
    assert body["rejectedOrders"] == [
        {"productCode": "NOPE", "reason": "Product NOPE not found"},
        {"productCode": "ARGOS_UK", "reason": body["rejectedOrders"][1]["reason"]},
    ]
    assert "denomination" in body["rejectedOrders"][1]["reason"]
    cost = Decimal("9.75") + Decimal("19.20")
    assert body["summary"] == {
        "totalOrders": 2,
        "totalValue": Decimal("30.00"),
        "currency": "GBP",
        "remainingBalance": Decimal("10000.00") - cost,
    }


def test_bulk_request_level_errors(sync_api: Api) -> None:
    mixed = sync_api.post("/orders/bulk", {"orders": [item(), item("ZALANDO_EU", "20")]})
    assert mixed.status == 400 and mixed.body["error"] == "Mixed currencies"
    empty = sync_api.post("/orders/bulk", {"orders": []})
    assert empty.status == 400 and empty.body["message"]
    too_many = sync_api.post(
        "/orders/bulk", {"orders": [item(email=f"{i}@x.io") for i in range(101)]}
    )
    assert too_many.status == 400 and too_many.body["error"] == "Too many orders"
    assert sync_api.get("/orders").body["total"] == 0


def test_bulk_limit_is_configurable(
    make_ugiftme_sandbox: Callable[..., SandboxHandle], api_for: Callable[..., Api]
) -> None:
    api = api_for(make_ugiftme_sandbox(async_mode=False, bulk_limit=2))
    three = [item(email=f"{i}@x.io") for i in range(3)]
    assert api.post("/orders/bulk", {"orders": three}).status == 400
    assert api.post("/orders/bulk", {"orders": three[:2]}).status == 201


def test_bulk_402_is_all_or_nothing(
    make_ugiftme_sandbox: Callable[..., SandboxHandle], api_for: Callable[..., Api]
) -> None:
    sandbox = make_ugiftme_sandbox(async_mode=False, funding={"GBP": "20.00"})
    api = api_for(sandbox)
    orders = [item(email=f"{i}@example.com") for i in range(3)]  # 3 x 9.75 = 29.25
    reply = api.post("/orders/bulk", {"orders": orders})
    assert reply.status == 402
    assert reply.body["error"] == "Insufficient funds"
    assert (reply.body["required"], reply.body["available"], reply.body["currency"]) == (
        Decimal("29.25"),
        Decimal("20.00"),
        "GBP",
    )
    assert sandbox.control("GET", "/orders")["total"] == 0
    assert api.wallet("GBP")["balance"] == Decimal("20.00")
    # Funding is computed on the items that pass validation only.
    orders[2]["productCode"] = "NOPE"
    partly = api.post("/orders/bulk", {"orders": orders})
    assert partly.status == 201 and len(partly.body["orders"]) == 2
    assert api.wallet("GBP")["balance"] == Decimal("0.50")


def test_single_order_402(
    make_ugiftme_sandbox: Callable[..., SandboxHandle], api_for: Callable[..., Api]
) -> None:
    api = api_for(make_ugiftme_sandbox(async_mode=False, funding={"GBP": 0}))
    reply = api.post("/orders", item())
    assert reply.status == 402 and reply.body["available"] == Decimal("0.00")


# -- reading orders --------------------------------------------------------------------


def _place_three(api: Api) -> list[dict]:
    orders = [
        item("AMAZON_UK_STD", "10", "a@example.com"),
        item("TESCO_UK", "30", "b@example.com"),
        item("AMAZON_UK_STD", "20", "c@example.com"),
    ]
    return api.post("/orders/bulk", {"orders": orders}).body["orders"]


def test_list_orders_hides_vouchers_and_pages(sync_api: Api) -> None:
    created = _place_three(sync_api)
    listing = sync_api.get("/orders", limit=2).body
    assert (listing["total"], listing["page"], listing["totalPages"]) == (3, 1, 2)
    assert [o["_id"] for o in listing["orders"]] == [created[2]["_id"], created[1]["_id"]]
    assert all("voucherCode" not in o["merchant"] for o in listing["orders"])
    ascending = sync_api.get("/orders", sortBy="valuePurchased", order="asc").body["orders"]
    assert [o["valuePurchased"] for o in ascending] == [10, 20, 30]
    assert sync_api.get("/orders", sortBy="price").status == 400


def test_get_order_by_id_includes_the_voucher(sync_api: Api) -> None:
    created = _place_three(sync_api)[0]
    fetched = sync_api.get(f"/orders/{created['_id']}").body
    assert fetched == created and fetched["merchant"]["voucherCode"]
    missing = sync_api.get("/orders/ffffffffffffffffffffffff")
    assert missing.status == 404 and missing.body["error"]


def test_search_orders(sync_api: Api) -> None:
    _place_three(sync_api)
    amazon = sync_api.get("/orders/search", merchant="amazon").body
    assert amazon["success"] is True and amazon["pagination"]["total"] == 2
    assert all("voucherCode" not in o["merchant"] for o in amazon["orders"])
    assert (
        sync_api.get("/orders/search", status="active", isPaid="true").body["pagination"]["total"]
        == 3
    )
    assert sync_api.get("/orders/search", isActive="false").body["orders"] == []
    assert (
        sync_api.get("/orders/search", startDate="2000-01-01", endDate="2999-12-31").body[
            "pagination"
        ]["total"]
        == 3
    )
    assert sync_api.get("/orders/search", endDate="2000-01-01").body["orders"] == []
    page = sync_api.get("/orders/search", limit=1, page=2, sortBy="createdAt", order="asc").body
    assert page["pagination"] == {"total": 3, "totalPages": 3, "currentPage": 2, "limit": 1}
    assert page["orders"][0]["giftOrder"]["recipientEmail"] == "b@example.com"
    assert sync_api.get("/orders/search", startDate="yesterday").status == 400
    assert sync_api.get("/orders/search", isPaid="maybe").status == 400


def test_order_request_404(api: Api) -> None:
    reply = api.get("/orders/order-requests/ffffffffffffffffffffffff")
    assert reply.status == 404 and reply.body["error"]


# -- wallet ------------------------------------------------------------------------------


def test_wallets_and_transactions(ugiftme_sandbox: SandboxHandle, api: Api) -> None:
    wallets = api.get("/wallet").body
    assert [w["currency"] for w in wallets] == ["EUR", "GBP", "USD"]
    gbp = wallets[1]
    assert gbp["balance"] == gbp["availableBalance"] == Decimal("10000.00")
    assert set(gbp) == {
        "_id", "userID", "currency", "balance", "availableBalance", "transactions",
        "createdAt", "updatedAt",
    }  # fmt: skip
    ugiftme_sandbox.control("POST", "/wallets/GBP/fund", json={"amount": "100.00"})
    ugiftme_sandbox.control("PUT", "/mode", json={"mode": "sync"})
    order = api.post("/orders", item()).body
    transactions = api.get("/wallet/transactions", limit=1).body
    assert transactions["pagination"] == {
        "currentPage": 1,
        "totalPages": 2,
        "totalTransactions": 2,
        "limit": 1,
    }
    newest = transactions["transactions"][0]
    assert newest["transactionType"] == "purchase" and newest["orderID"] == order["_id"]
    assert newest["transactionValue"] == Decimal("9.75") and newest["currency"] == "GBP"
    assert newest["details"]["type"] == "purchase" and TIMESTAMP.match(newest["timestamp"])
    funding = api.get("/wallet/transactions", page=2, limit=1).body["transactions"][0]
    assert funding["transactionType"] == "funding" and funding["transactionValue"] == Decimal(
        "100.00"
    )
    assert api.wallet("GBP")["balance"] == Decimal("10090.25")
    assert api.wallet("GBP")["transactions"][0]["orderID"] == order["_id"]


def test_accounts_are_isolated(
    make_ugiftme_sandbox: Callable[..., SandboxHandle], api_for: Callable[..., Api]
) -> None:
    sandbox = make_ugiftme_sandbox(api_keys=("key-a", "key-b"), async_mode=False)
    a, b = api_for(sandbox, "key-a"), api_for(sandbox, "key-b")
    order = a.post("/orders", item(), key="same-key").body
    assert b.get(f"/orders/{order['_id']}").status == 404
    assert b.post("/orders", item(), key="same-key").body["_id"] != order["_id"]
    assert a.wallet("GBP")["balance"] == b.wallet("GBP")["balance"] == Decimal("9990.25")
    sandbox.control("POST", "/wallets/GBP/fund", json={"amount": 5}, api_key="key-b")
    assert b.wallet("GBP")["balance"] - a.wallet("GBP")["balance"] == 5
    assert a.get("/auth").body["businessId"] != b.get("/auth").body["businessId"]
    assert {o["apiKey"] for o in sandbox.control("GET", "/orders")["orders"]} == {"key-a", "key-b"}
    assert sandbox.control("GET", "/orders", api_key="key-a")["total"] == 1


# -- webhooks (CRUD; delivery is in test_sandbox_webhooks.py) -------------------------------


def test_webhook_crud(api: Api) -> None:
    created = api.post(
        "/webhooks",
        {"url": "https://example.com/h", "events": ["order.succeeded"], "description": "ops"},
    )
    assert created.status == 201
    hook = created.body
    assert hook["secret"].startswith("whsec_") and OBJECT_ID.match(hook["id"])
    assert {"id", "url", "events", "secret"} <= set(hook)
    listed = api.get("/webhooks").body["webhooks"]
    assert [h["id"] for h in listed] == [hook["id"]] and "secret" not in listed[0]
    patched = api.send(
        "PATCH", f"/webhooks/{hook['id']}", {"events": ["wallet.updated"], "isActive": False}
    )
    assert patched.status == 200 and patched.body["events"] == ["wallet.updated"]
    assert patched.body["isActive"] is False and "secret" not in patched.body
    assert api.send("PATCH", f"/webhooks/{hook['id']}", {}).status == 400
    assert api.send("PATCH", f"/webhooks/{hook['id']}", {"events": []}).status == 400
    assert api.send("DELETE", f"/webhooks/{hook['id']}").status == 200
    assert api.send("DELETE", f"/webhooks/{hook['id']}").status == 404
    assert api.get("/webhooks").body["webhooks"] == []


def test_webhook_rejects_unknown_events(api: Api) -> None:
    reply = api.post("/webhooks", {"url": "https://example.com/h", "events": ["order.shipped"]})
    assert reply.status == 400 and "order.queued" in reply.body["validEvents"]
    assert api.post("/webhooks", {"url": "ftp://x", "events": ["order.queued"]}).status == 400


def test_webhook_test_sample(api: Api) -> None:
    sample = api.get("/webhooks/test-sample").body
    assert sample["headers"]["X-Webhook-Event"] == sample["event"]
    assert re.fullmatch(r"[0-9a-f]{64}", sample["headers"]["X-Webhook-Signature"])
    assert api.post("/webhooks/test", {"webhookId": "ffffffffffffffffffffffff"}).status == 404
    assert api.post("/webhooks/test", {}).status == 400


def test_webhook_secret_is_shown_only_at_creation(
    ugiftme_sandbox: SandboxHandle, api: Api, webhook_receiver: WebhookReceiver
) -> None:
    created = api.post("/webhooks", {"url": webhook_receiver.url, "events": ["wallet.updated"]})
    assert created.status == 201 and set(created.body) >= {"id", "url", "events", "secret"}
    secret, hook_id = created.body["secret"].encode(), created.body["id"]
    ugiftme_sandbox.control("POST", "/wallets/GBP/fund", json={"amount": "1"})
    assert len(webhook_receiver.wait_for(1)) == 1
    later = [
        api.get("/webhooks"),
        api.send("PATCH", f"/webhooks/{hook_id}", {"description": "ops"}),
        api.post("/webhooks/test", {"webhookId": hook_id}),
        api.get("/webhooks/test-sample"),
    ]
    assert [r.status for r in later] == [200, 200, 200, 200]
    assert not any(secret in r.raw for r in later)
    deliveries = httpx.get(
        f"{ugiftme_sandbox.host_url}/__sandbox/webhooks/deliveries", trust_env=False
    )
    assert deliveries.status_code == 200 and secret not in deliveries.content
