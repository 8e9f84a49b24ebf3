"""The UGiftMe `/__sandbox/webhooks/...` controls: the delivery log, how hostile
deliveries are (duplicates, jitter, retry time scale, receiver outage) and forged
deliveries sent on demand."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from batcher.sandbox.controls import control_number, control_object, control_token
from batcher.sandbox.jsonio import json_response
from batcher.sandbox.ugiftme.errors import ApiError, invalid
from batcher.sandbox.ugiftme.params import sandbox_of
from batcher.sandbox.ugiftme.webhooks import FORGERIES, Forgery, Hostility


async def control_deliveries(request: Request) -> Response:
    deliveries = sandbox_of(request).webhooks.deliveries_json(control_token(request))
    return json_response({"total": len(deliveries), "deliveries": deliveries})


async def control_get_hostility(request: Request) -> Response:
    return json_response(sandbox_of(request).webhooks.hostility_json())


async def control_patch_hostility(request: Request) -> Response:
    """Checks every given setting before applying any, so a 400 changes nothing."""
    webhooks, body = sandbox_of(request).webhooks, await control_object(request)
    current = webhooks.hostility
    seed = body.get("seed", current.seed)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise invalid("seed must be an integer or null")

    def given(name: str, high: float | None = None) -> float | None:
        return control_number(request, body, name, high=high) if name in body else None

    duplicate_rate, jitter = given("duplicateRate", high=1.0), given("jitterSeconds")
    time_scale, outage = given("timeScale"), given("outageSeconds")
    if {"duplicateRate", "jitterSeconds", "seed"} & body.keys():
        webhooks.configure(
            Hostility(
                current.duplicate_rate if duplicate_rate is None else duplicate_rate,
                current.jitter_seconds if jitter is None else jitter,
                seed,
                current.outage_until,
            )
        )
    if time_scale is not None:
        webhooks.time_scale = time_scale
    if outage is not None:
        webhooks.start_outage(outage)
    return json_response(webhooks.hostility_json())


def _forgery(body: Mapping[str, Any]) -> tuple[Forgery, str, str | None]:
    kind = next((k for k in FORGERIES if k == body.get("kind")), None)
    if kind is None:
        raise invalid(f"kind must be one of {', '.join(FORGERIES)}")
    url = body.get("url")
    if not isinstance(url, str) or not re.match(r"^https?://[^\s/]+", url):
        raise invalid("url must be an http(s) URL")
    delivery_id = body.get("deliveryId")
    if delivery_id is not None and not isinstance(delivery_id, str):
        raise invalid("deliveryId must be a string")
    return kind, url, delivery_id


async def control_forge(request: Request) -> Response:
    webhooks, body = sandbox_of(request).webhooks, await control_object(request)
    kind, url, delivery_id = _forgery(body)
    source = webhooks.find(delivery_id, control_token(request))
    if delivery_id is not None and source is None:
        raise ApiError(404, "Delivery not found")
    if kind == "replay" and source is None:
        raise ApiError(409, "No delivery to replay", message="no webhook was delivered yet")
    return json_response(await webhooks.forge(kind, url, source))


def webhook_control_routes() -> list[BaseRoute]:
    return [
        Route("/webhooks/deliveries", control_deliveries, methods=["GET"]),
        Route("/webhooks/hostility", control_get_hostility, methods=["GET"]),
        Route("/webhooks/hostility", control_patch_hostility, methods=["PATCH"]),
        Route("/webhooks/forge", control_forge, methods=["POST"]),
    ]
