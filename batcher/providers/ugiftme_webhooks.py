"""UGiftMe webhooks: subscription calls under `/webhooks`, and reading a delivery.

A delivery body is the event payload plus an `event` key. The terminal events
`order.succeeded` and `order.failed` carry the order request's `status`,
`result` and `error` exactly as `GET /orders/order-requests/{id}` does, so the
runner settles them with the poll parser (`UGiftMeProvider.order_request_result`).

The signing secret appears once, in the answer to `POST /webhooks`; it is held
as a `SecretStr` and never logged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Unpack
from urllib.parse import quote

from batcher.config import ProviderSettings
from batcher.core.errors import ProviderUnavailable, UsageError
from batcher.core.secrets import SecretStr
from batcher.core.webhook_events import UGIFTME_EVENTS
from batcher.providers.webhooks import (
    EventEvidence,
    Subscription,
    SubscriptionChanges,
    TestDelivery,
    redact,
)
from batcher.providers.wire import as_text
from batcher.transport.http import ApiClient, ApiResponse, canonical_json, parse_json
from batcher.transport.throttle import limiter_for

#: what batcher needs to settle orders without polling
DEFAULT_EVENTS = ("order.succeeded", "order.failed")
TERMINAL_EVENTS = frozenset(DEFAULT_EVENTS)


class UGiftMeWebhooks:
    valid_events: tuple[str, ...] = UGIFTME_EVENTS
    default_events: tuple[str, ...] = DEFAULT_EVENTS

    def __init__(self, settings: ProviderSettings) -> None:
        limiter = limiter_for(
            settings.api_key, rate_per_second=settings.profile.default_rate_per_second
        )
        self._api = ApiClient(
            settings.base_url,
            auth_headers={"X-API-Key": settings.api_key.get_secret_value()},
            limiter=limiter,
            auth_hint=f"check {settings.profile.api_key_env}",
        )

    def close(self) -> None:
        self._api.close()

    def subscribe(
        self, url: str, events: Sequence[str], description: str | None = None
    ) -> Subscription:
        body: dict[str, Any] = {"url": url, "events": list(events)}
        if description:
            body["description"] = description
        data = self._object(self._write("POST", "/webhooks", body), "POST /webhooks")
        secret = data.get("secret")
        if not isinstance(secret, str) or not secret:
            raise ProviderUnavailable("UGiftMe created the webhook but sent no signing secret")
        return _subscription(data, SecretStr(secret))

    def subscriptions(self) -> list[Subscription]:
        response = self._api.get("/webhooks")
        data = self._object(response, "GET /webhooks")
        hooks = data.get("webhooks")
        if not isinstance(hooks, list):
            raise ProviderUnavailable("GET /webhooks: no webhooks list in the answer")
        return [_subscription(h, None) for h in hooks if isinstance(h, Mapping)]

    def update(self, webhook_id: str, **changes: Unpack[SubscriptionChanges]) -> Subscription:
        url, events = changes.get("url"), changes.get("events")
        description, active = changes.get("description"), changes.get("active")
        body: dict[str, Any] = {}
        if url is not None:
            body["url"] = url
        if events is not None:
            body["events"] = list(events)
        if description is not None:
            body["description"] = description
        if active is not None:
            body["isActive"] = active
        if not body:
            raise UsageError(
                "nothing to change",
                hint="give --url, --event, --description or --active/--inactive",
            )
        path = f"/webhooks/{quote(webhook_id, safe='')}"
        return _subscription(self._object(self._write("PATCH", path, body), f"PATCH {path}"), None)

    def delete(self, webhook_id: str) -> None:
        path = f"/webhooks/{quote(webhook_id, safe='')}"
        self._object(self._api.write("DELETE", path), f"DELETE {path}")

    def test(self, webhook_id: str) -> TestDelivery:
        data = self._object(
            self._write("POST", "/webhooks/test", {"webhookId": webhook_id}), "POST /webhooks/test"
        )
        status = data.get("statusCode")
        return TestDelivery(
            ok=data.get("ok") is True,
            status_code=status if isinstance(status, int) else None,
            error=self._api.scrub(as_text(data.get("errorMessage"))) or None,
        )

    def _write(self, method: str, path: str, body: Mapping[str, Any]) -> ApiResponse:
        return self._api.write(
            method, path, content=canonical_json(body), headers={"Content-Type": "application/json"}
        )

    def _object(self, response: ApiResponse, what: str) -> Mapping[str, Any]:
        data = response.data
        if not response.is_success:
            detail = ""
            if isinstance(data, Mapping):
                detail = self._api.scrub(
                    " ".join(as_text(data.get(k)) for k in ("error", "message") if data.get(k))
                )
                valid = data.get("validEvents")
                if isinstance(valid, list):
                    detail += f" (valid events: {', '.join(map(str, valid))})"
            raise ProviderUnavailable(f"{what}: HTTP {response.status_code} {detail}".strip())
        if not isinstance(data, Mapping):
            raise ProviderUnavailable(f"{what}: the answer is not a JSON object")
        return data


def _subscription(data: Mapping[str, Any], secret: SecretStr | None) -> Subscription:
    webhook_id = as_text(data.get("id") or data.get("_id"))
    if not webhook_id:
        raise ProviderUnavailable("a webhook in UGiftMe's answer has no id")
    events = data.get("events")
    active = data.get("isActive")
    return Subscription(
        id=webhook_id,
        url=as_text(data.get("url")),
        events=tuple(str(e) for e in events) if isinstance(events, list) else (),
        description=as_text(data.get("description")) or None,
        active=active if isinstance(active, bool) else True,
        secret=secret,
    )


def read_event(body: bytes) -> EventEvidence:
    """A verified delivery body as evidence. ValueError when it is not an event."""
    data = parse_json(body)
    if not isinstance(data, Mapping):
        raise ValueError("the body is not a JSON object")
    event = data.get("event")
    if not isinstance(event, str) or not event:
        raise ValueError("the body names no event")
    request_id = data.get("orderRequestId")
    if request_id is not None and not isinstance(request_id, str):
        raise ValueError("orderRequestId is not a string")
    if event.startswith("order.") and not request_id:
        raise ValueError(f"{event} without an orderRequestId")
    status = data.get("status")
    return EventEvidence(
        event=event,
        request_id=request_id or None,
        status=status if isinstance(status, str) else None,
        order_ids=_order_ids(data.get("result")),
        payload=canonical_json(redact(data)).decode("utf-8"),
        terminal=event in TERMINAL_EVENTS,
    )


def _order_ids(result: Any) -> tuple[str, ...]:
    if not isinstance(result, Mapping):
        return ()
    orders = result.get("orders")
    records = orders if isinstance(orders, list) else [result]
    return tuple(
        str(o["_id"]) for o in records if isinstance(o, Mapping) and isinstance(o.get("_id"), str)
    )
