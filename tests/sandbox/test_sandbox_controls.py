"""The /__sandbox controls: wallets, accounts, listings, config and reset."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest
from ugiftme_kit import Api, item

from batcher.sandbox.server import SandboxControlError, SandboxHandle


def test_wallet_controls(ugiftme_sandbox: SandboxHandle, api: Api) -> None:
    funded = ugiftme_sandbox.control("POST", "/wallets/jpy/fund", json={"amount": 5000})
    assert funded["currency"] == "JPY" and funded["balance"] == 5000
    assert api.wallet("JPY")["balance"] == 5000
    set_to = ugiftme_sandbox.control("PUT", "/wallets/GBP", json={"balance": "12.34"})
    assert set_to["balance"] == Decimal("12.34") == api.wallet("GBP")["balance"]
    drained = ugiftme_sandbox.control("POST", "/wallets/EUR/drain")
    assert drained["balance"] == drained["availableBalance"] == 0
    # Only funding writes a transaction; set and drain are out-of-band adjustments.
    kinds = [t["transactionType"] for t in api.get("/wallet/transactions").body["transactions"]]
    assert kinds == ["funding"]
    listed = ugiftme_sandbox.control("GET", "/wallets")["wallets"]
    assert [w["currency"] for w in listed] == ["EUR", "GBP", "JPY", "USD"]
    for bad in ({"amount": "-1"}, {"amount": "1.234"}, {"amount": "lots"}, {}):
        with pytest.raises(SandboxControlError) as refused:
            ugiftme_sandbox.control("POST", "/wallets/GBP/fund", json=bad)
        assert refused.value.status_code == 400


def test_holds_are_visible_to_controls(
    make_ugiftme_sandbox: Callable[..., SandboxHandle], api_for: Callable[..., Api]
) -> None:
    sandbox = make_ugiftme_sandbox(async_delay_seconds=0.3)
    api = api_for(sandbox)
    request_id = api.post("/orders", item()).body["orderRequestId"]
    gbp = next(w for w in sandbox.control("GET", "/wallets")["wallets"] if w["currency"] == "GBP")
    assert gbp["holds"] == {request_id: Decimal("9.75")} and gbp["held"] == Decimal("9.75")
    requests = sandbox.control("GET", "/order-requests")["orderRequests"]
    assert requests[0]["hold"] == Decimal("9.75") and requests[0]["apiKey"] == api.api_key


def test_accounts_are_addressed_by_header_when_several_keys_exist(
    make_ugiftme_sandbox: Callable[..., SandboxHandle],
) -> None:
    sandbox = make_ugiftme_sandbox(api_keys=("a", "b"))
    assert sandbox.api_key == "a" and sandbox.api_keys == ("a", "b")
    with pytest.raises(SandboxControlError) as ambiguous:
        sandbox.control("POST", "/wallets/GBP/fund", json={"amount": 1})
    assert ambiguous.value.status_code == 400
    with pytest.raises(SandboxControlError) as unknown:
        sandbox.control("GET", "/wallets", api_key="zzz")
    assert unknown.value.status_code == 404
    assert sandbox.control("GET", "/wallets", api_key="b")["apiKey"] == "b"


def test_config_and_rate_limit_controls(ugiftme_sandbox: SandboxHandle, api: Api) -> None:
    config = ugiftme_sandbox.control("GET", "/config")
    assert config["asyncMode"] is True and config["bulkLimit"] == 100
    assert config["rateLimit"] == {"limit": 120, "windowSeconds": 60}
    assert ugiftme_sandbox.control(
        "PUT", "/rate-limit", json={"limit": 2, "windowSeconds": 30}
    ) == {
        "limit": 2,
        "windowSeconds": 30,
    }
    assert [api.get("/auth").status for _ in range(3)] == [200, 200, 429]
    updated = ugiftme_sandbox.control("PATCH", "/config", json={"bulkLimit": 3})
    assert updated["bulkLimit"] == 3
    with pytest.raises(SandboxControlError):
        ugiftme_sandbox.control("PUT", "/mode", json={"mode": "sometimes"})


def test_reset_returns_to_the_startup_state(
    make_ugiftme_sandbox: Callable[..., SandboxHandle], api_for: Callable[..., Api]
) -> None:
    sandbox = make_ugiftme_sandbox(async_mode=False, funding={"GBP": "50"})
    api = api_for(sandbox)
    api.post("/orders", item(), key="before-reset")
    sandbox.control("PATCH", "/faults", json={"500": 1})
    sandbox.control("PUT", "/mode", json={"mode": "async"})
    assert sandbox.control("POST", "/reset") == {"ok": True, "apiKeys": [sandbox.api_key]}
    assert sandbox.control("GET", "/orders")["total"] == 0
    assert sandbox.control("GET", "/stats")["requests"] == {}
    assert api.wallet("GBP")["balance"] == Decimal("50.00")
    again = api.post("/orders", item(), key="before-reset")  # keys were forgotten too
    assert again.status == 201


def test_app_state_allows_white_box_checks(ugiftme_sandbox: SandboxHandle, api: Api) -> None:
    api.post("/orders", item())
    state = ugiftme_sandbox.app_state
    account = state.accounts[ugiftme_sandbox.api_key]
    assert len(account.requests) == 1
    assert ugiftme_sandbox.host_url + "/api/v1/business" == ugiftme_sandbox.base_url
