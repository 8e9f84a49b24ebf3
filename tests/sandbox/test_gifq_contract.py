"""The GIFQ API contract (docs/providers/gifq.md): auth, errors, pagination, catalog, orders,
balances and transactions, over real HTTP."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import httpx
import pytest
from gifq_kit import ROOMY_RATE_LIMIT, GifqApi, order_body
from ugiftme_kit import Reply

from batcher.sandbox.server import SandboxHandle


def _no_ratelimit_headers(headers: httpx.Headers) -> bool:
    return not any("ratelimit" in name.lower() for name in headers)


# -- auth and errors --------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"X-Api-Token": "nope"}, {"X-API-Key": "k"}])
def test_missing_or_unknown_token_is_401(gifq: SandboxHandle, headers: dict[str, str]) -> None:
    reply = httpx.get(gifq.base_url + "/balances", headers=headers, trust_env=False)
    assert reply.status_code == 401
    assert reply.json() == {"message": "Unauthorized", "status": "error"}
    assert reply.headers["X-Request-Id"]


def test_errors_have_the_contract_shape(gifq_api: GifqApi) -> None:
    missing = gifq_api.get("/orders/no-such-order")
    assert missing.status == 404 and missing.body == {
        "message": "Order not found",
        "status": "error",
    }
    assert gifq_api.get("/nowhere").body == {"message": "Not found", "status": "error"}
    bad_json = gifq_api.post("/orders", b"{not json")
    assert bad_json.status == 400 and bad_json.body["status"] == "error"


# -- pagination -------------------------------------------------------------------


def test_pages_are_bare_arrays_described_by_headers(gifq_api: GifqApi) -> None:
    first = gifq_api.get("/products")
    assert first.status == 200 and isinstance(first.body, list) and len(first.body) == 10
    total = len(gifq_api.all_pages("/products"))
    assert first.headers["current-page"] == "1"
    assert first.headers["page-items"] == "10"  # the page size in effect (pagy)
    assert first.headers["total-count"] == str(total)
    assert first.headers["total-pages"] == str(-(-total // 10))
    assert 'rel="next"' in first.headers["link"] and 'rel="prev"' not in first.headers["link"]
    last = gifq_api.get("/products", page=2, limit=20)
    assert len(last.body) == total - 20 and last.headers["current-page"] == "2"
    assert last.headers["page-items"] == "20" and last.headers["total-pages"] == "2"
    assert _no_ratelimit_headers(first.headers)


@pytest.mark.parametrize("limit", ["21", "100", "0", "ten"])
def test_limit_outside_1_to_20_is_refused(gifq_api: GifqApi, limit: str) -> None:
    reply = gifq_api.get("/products", limit=limit)
    assert reply.status == 400
    assert reply.body == {
        "message": f"Pagination error: expected :limit in 1..20; got {limit}",
        "status": "error",
    }


def test_limit_can_be_clamped_instead_of_refused(
    make_gifq_sandbox: Callable[..., SandboxHandle], gifq_api_for: Callable[..., GifqApi]
) -> None:
    api = gifq_api_for(make_gifq_sandbox(clamp_page_limit=True))
    reply = api.get("/products", limit=50)
    assert reply.status == 200 and len(reply.body) == 20 and reply.headers["page-items"] == "20"


@pytest.mark.parametrize("page", ["0", "4", "-1", "x"])
def test_page_outside_the_range_is_400(gifq_api: GifqApi, page: str) -> None:
    reply = gifq_api.get("/products", page=page)  # 27 brands: 3 pages of 10
    assert reply.status == 400
    assert reply.body == {
        "message": f"Pagination error: expected :page in 1..3; got {page}",
        "status": "error",
    }


def test_an_empty_list_has_one_empty_page(gifq_api: GifqApi) -> None:
    reply = gifq_api.get("/orders")
    assert reply.body == [] and reply.headers["total-count"] == "0"
    assert reply.headers["total-pages"] == "1"
    assert gifq_api.get("/orders", page=2).body["message"] == (
        "Pagination error: expected :page in 1..1; got 2"
    )


# -- catalog ----------------------------------------------------------------------


def test_catalog_is_realistic_and_sorted(gifq_api: GifqApi) -> None:
    brands = gifq_api.all_pages("/products")
    slugs = [b["brand"] for b in brands]
    assert len(brands) >= 20 and slugs == sorted(slugs)
    assert [b["title"].casefold() for b in brands] == sorted(b["title"].casefold() for b in brands)
    for brand in brands:
        assert set(brand) == {
            "brand", "title", "logo", "description", "terms", "redeem_instructions",
            "categories", "countries", "products",
        }  # fmt: skip
    options = [o for b in brands for o in b["products"]]
    assert {o["currency"] for o in options} == {"GBP", "EUR", "USD"}
    for option in options:
        assert set(option) == {
            "id", "min_face_value", "max_face_value", "countries", "currency", "discount",
            "stock_count", "expiry", "balance_check_url",
        }  # fmt: skip
        assert isinstance(option["min_face_value"], Decimal)  # exact JSON numbers
    assert any(o["min_face_value"] == o["max_face_value"] for o in options)  # fixed
    assert any(o["min_face_value"] < o["max_face_value"] for o in options)  # ranges
    assert any(o["discount"] < 0 for o in options)  # a fee
    assert any(o["stock_count"] is not None for o in options)  # limited stock
    assert any(o["stock_count"] is None for o in options)
    assert any(o["expiry"] is None for o in options) and any(o["expiry"] for o in options)
    assert any(o["balance_check_url"] is None for o in options)
    amazon = next(b for b in brands if b["brand"] == "amazon")
    assert amazon["countries"] == sorted({c for o in amazon["products"] for c in o["countries"]})


# -- orders -----------------------------------------------------------------------


def test_order_lifecycle_pending_then_completed_with_redemption(gifq_api: GifqApi) -> None:
    created = gifq_api.order("ref-1")
    assert created.status == 201
    order = created.body
    assert order["status"] == "pending" and "redemption" not in order
    assert order["reference"] == "ref-1" and order["brand"] == "amazon"
    assert order["face_value"] == "25.00" and order["price"] == "24.38"  # 24.375 half-up
    assert order["discount"] == "2.5" and order["payment_currency"] == "GBP"
    assert "fx_fee" not in order and "failure_reason" not in order
    assert order["created_at"].endswith("Z")
    done = gifq_api.wait_order(order["id"])
    assert done["status"] == "completed" and set(done["redemption"]) == {"code"}
    listed = gifq_api.get("/orders").body
    assert listed[0]["id"] == order["id"] and "redemption" not in listed[0]


@pytest.mark.parametrize(
    ("brand", "fields"),
    [
        ("odeon", {"link", "link_challenge_code"}),
        ("visa-prepaid", {"link", "serial", "security_code"}),
        ("spotify", {"pin"}),
        ("argos", {"code", "pin"}),
    ],
)
def test_redemption_holds_the_brands_fields(
    gifq_api: GifqApi, brand: str, fields: set[str]
) -> None:
    sample = {
        "odeon": ("GBP", "10.00", "GB"),
        "visa-prepaid": ("USD", "100.00", "US"),
        "spotify": ("EUR", "30.00", "DE"),
        "argos": ("GBP", "42.50", "GB"),
    }
    currency, value, country = sample[brand]
    reply = gifq_api.order(f"r-{brand}", brand=brand, currency=currency, face_value=value,
                           country=country)  # fmt: skip
    assert reply.status == 201, reply.body
    assert set(gifq_api.wait_order(reply.body["id"])["redemption"]) == fields


def test_fee_brand_costs_more_than_face_value(gifq_api: GifqApi) -> None:
    reply = gifq_api.order("fee", brand="visa-prepaid", currency="USD", face_value="100.00",
                           country="US")  # fmt: skip
    assert reply.body["discount"] == "-3.5" and reply.body["price"] == "103.50"
    assert gifq_api.balance("USD") == Decimal("4896.50")


def test_price_rounds_half_up_to_minor_units(gifq_api: GifqApi) -> None:
    reply = gifq_api.order("half", face_value="15.00")  # 15 x 0.975 = 14.625
    assert reply.body["price"] == "14.63"


def test_orders_list_newest_first(gifq_api: GifqApi) -> None:
    ids = [gifq_api.order(f"n{i}", face_value=10 + i).body["id"] for i in range(12)]
    listed = gifq_api.all_pages("/orders")
    assert [o["id"] for o in listed] == ids[::-1]
    assert all("redemption" not in o for o in listed)


def test_money_may_be_sent_as_numbers_or_strings(gifq_api: GifqApi) -> None:
    as_number = gifq_api.order("num", face_value=Decimal("30"))
    as_string = gifq_api.post("/orders", {**order_body("str"), "face_value": "30.0"})
    assert as_number.status == as_string.status == 201
    assert as_number.body["face_value"] == as_string.body["face_value"] == "30.00"


# -- reference idempotency --------------------------------------------------------


def test_same_reference_same_body_returns_the_order_with_200(gifq_api: GifqApi) -> None:
    first = gifq_api.order("same")
    again = gifq_api.post("/orders", {**order_body("same"), "face_value": "25", "country": "gb"})
    assert (first.status, again.status) == (201, 200)
    assert again.body["id"] == first.body["id"]
    done = gifq_api.wait_order(first.body["id"])
    late = gifq_api.order("same")
    assert late.status == 200 and late.body["redemption"] == done["redemption"]
    assert gifq_api.balance("GBP") == Decimal("5000.00") - Decimal("24.38")
    assert gifq_api.sandbox.control("GET", "/orders")["total"] == 1


@pytest.mark.parametrize(
    "change",
    [{"face_value": "26.00"}, {"brand": "tesco"}, {"payment_currency": "USD"}, {"country": "US"}],
)
def test_same_reference_different_body_is_422_with_request_id(
    gifq_api: GifqApi, change: dict[str, str]
) -> None:
    gifq_api.order("dup")
    reply = gifq_api.post("/orders", {**order_body("dup"), **change})
    assert reply.status == 422
    assert reply.body["message"] == "Reference already used with different parameters"
    assert reply.body["status"] == "error"
    assert reply.body["request_id"] == reply.headers["X-Request-Id"]
    assert gifq_api.sandbox.control("GET", "/orders")["total"] == 1


def test_payment_currency_equal_to_currency_is_the_same_order(gifq_api: GifqApi) -> None:
    first = gifq_api.order("pc")
    again = gifq_api.order("pc", payment_currency="GBP")
    assert again.status == 200 and again.body["id"] == first.body["id"]


# -- 422 refusals -----------------------------------------------------------------


def _assert_refused(reply: Reply, fragment: str) -> None:
    assert reply.status == 422, reply.body
    assert fragment in reply.body["message"] and reply.body["status"] == "error"
    assert reply.body["request_id"] == reply.headers["X-Request-Id"]


def test_insufficient_balance_creates_and_charges_nothing(
    gifq: SandboxHandle, gifq_api: GifqApi
) -> None:
    gifq.control("PUT", "/balances/GBP", json={"amount": "24.37"})
    before = gifq_api.get("/transactions").headers["total-count"]
    reply = gifq_api.order("poor")
    _assert_refused(reply, "Insufficient balance: 24.38 GBP required, 24.37 GBP available")
    assert gifq_api.balance("GBP") == Decimal("24.37")
    assert gifq_api.get("/transactions").headers["total-count"] == before
    assert gifq.control("GET", "/orders")["total"] == 0
    gifq.control("POST", "/balances/GBP/fund", json={"amount": "0.01"})
    assert gifq_api.order("poor").status == 201  # the refused reference stayed free
    assert gifq_api.balance("GBP") == 0


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"brand": "nosuch"}, "No product matches brand 'nosuch'"),
        ({"country": "FR"}, "No amazon product for country FR and currency GBP"),
        ({"currency": "USD"}, "No amazon product for country GB and currency USD"),
        ({"face_value": "600.00"}, "available: 5.00..500.00 GBP"),
        ({"face_value": "25.001"}, "too many decimals"),
        ({"face_value": "-5"}, "face_value must be positive"),
        ({"brand": "apple", "face_value": "30.00"}, "available: 25.00 GBP, 50.00 GBP"),
        ({"country": "GBR"}, "country must be an ISO 3166 country code"),
        ({"payment_currency": "JPY"}, "No exchange rate from GBP to JPY"),
        ({"reference": ""}, "reference is required"),
    ],
)
def test_no_matching_product_or_bad_fields_is_422(
    gifq: SandboxHandle, gifq_api: GifqApi, change: dict[str, str], fragment: str
) -> None:
    body = {**order_body("x"), **change}
    _assert_refused(gifq_api.post("/orders", body), fragment)
    assert gifq.control("GET", "/orders")["total"] == 0
    assert gifq_api.balance("GBP") == Decimal("5000.00")


def test_stock_runs_out_and_comes_back_on_failure(gifq: SandboxHandle, gifq_api: GifqApi) -> None:
    fifty = {"brand": "playstation", "face_value": "50.00"}  # 2 in stock
    assert [gifq_api.order(f"ps{i}", **fifty).status for i in range(2)] == [201, 201]
    _assert_refused(gifq_api.order("ps2", **fifty), "Out of stock")
    option = next(
        o for b in gifq_api.all_pages("/products") if b["brand"] == "playstation"
        for o in b["products"] if o["currency"] == "GBP" and o["min_face_value"] == 50
    )  # fmt: skip
    assert option["stock_count"] == 0
    gifq.control("PATCH", "/faults", json={"async_fail": 1})
    gifq.control("PATCH", f"/products/{option['id']}", json={"stock_count": 1})
    failed = gifq_api.order("ps3", **fifty)
    assert gifq_api.wait_order(failed.body["id"])["status"] == "failed"
    gifq.control("PATCH", "/faults", json={"async_fail": 0})
    assert gifq_api.order("ps4", **fifty).status == 201  # the failed order's unit came back


# -- cross-currency ---------------------------------------------------------------


def test_fx_fee_math_to_the_cent(gifq_api: GifqApi) -> None:
    reply = gifq_api.order("fx", payment_currency="usd")
    order = reply.body
    # price 24.38 GBP x 1.27 = 30.9626 -> 30.96 USD; fee 1% = 0.3096 -> 0.31; total 31.27
    assert order["payment_currency"] == "USD" and order["price"] == "24.38"
    assert order["fx_fee"] == {
        "rate": "1.27",
        "fee_percentage": "1.00",
        "fee_amount": "0.31",
        "total_charged": "31.27",
        "currency": "USD",
    }
    assert gifq_api.balance("USD") == Decimal("4968.73")
    assert gifq_api.balance("GBP") == Decimal("5000.00")
    movements = [
        (t["type"], t["amount"], t["currency"]) for t in gifq_api.get("/transactions").body
    ]
    assert movements[:2] == [("fx_fee", "-0.31", "USD"), ("order", "-30.96", "USD")]


def test_fx_rates_are_configurable_and_fees_round_half_up(
    make_gifq_sandbox: Callable[..., SandboxHandle], gifq_api_for: Callable[..., GifqApi]
) -> None:
    sandbox = make_gifq_sandbox(rate_limit=ROOMY_RATE_LIMIT, fx_rates={"GBP/USD": "2"})
    api = gifq_api_for(sandbox)
    # airbnb has no discount: 30.25 GBP x 2 = 60.50 USD; 1% = 0.605 -> 0.61 (half-up)
    reply = api.order("fx2", brand="airbnb", face_value="30.25", payment_currency="USD")
    assert reply.body["fx_fee"]["fee_amount"] == "0.61"
    assert reply.body["fx_fee"]["total_charged"] == "61.11"
    assert api.balance("USD") == Decimal("4938.89")
    rates = sandbox.control("GET", "/config")["fxRates"]
    assert rates["GBP/USD"] == "2" and rates["USD/GBP"] == "0.5"  # the inverse follows


def test_fx_eur_card_paid_in_gbp(gifq_api: GifqApi) -> None:
    # zalando EUR 50 at 5.5% = 47.25; x 0.8547 = 40.384575 -> 40.38; fee 0.4038 -> 0.40
    reply = gifq_api.order("eur", brand="zalando", currency="EUR", face_value="50", country="DE",
                           payment_currency="GBP")  # fmt: skip
    assert reply.body["price"] == "47.25"
    assert reply.body["fx_fee"]["total_charged"] == "40.78"
    assert gifq_api.balance("GBP") == Decimal("4959.22")


# -- balances and transactions ----------------------------------------------------


def test_balances_start_at_5000_each(gifq_api: GifqApi) -> None:
    assert gifq_api.get("/balances").body == [
        {"currency": "EUR", "amount": "5000.00"},
        {"currency": "GBP", "amount": "5000.00"},
        {"currency": "USD", "amount": "5000.00"},
    ]


def test_transactions_cover_every_movement_and_add_up(
    gifq: SandboxHandle, gifq_api: GifqApi
) -> None:
    gifq.control("POST", "/balances/GBP/fund", json={"amount": 100})
    ok = gifq_api.order("ok").body
    gifq_api.wait_order(ok["id"])
    gifq.control("PATCH", "/faults", json={"async_fail": 1})
    bad = gifq_api.order("bad", payment_currency="EUR").body
    assert gifq_api.wait_order(bad["id"])["failure_reason"].startswith("Upstream supplier error")
    transactions = gifq_api.all_pages("/transactions")
    kinds = [t["type"] for t in transactions]
    assert kinds == ["refund", "fx_fee", "order", "order", "top_up", "top_up", "top_up", "top_up"]
    refund = transactions[0]
    assert refund["amount"] == bad["fx_fee"]["total_charged"] and refund["currency"] == "EUR"
    assert refund["order_id"] == bad["id"] and refund["reference"] == "bad"
    for currency in ("GBP", "EUR", "USD"):
        mine = [t for t in transactions if t["currency"] == currency]
        assert sum(Decimal(t["amount"]) for t in mine) == gifq_api.balance(currency)
        assert Decimal(mine[0]["balance_after"]) == gifq_api.balance(currency)
    top_up = transactions[-1]
    assert set(top_up) == {"id", "type", "amount", "currency", "balance_after", "created_at"}
