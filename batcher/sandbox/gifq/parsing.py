"""Reading GIFQ order and payout-order bodies, with the contract's 422s."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from batcher.core.money import fits_currency
from batcher.sandbox.common import money_input
from batcher.sandbox.gifq.config import EMAIL_PATTERN, MAX_REFERENCE
from batcher.sandbox.gifq.errors import ApiError
from batcher.sandbox.gifq.state import OrderParams


def _required_str(body: Mapping[str, Any], name: str, max_len: int = 255) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ApiError(422, f"{name} is required and must be a non-empty string")
    if len(value) > max_len:
        raise ApiError(422, f"{name} must be at most {max_len} characters")
    return value.strip()


def _code(body: Mapping[str, Any], name: str, length: int, *, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not re.fullmatch(rf"[A-Za-z]{{{length}}}", value.strip()):
        kind = "an ISO 4217 currency code" if length == 3 else "an ISO 3166 country code"
        raise ApiError(422, f"{name} must be {kind}")
    return value.strip().upper()


def _amount(raw: Any, name: str, currency: str) -> Decimal:
    """A positive amount given as a JSON number or a decimal string."""
    if isinstance(raw, bool) or not isinstance(raw, int | Decimal | str):
        raise ApiError(422, f"{name} must be a number or a decimal string")
    try:
        value = money_input(raw)
    except ValueError:
        raise ApiError(422, f"{name} must be a number or a decimal string") from None
    if value <= 0:
        raise ApiError(422, f"{name} must be positive")
    if not fits_currency(value, currency):
        raise ApiError(422, f"{name} {raw} has too many decimals for {currency}")
    return value


def parse_order(payload: Any) -> tuple[str, OrderParams]:
    """(reference, params) from a POST /orders body, or 422."""
    if not isinstance(payload, Mapping):
        raise ApiError(422, "The request body must be a JSON object")
    reference = _required_str(payload, "reference", MAX_REFERENCE)
    brand = _required_str(payload, "brand")
    currency = _code(payload, "currency", 3)
    country = _code(payload, "country", 2)
    paying = _code(payload, "payment_currency", 3, required=False)
    assert currency is not None and country is not None
    face_value = _amount(payload.get("face_value"), "face_value", currency)
    return reference, OrderParams(brand, currency, face_value, country, paying or currency)


@dataclass(frozen=True)
class PayoutRequest:
    campaign_id: int
    wallet_currency: str
    recipients: list[tuple[str, str | None, Decimal, str]]  # email, name, amount, currency
    expires_in_days: int
    callback_url: str | None


def _campaign_id(raw: Any) -> int:
    if isinstance(raw, bool):
        raise ApiError(422, "campaign_id is required")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and raw.strip().isdigit():
        return int(raw.strip())
    raise ApiError(422, "campaign_id is required and must be a campaign id")


def parse_payout_order(payload: Any, max_recipients: int) -> PayoutRequest:
    if not isinstance(payload, Mapping):
        raise ApiError(422, "The request body must be a JSON object")
    campaign_id = _campaign_id(payload.get("campaign_id"))
    wallet = _code(payload, "wallet_currency", 3)
    assert wallet is not None
    days = payload.get("expires_in_days")
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 3650:
        raise ApiError(422, "expires_in_days must be a whole number of days from 1 to 3650")
    callback = payload.get("callback_url")
    if callback is not None and (
        not isinstance(callback, str) or not re.match(r"^https?://[^\s/]+", callback)
    ):
        raise ApiError(422, "callback_url must be an http(s) URL")
    raw_recipients = payload.get("recipients")
    if not isinstance(raw_recipients, list) or not raw_recipients:
        raise ApiError(422, "recipients must be a non-empty array")
    if len(raw_recipients) > max_recipients:
        raise ApiError(
            422,
            f"A payout order may hold at most {max_recipients} recipients; "
            f"got {len(raw_recipients)}",
        )
    recipients = [_recipient(raw, index) for index, raw in enumerate(raw_recipients)]
    return PayoutRequest(campaign_id, wallet, recipients, days, callback)


def _recipient(raw: Any, index: int) -> tuple[str, str | None, Decimal, str]:
    where = f"recipients[{index}]"
    if not isinstance(raw, Mapping):
        raise ApiError(422, f"{where} must be a JSON object")
    email = raw.get("email")
    if not isinstance(email, str) or not EMAIL_PATTERN.match(email.strip()):
        raise ApiError(422, f"{where}.email must be a valid email address")
    name = raw.get("name")
    if name is not None and not isinstance(name, str):
        raise ApiError(422, f"{where}.name must be a string")
    currency = raw.get("currency")
    if not isinstance(currency, str) or not re.fullmatch(r"[A-Za-z]{3}", currency.strip()):
        raise ApiError(422, f"{where}.currency must be an ISO 4217 currency code")
    currency = currency.strip().upper()
    amount = _amount(raw.get("amount"), f"{where}.amount", currency)
    return email.strip(), name, amount, currency
