"""The GIFQ /api/__sandbox controls: balances, accounts, listings, config, stats and reset."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest
from gifq_kit import ROOMY_RATE_LIMIT, GifqApi, payout_body

from batcher.sandbox.server import SandboxControlError, SandboxHandle


def test_controls_live_under_api_sandbox(gifq: SandboxHandle) -> None:
    assert gifq.base_url.endswith("/api") and gifq.control_root == "/api/__sandbox"
    assert gifq.control("GET", "/api/__sandbox/health") == gifq.control("GET", "health")


def test_balance_controls(gifq: SandboxHandle, gifq_api: GifqApi) -> None:
    funded = gifq.control("POST", "/balances/chf/fund", json={"amount": "250.5"})
    assert {"currency": "CHF", "amount": "250.50"} in funded["balances"]
    assert gifq_api.balance("CHF") == Decimal("250.50")
    gifq.control("PUT", "/balances/GBP", json={"amount": 12})
    gifq.control("POST", "/balances/EUR/drain")
    assert gifq_api.balance("GBP") == Decimal("12.00") and gifq_api.balance("EUR") == 0
    kinds = [t["type"] for t in gifq_api.get("/transactions").body]
    assert kinds == ["top_up"] * 4  # starting balances + the fund; set and drain write none
    for bad in ({"amount": "-1"}, {"amount": "1.234"}, {"amount": "lots"}, {}):
        with pytest.raises(SandboxControlError) as refused:
            gifq.control("POST", "/balances/GBP/fund", json=bad)
        assert refused.value.status_code == 400


def test_each_token_is_its_own_account(
    make_gifq_sandbox: Callable[..., SandboxHandle], gifq_api_for: Callable[..., GifqApi]
) -> None:
    sandbox = make_gifq_sandbox(
        api_keys=("a", "b"), rate_limit=ROOMY_RATE_LIMIT, funding={"GBP": "100", "USD": 0}
    )
    a, b = gifq_api_for(sandbox, "a"), gifq_api_for(sandbox, "b")
    order = a.order("shared-ref").body
    assert b.order("shared-ref").body["id"] != order["id"]  # references are per account
    assert b.get(f"/orders/{order['id']}").status == 404
    assert a.balance("GBP") == b.balance("GBP") == Decimal("75.62")
    assert a.balance("USD") == 0
    with pytest.raises(SandboxControlError) as ambiguous:
        sandbox.control("GET", "/balances")
    assert ambiguous.value.status_code == 400
    with pytest.raises(SandboxControlError) as unknown:
        sandbox.control("GET", "/balances", api_key="zzz")
    assert unknown.value.status_code == 404
    listed = sandbox.control("GET", "/orders")["orders"]
    assert [(o["apiKey"], o["reference"]) for o in listed] == [("a", "shared-ref"),
                                                               ("b", "shared-ref")]  # fmt: skip
    assert sandbox.control("GET", "/orders", api_key="b")["total"] == 1


def test_listings_show_everything_created_with_its_key_and_token(
    gifq: SandboxHandle, gifq_api: GifqApi
) -> None:
    gifq_api.order("one", payment_currency="USD")
    gifq_api.order("one", payment_currency="USD")  # a replay creates nothing
    gifq_api.post("/payout-orders", payout_body(2), key="po-key")
    gifq_api.post("/payout-orders", payout_body(1))
    orders = gifq.control("GET", "/orders")
    assert orders["total"] == 1
    row = orders["orders"][0]
    assert row["reference"] == "one" and row["apiKey"] == gifq.api_key
    assert row["charged"] == "31.27" and row["chargedCurrency"] == "USD"
    assert row["requestId"] and row["optionId"] == 1006
    payout_orders = gifq.control("GET", "/payout-orders")["payoutOrders"]
    assert [p["idempotencyKey"] for p in payout_orders] == ["po-key", None]
    assert payout_orders[0]["recipients"][0] == {
        "email": "r0@payout.example",
        "name": "Recipient 0",
        "amount": "10.00",
        "currency": "GBP",
    }
    assert payout_orders[0]["charged"] == "20.00" and payout_orders[0]["apiKey"] == gifq.api_key


def test_config_and_rate_limit_controls(gifq: SandboxHandle, gifq_api: GifqApi) -> None:
    config = gifq.control("GET", "/config")
    assert config["provider"] == "gifq" and config["apiRoot"] == "/api"
    assert config["maxRecipients"] == 1000 and config["maxPageLimit"] == 20
    assert config["fxFeePercent"] == "1.00" and config["fxRates"]["EUR/USD"] == "1.085"
    changed = gifq.control(
        "PATCH",
        "/config",
        json={"maxRecipients": 2, "fxRates": {"EUR/USD": "1.1"}, "fxFeePercent": "2"},
    )
    assert changed["maxRecipients"] == 2 and changed["fxRates"]["USD/EUR"] == "0.909091"
    assert gifq_api.post("/payout-orders", payout_body(3)).status == 422
    reply = gifq_api.order("x", brand="zalando", currency="EUR", face_value="100", country="DE",
                           payment_currency="USD")  # fmt: skip
    # 94.50 EUR x 1.1 = 103.95 USD; 2% = 2.079 -> 2.08
    assert reply.body["fx_fee"]["fee_amount"] == "2.08"
    assert gifq.control("PUT", "/rate-limit", json={"limit": 2, "windowSeconds": 60}) == {
        "limit": 2,
        "windowSeconds": 60,
    }
    assert [gifq_api.get("/balances").status for _ in range(3)] == [200, 200, 429]
    with pytest.raises(SandboxControlError):
        gifq.control("PATCH", "/config", json={"fxRates": {"GBP": "1"}})


def test_stats_and_reset(gifq: SandboxHandle, gifq_api: GifqApi) -> None:
    gifq_api.order("r")
    gifq_api.get("/orders")
    stats = gifq.control("GET", "/stats")
    assert stats["requests"] == {gifq.api_key: 2} and stats["orders"] == 1
    assert stats["statusCounts"] == {"200": 1, "201": 1} and stats["workerErrors"] == []
    first, second = stats["log"]
    assert set(first) == {
        "seq", "t", "apiKey", "method", "path", "query", "status", "retryAfter", "fault",
    }  # fmt: skip
    assert (first["method"], first["path"], first["status"]) == ("POST", "/api/orders", 201)
    assert isinstance(first["t"], Decimal) and second["t"] >= first["t"]
    assert gifq.control("GET", f"/stats?since={first['seq']}")["log"] == [second]
    assert "log" not in gifq.control("GET", "/stats?log=false")
    gifq.control("PATCH", "/campaigns/101", json={"status": "archived"})
    gifq.control("POST", "/reset")
    assert gifq.control("GET", "/orders")["total"] == 0
    assert gifq_api.balance("GBP") == Decimal("5000.00")
    assert gifq_api.get("/campaigns").body[0]["status"] == "active"
    assert gifq_api.order("r").status == 201  # the reference is free again


def test_product_control_changes_the_catalog(gifq: SandboxHandle, gifq_api: GifqApi) -> None:
    changed = gifq.control("PATCH", "/products/1006", json={"discount": "10", "stock_count": 1})
    assert changed["discount"] == 10 and changed["stock_count"] == 1
    assert gifq_api.order("a", face_value="20").body["price"] == "18.00"
    assert gifq_api.order("b").status == 422
    with pytest.raises(SandboxControlError) as missing:
        gifq.control("PATCH", "/products/1", json={"stock_count": 1})
    assert missing.value.status_code == 404
