"""A GET is sent past httpx.Client.send's auth, redirect and cookie steps (`_send_get`),
yet behaves as Client.send did: same transport, cookies kept, no redirect followed,
the body read and the connection released, transport errors mapped the same."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import pytest

from batcher.core.errors import ProviderUnavailable
from batcher.transport.http import ApiClient
from batcher.transport.throttle import RateLimiter


def client(answer: Any) -> ApiClient:
    return ApiClient(
        "https://api.example.test/v1",
        auth_headers={"X-API-Key": "key"},
        limiter=RateLimiter(1e6),
        transport=httpx.MockTransport(answer),
        retry_sleep=lambda _: None,
    )


def test_a_get_does_not_go_through_client_send(monkeypatch: pytest.MonkeyPatch) -> None:
    """Client.send costs about 150 µs of CPU a request; a report lists 2,000 pages."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a GET went through httpx.Client.send")

    api = client(lambda request: httpx.Response(200, json={"ok": True}))
    monkeypatch.setattr(httpx.Client, "send", refuse)
    assert api.get("/auth").data == {"ok": True}


def test_cookies_an_answer_sets_are_sent_back_as_client_send_did() -> None:
    seen: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("cookie"))
        return httpx.Response(200, json={}, headers={"set-cookie": "lb=node7; Path=/"})

    api = client(answer)
    api.get("/a")
    api.get("/b")
    api.post("/c", content=b"{}")
    assert seen == [None, "lb=node7", "lb=node7"]


def test_a_redirect_is_not_followed() -> None:
    calls: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(302, headers={"location": "https://elsewhere.test/steal"})

    response = client(answer).get("/orders")
    assert response.status_code == 302 and response.data is None
    assert calls == ["/v1/orders"]


def test_the_body_is_read_and_the_stream_closed() -> None:
    closed: list[bool] = []

    class Body(httpx.SyncByteStream):
        def __iter__(self) -> Any:
            yield b'{"a": '
            yield b"1.5}"

        def close(self) -> None:
            closed.append(True)

    api = client(lambda request: httpx.Response(200, stream=Body()))
    response = api.get("/x")
    assert response.data == {"a": Decimal("1.5")} and closed == [True]


def test_a_transport_error_is_retried_then_mapped_as_before() -> None:
    attempts: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        attempts.append(1)
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    with pytest.raises(ProviderUnavailable, match=r"cannot reach api\.example\.test"):
        client(answer).get("/auth")
    assert len(attempts) == 3


def test_a_closed_client_refuses_a_get() -> None:
    api = client(lambda request: httpx.Response(200, json={}))
    api.close()
    with pytest.raises(RuntimeError, match="client has been closed"):
        api.get("/auth")


def test_an_httpx_without_its_private_transport_choice_falls_back_to_client_send(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`_transport_for_url` is httpx's private method: a release without it must still
    list, through the public Client.send."""
    sent: list[str] = []
    real_send = httpx.Client.send

    def counting_send(self: httpx.Client, request: httpx.Request, **kwargs: Any) -> Any:
        sent.append(str(request.url))
        return real_send(self, request, **kwargs)

    api = client(lambda request: httpx.Response(200, json={"ok": True}))
    monkeypatch.setattr("batcher.transport.http._TRANSPORT_FOR_URL", "_gone_in_this_release")
    monkeypatch.setattr(httpx.Client, "send", counting_send)
    assert api.get("/auth").data == {"ok": True}
    assert sent == ["https://api.example.test/v1/auth"]
