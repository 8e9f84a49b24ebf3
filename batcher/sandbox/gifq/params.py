"""Reading a GIFQ API request: its sandbox, account, JSON body and pagy pagination."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from batcher.sandbox.asgi import (
    sleep_deferred_latency,
)
from batcher.sandbox.gifq.config import DEFAULT_PAGE_LIMIT
from batcher.sandbox.gifq.engine import GifqSandbox
from batcher.sandbox.gifq.errors import ApiError
from batcher.sandbox.gifq.state import Account
from batcher.sandbox.jsonio import json_response


def sandbox_of(request: Request) -> GifqSandbox:
    sandbox: GifqSandbox = request.app.state.sandbox
    return sandbox


def account_of(request: Request) -> Account:
    account: Account = request.scope["gifq.account"]
    return account


async def deferred_latency(request: Request) -> None:
    await sleep_deferred_latency(request.scope, "gifq.deferred_latency")


def _pagination_error(name: str, last: int, got: str) -> ApiError:
    return ApiError(400, f"Pagination error: expected :{name} in 1..{last}; got {got}")


def _page_size(request: Request) -> int:
    sandbox = sandbox_of(request)
    most = sandbox.config.max_page_limit
    raw = request.query_params.get("limit")
    if raw is None or raw == "":
        return min(DEFAULT_PAGE_LIMIT, most)
    try:
        limit = int(raw)
    except ValueError:
        raise _pagination_error("limit", most, raw) from None
    if limit > most and sandbox.clamp_page_limit:
        return most
    if not 1 <= limit <= most:
        raise _pagination_error("limit", most, raw)
    return limit


def paginated(request: Request, items: Sequence[Any], render: Callable[[Any], Any]) -> Response:
    """A bare JSON array of one page, described by the pagy headers, or 400."""
    limit = _page_size(request)
    last = max(1, math.ceil(len(items) / limit))
    raw = request.query_params.get("page")
    try:
        page = 1 if raw is None or raw == "" else int(raw)
    except ValueError:
        raise _pagination_error("page", last, raw or "") from None
    if not 1 <= page <= last:
        raise _pagination_error("page", last, str(raw))
    start = (page - 1) * limit
    headers = {
        "current-page": str(page),
        "page-items": str(limit),
        "total-count": str(len(items)),
        "total-pages": str(last),
        "link": _link_header(request, page, last, limit),
    }
    return json_response([render(item) for item in items[start : start + limit]], 200, headers)


def _link_header(request: Request, page: int, last: int, limit: int) -> str:
    params = dict(request.query_params)
    base = str(request.url.replace(query=""))
    wanted = {"first": 1, "prev": page - 1, "next": page + 1, "last": last}
    links = []
    for rel, number in wanted.items():
        if 1 <= number <= last:
            query = urlencode({**params, "page": number, "limit": limit})
            links.append(f'<{base}?{query}>; rel="{rel}"')
    return ", ".join(links)
