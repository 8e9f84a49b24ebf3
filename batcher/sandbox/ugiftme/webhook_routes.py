"""The UGiftMe webhook subscription endpoints."""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from batcher.core.webhook_events import UGIFTME_EVENTS
from batcher.sandbox.asgi import RouteTable
from batcher.sandbox.common import iso_now, object_id
from batcher.sandbox.handlers import found, read_json
from batcher.sandbox.jsonio import encode_json, json_response
from batcher.sandbox.ugiftme.errors import ApiError
from batcher.sandbox.ugiftme.params import account_of, sandbox_of
from batcher.sandbox.ugiftme.state import Webhook
from batcher.sandbox.ugiftme.webhooks import sample_payload, sign

WEBHOOK_API = RouteTable()


def _checked_url(raw: Any) -> str:
    if not isinstance(raw, str) or not re.match(r"^https?://[^\s/]+", raw):
        raise ApiError(400, "Validation failed", message="url must be an http(s) URL")
    return raw


def _checked_events(raw: Any) -> list[str]:
    if not isinstance(raw, list) or not raw or not all(isinstance(e, str) for e in raw):
        raise ApiError(
            400,
            "Validation failed",
            message="events must be a non-empty array",
            validEvents=list(UGIFTME_EVENTS),
        )
    unknown = [e for e in raw if e not in UGIFTME_EVENTS]
    if unknown:
        raise ApiError(
            400,
            "Invalid events",
            message=f"Unknown events: {', '.join(unknown)}",
            validEvents=list(UGIFTME_EVENTS),
        )
    return list(dict.fromkeys(raw))


def _checked_description(raw: Any) -> str | None:
    if raw is not None and not isinstance(raw, str):
        raise ApiError(400, "Validation failed", message="description must be a string")
    return raw


@WEBHOOK_API.route("/webhooks", "POST")
async def create_webhook(request: Request) -> Response:
    body = await read_json(request)
    if not isinstance(body, Mapping):
        raise ApiError(400, "Validation failed", message="body must be a JSON object")
    now = iso_now()
    hook = Webhook(
        id=object_id(),
        url=_checked_url(body.get("url")),
        events=_checked_events(body.get("events")),
        description=_checked_description(body.get("description")),
        secret=f"whsec_{secrets.token_hex(24)}",
        created_at=now,
        updated_at=now,
    )
    account_of(request).webhooks[hook.id] = hook
    return json_response({**hook.as_json(), "secret": hook.secret}, status_code=201)


@WEBHOOK_API.route("/webhooks", "GET")
async def list_webhooks(request: Request) -> Response:
    return json_response({"webhooks": [h.as_json() for h in account_of(request).webhooks.values()]})


@WEBHOOK_API.route("/webhooks/test", "POST")
async def test_webhook(request: Request) -> Response:
    body = await read_json(request)
    webhook_id = body.get("webhookId") if isinstance(body, Mapping) else None
    if not isinstance(webhook_id, str):
        raise ApiError(400, "Validation failed", message="webhookId is required")
    hook = _webhook(request, webhook_id)
    payload = sample_payload()
    status, error = await sandbox_of(request).webhooks.post(
        hook.url, hook.secret, str(payload["event"]), encode_json(payload)
    )
    result: dict[str, Any] = {"ok": status is not None and 200 <= status < 300, "payload": payload}
    if status is not None:
        result["statusCode"] = status
    if error is not None:
        result["errorMessage"] = error
    elif status is not None and not result["ok"]:
        result["errorMessage"] = f"endpoint answered {status}"
    return json_response(result)


@WEBHOOK_API.route("/webhooks/test-sample", "GET")
async def webhook_test_sample(request: Request) -> Response:
    payload = sample_payload()
    secret = "whsec_sample"
    return json_response(
        {
            "event": payload["event"],
            "payload": payload,
            "headers": {
                "X-Webhook-Event": payload["event"],
                "X-Webhook-Signature": sign(secret, encode_json(payload)),
            },
            "signedWith": secret,
            "validEvents": list(UGIFTME_EVENTS),
        }
    )


def _webhook(request: Request, webhook_id: Any) -> Webhook:
    hook = account_of(request).webhooks.get(webhook_id) if isinstance(webhook_id, str) else None
    return found(hook, ApiError(404, "Webhook not found"))


@WEBHOOK_API.route("/webhooks/{webhook_id}", "PATCH")
async def update_webhook(request: Request) -> Response:
    hook = _webhook(request, request.path_params["webhook_id"])
    body = await read_json(request)
    fields = ("url", "events", "description", "isActive")
    if not isinstance(body, Mapping) or not any(name in body for name in fields):
        raise ApiError(
            400, "Validation failed", message=f"provide at least one of {', '.join(fields)}"
        )
    if "isActive" in body and not isinstance(body["isActive"], bool):
        raise ApiError(400, "Validation failed", message="isActive must be a boolean")
    changes: dict[str, Any] = {}
    if "url" in body:
        changes["url"] = _checked_url(body["url"])
    if "events" in body:
        changes["events"] = _checked_events(body["events"])
    if "description" in body:
        changes["description"] = _checked_description(body["description"])
    if "isActive" in body:
        changes["is_active"] = body["isActive"]
    for name, value in changes.items():  # validated above, applied together
        setattr(hook, name, value)
    hook.updated_at = iso_now()
    return json_response(hook.as_json())


@WEBHOOK_API.route("/webhooks/{webhook_id}", "DELETE")
async def delete_webhook(request: Request) -> Response:
    hook = _webhook(request, request.path_params["webhook_id"])
    del account_of(request).webhooks[hook.id]
    return json_response({"success": True, "id": hook.id})
