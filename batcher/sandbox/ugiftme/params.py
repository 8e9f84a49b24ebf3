"""Reading a UGiftMe API request: its sandbox, account, JSON body and query parameters."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request

from batcher.sandbox.common import parse_bool
from batcher.sandbox.ugiftme.config import DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT
from batcher.sandbox.ugiftme.engine import UGiftMeSandbox
from batcher.sandbox.ugiftme.errors import ApiError
from batcher.sandbox.ugiftme.state import Account


def sandbox_of(request: Request) -> UGiftMeSandbox:
    sandbox: UGiftMeSandbox = request.app.state.sandbox
    return sandbox


def account_of(request: Request) -> Account:
    account: Account = request.scope["ugiftme.account"]
    return account


def int_param(request: Request, name: str, default: int, low: int, high: int | None = None) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ApiError(400, "Invalid query", message=f"{name} must be an integer {bound}")
    return value


def page_params(request: Request) -> tuple[int, int]:
    page = int_param(request, "page", 1, 1)
    limit = int_param(request, "limit", DEFAULT_PAGE_LIMIT, 1, MAX_PAGE_LIMIT)
    return page, limit


def paginate(items: Sequence[Any], page: int, limit: int) -> tuple[Sequence[Any], int]:
    total_pages = math.ceil(len(items) / limit)
    start = (page - 1) * limit
    return items[start : start + limit], total_pages


def bool_param(request: Request, name: str) -> bool | None:
    try:
        return parse_bool(request.query_params.get(name))
    except ValueError:
        raise ApiError(400, "Invalid query", message=f"{name} must be true or false") from None


def date_param(request: Request, name: str, *, end_of_day: bool) -> datetime | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, "Invalid query", message=f"{name} must be an ISO-8601 date") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if end_of_day and len(raw) == 10:  # a bare date includes the whole day
        moment += timedelta(days=1) - timedelta(milliseconds=1)
    return moment
