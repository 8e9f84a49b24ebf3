"""The echoCredentials fault: a careless provider's error texts and rejection reasons
repeat the caller's API key or token, so batcher's tests can prove it scrubs them."""

from __future__ import annotations

from collections.abc import Callable

from gifq_kit import ROOMY_RATE_LIMIT, GifqApi, payout_body
from ugiftme_kit import Api, item

from batcher.sandbox.server import SandboxHandle

UNKNOWN_ORDER = "/orders/ffffffffffffffffffffffff"


def test_ugiftme_errors_and_rejections_echo_the_key_only_when_asked(
    make_ugiftme_sandbox: Callable[..., SandboxHandle], api_for: Callable[..., Api]
) -> None:
    sandbox = make_ugiftme_sandbox(async_mode=False)
    api = api_for(sandbox)
    key = api.api_key
    bulk = {"orders": [item(), item("NOPE_UK")]}
    quiet = [
        api.post("/orders/bulk", bulk),
        api.post("/orders", item("NOPE_UK")),
        api.get(UNKNOWN_ORDER),
    ]
    assert [r.status for r in quiet] == [201, 400, 404]
    assert not any(key.encode() in r.raw for r in quiet)

    faults = sandbox.control("PATCH", "/faults", json={"echoCredentials": True})
    assert faults["echoCredentials"] is True
    loud = api.post("/orders/bulk", bulk)
    assert loud.status == 201 and key in loud.body["rejectedOrders"][0]["reason"]
    single = api.post("/orders", item("NOPE_UK"))
    assert single.status == 400 and key in single.body["message"]
    missing = api.get(UNKNOWN_ORDER)
    assert missing.status == 404 and key in missing.body["error"]
    assert sandbox.control("GET", "/faults")["counts"]["echo_credentials"] == 3

    sandbox.control("POST", "/reset")  # back to the startup setting: off
    assert key.encode() not in api.get(UNKNOWN_ORDER).raw


def test_ugiftme_async_failure_echoes_the_key(
    make_ugiftme_sandbox: Callable[..., SandboxHandle], api_for: Callable[..., Api]
) -> None:
    api = api_for(make_ugiftme_sandbox(echo_credentials=True, fault_async_fail=1.0))
    request_id = api.post("/orders", item()).body["orderRequestId"]
    failed = api.wait_for_request(request_id, {"failed"})
    assert failed["error"].startswith("Upstream supplier error") and api.api_key in failed["error"]


def test_gifq_errors_and_failure_reasons_echo_the_token(
    make_gifq_sandbox: Callable[..., SandboxHandle], gifq_api_for: Callable[..., GifqApi]
) -> None:
    sandbox = make_gifq_sandbox(
        rate_limit=ROOMY_RATE_LIMIT, echo_credentials=True, fault_async_fail=1.0
    )
    api = gifq_api_for(sandbox)
    token = api.api_key
    refused = api.order("echo-1", brand="no-such-brand")
    assert refused.status == 422 and token in refused.body["message"]
    payout = api.post("/payout-orders", payout_body(campaign_id=999), key="echo-payout")
    assert payout.status == 422 and token in payout.body["message"]
    failed = api.wait_order(api.order("echo-2").body["id"])
    assert failed["status"] == "failed" and token in failed["failure_reason"]

    sandbox.control("PATCH", "/faults", json={"echoCredentials": False})
    assert token.encode() not in api.order("echo-3", brand="no-such-brand").raw
