"""GIFQ wire format: request bodies, paging, and parsers of what GIFQ answers (pure)."""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from batcher.core.models import Balance, FxQuote, Product, WalletTransaction
from batcher.core.money import fits_currency, quantum, round_money, to_decimal
from batcher.providers.base import (
    IncompleteResult,
    ItemResult,
    OrderItem,
    ProviderOrder,
    Redemption,
)
from batcher.providers.wire import Record, as_text, parse_time, records_in
from batcher.transport.http import (
    Params,
    provider_error_text,
)

log = logging.getLogger(__name__)

#: GIFQ serves at most 20 records per page; a larger `limit` is never sent.
PAGE_LIMIT = 20
_MAX_REFERENCE = 255

FINAL_ORDER_STATUSES = {"completed", "failed"}
_DELIVERED_PAYOUT_STATUSES = {"sent", "redeemed", "expired"}
_REDEMPTION_FIELDS = ("code", "pin", "link", "link_challenge_code", "serial", "security_code")


def order_body(key: str, item: OrderItem) -> dict[str, Any]:
    """`POST /api/orders`. face_value is a decimal string with the currency's decimals."""
    check_reference(key)
    if not item.product_code.strip():
        raise ValueError(f"row {item.row_key} has no brand")
    if not item.country.strip():
        raise ValueError(f"row {item.row_key} has no country")
    body: dict[str, Any] = {
        "brand": item.product_code.strip(),
        "currency": item.currency.upper(),
        "face_value": amount_text(item.amount, item.currency),
        "country": item.country.strip().upper(),
        "reference": key,
    }
    paying = item.payment_currency.strip().upper()
    if paying and paying != body["currency"]:
        body["payment_currency"] = paying
    return body


def payout_order_body(
    campaign_id: str, items: Sequence[OrderItem], expires_in_days: int, limit: int = 1000
) -> dict[str, Any]:
    """`POST /api/payout-orders`: one wallet currency, recipients in chunk order."""
    if not items:
        raise ValueError("a payout order needs at least one recipient")
    if len(items) > limit:
        raise ValueError(f"a payout order holds at most {limit} recipients, not {len(items)}")
    wallet = items[0].currency.upper()
    recipients = []
    for item in items:
        if item.currency.upper() != wallet:
            raise ValueError(
                f"a payout order is paid from one wallet, not {wallet} and {item.currency}"
            )
        paying = item.payment_currency.strip().upper()
        if paying and paying != wallet:
            raise ValueError(
                f"row {item.row_key}: payouts are paid from the {wallet} wallet; "
                f"payment_currency {paying} is not supported"
            )
        recipient: dict[str, Any] = {
            "email": item.recipient_email.strip(),
            "amount": amount_text(item.amount, item.currency),
            "currency": item.currency.upper(),
        }
        if item.recipient_name.strip():
            recipient["name"] = " ".join(item.recipient_name.split())
        recipients.append(recipient)
    return {
        "campaign_id": campaign_id,
        "wallet_currency": wallet,
        "recipients": recipients,
        "expires_in_days": expires_in_days,
    }


def amount_text(amount: Decimal, currency: str) -> str:
    """The amount with exactly the currency's decimals, as text: 50 -> '50.00'."""
    if not amount.is_finite() or amount <= 0:
        raise ValueError(f"{amount} is not a positive amount")
    if not fits_currency(amount, currency):
        raise ValueError(f"{amount} has more decimals than {currency} allows")
    return format(amount.quantize(quantum(currency)), "f")


def check_reference(key: str) -> None:
    if not key or len(key) > _MAX_REFERENCE or not key.isascii() or not key.isprintable():
        raise ValueError("a reference must be 1-255 printable ASCII characters")


def page_params(page: int, limit: int, extra: Params | None = None) -> dict[str, str | int]:
    """Query parameters of one list page. `limit` above GIFQ's 20 is refused, never sent."""
    if not 1 <= limit <= PAGE_LIMIT:
        raise ValueError(f"GIFQ pages hold 1-{PAGE_LIMIT} records, not {limit}")
    if page < 1:
        raise ValueError("pages count from 1")
    return {**(extra or {}), "page": page, "limit": limit}


def is_last_page(page: int, count: int, limit: int, headers: Mapping[str, str]) -> bool:
    """`total-pages` says so; without it, a short page is the last one."""
    total_pages = _header_int(headers, "total-pages")
    if total_pages is not None:
        return page >= total_pages
    return count < limit


def is_pagination_error(data: Any) -> bool:
    return "pagination error" in provider_error_text(data).lower()


_SHORTFALL = re.compile(
    r"([0-9][0-9,]*(?:\.[0-9]+)?)\s*([A-Z]{3})\s+required\W+"
    r"([0-9][0-9,]*(?:\.[0-9]+)?)\s*([A-Z]{3})\s+available",
    re.IGNORECASE,
)


def shortfall(message: str) -> tuple[str, Decimal, Decimal] | None:
    """(currency, required, available) from GIFQ's balance message, when it says so.

    "Insufficient balance: 62.53 USD required, 10.00 USD available"
    """
    match = _SHORTFALL.search(message)
    if match is None or match.group(2).upper() != match.group(4).upper():
        return None
    required, available = (Decimal(match.group(i).replace(",", "")) for i in (1, 3))
    return match.group(2).upper(), required, available


def rejection_code(status: int, message: str) -> str:
    """A stable error code for a definite 4xx refusal (nothing was created)."""
    text = message.lower()
    if "insufficient" in text or "balance" in text or "funds" in text:
        return "insufficient_funds"
    if "reference" in text and ("different" in text or "already used" in text):
        return "idempotency_key_reused"  # a bug on our side: same key, other bytes
    if "stock" in text:
        return "out_of_stock"
    if status == 404:
        return "not_found"
    if status in (400, 422):
        return "validation_error"
    return f"http_{status}"


# ---------------------------------------------------------------------------
# Result mapping (pure).


def order_result(item: OrderItem, order: Record) -> ItemResult:
    """One order's status as the row's result: pending, succeeded or failed."""
    status = as_text(order.get("status"))
    order_id = text_of(order.get("id")) or None
    if status == "completed":
        cost, cost_currency = order_cost(order, item)
        credentials = (
            parse_redemption(order) if isinstance(order.get("redemption"), Mapping) else None
        )
        return ItemResult(
            row_key=item.row_key,
            status="succeeded",
            order_id=order_id,
            cost=cost,
            cost_currency=cost_currency,
            voucher_code=credentials.voucher_code if credentials else None,
            redemption_url=credentials.redemption_url if credentials else None,
            provider_status=status,
            extra=_fx_extra(order),
        )
    if status == "failed":
        reason = " ".join(as_text(order.get("failure_reason")).split()) or "the order failed"
        code = "insufficient_funds" if "insufficient" in reason.lower() else "request_failed"
        return _failed(item, order_id, status, code, reason)
    if status != "pending":
        log.warning("GIFQ order in unexpected status %r; treating it as pending", status)
    return ItemResult(
        row_key=item.row_key, status="pending", order_id=order_id, provider_status=status
    )


def order_cost(order: Record, item: OrderItem | None = None) -> tuple[Decimal | None, str | None]:
    """What the wallet paid for a completed order, and in which currency.

    Same currency: `price`. Cross-currency: `fx_fee.total_charged` in the payment
    currency (the converted price plus the fee), or, when a provider leaves the
    total out, the converted price plus `fee_amount`.
    """
    currency = as_text(order.get("currency")) or (item.currency if item else "")
    fx = order.get("fx_fee")
    if isinstance(fx, Mapping):
        paying = (
            as_text(fx.get("currency"))
            or as_text(order.get("payment_currency"))
            or (item.payment_currency if item else "")
        )
        total = _optional_money(fx.get("total_charged"))
        if total is not None:
            return total, paying or None
        rate, fee = _optional_money(fx.get("rate")), _optional_money(fx.get("fee_amount"))
        price = _optional_money(order.get("price"))
        if rate is not None and fee is not None and price is not None and paying:
            return round_money(price * rate, paying) + fee, paying
        return None, None
    price = _optional_money(order.get("price"))
    if price is None:
        return None, None
    return price, currency or None


def _fx_extra(order: Record) -> dict[str, str]:
    fx = order.get("fx_fee")
    if not isinstance(fx, Mapping):
        return {}
    extra = {"price": text_of(order.get("price")), "price_currency": as_text(order.get("currency"))}
    for field in ("rate", "fee_percentage", "fee_amount", "total_charged", "currency"):
        extra[f"fx_{field}"] = text_of(fx.get(field))
    return {k: v for k, v in extra.items() if v}


def payout_match_key(email: str, amount: object, currency: str) -> tuple[str, Decimal, str]:
    """How a payout is matched to its row: Decimal compares by value (50 == 50.00)."""
    return (email.strip().lower(), to_decimal(amount), currency.strip().upper())


def payout_key(payout: Record) -> tuple[str, Decimal, str]:
    return payout_match_key(
        as_text(payout.get("email")),
        payout.get("amount"),
        as_text(payout.get("currency")),
    )


def map_payouts(
    payouts: Iterable[Record], items: Sequence[OrderItem], *, wallet_currency: str
) -> tuple[ItemResult, ...]:
    """One ItemResult per item, in item order, from a completed payout order's payouts.

    A payout matches an item on (email, amount, currency). Among several such
    payouts, one that also carries the item's name is preferred; items equal on
    all of these are interchangeable and are paired in listing order. Raises
    IncompleteResult (carrying the exact matches) when the payouts do not
    account for every item one to one.
    """
    queues: dict[tuple[str, Decimal, str], list[Record]] = defaultdict(list)
    stray = 0
    for payout in payouts:
        try:
            queues[payout_key(payout)].append(payout)
        except (TypeError, ValueError, ArithmeticError):
            stray += 1
    chosen: dict[str, Record] = {}
    for same_name_only in (True, False):
        for item in items:
            if item.row_key in chosen:
                continue
            queue = queues.get(payout_match_key(item.recipient_email, item.amount, item.currency))
            found = _take(queue or [], _norm_name(item.recipient_name) if same_name_only else None)
            if found is not None:
                chosen[item.row_key] = found
    results = {
        item.row_key: payout_result(item, chosen[item.row_key], wallet_currency)
        for item in items
        if item.row_key in chosen
    }
    stray += sum(len(queue) for queue in queues.values())
    missing = len(items) - len(results)
    if missing or stray:
        raise IncompleteResult(
            f"the payouts do not add up: {missing} of {len(items)} recipients without a "
            f"payout, {stray} payouts matching no recipient",
            items=[results[item.row_key] for item in items if item.row_key in results],
        )
    return tuple(results[item.row_key] for item in items)


def _take(queue: list[Record], name: str | None) -> Record | None:
    """Remove and return the first payout (with this name, when one is given)."""
    for index, payout in enumerate(queue):
        if name is None or _norm_name(as_text(payout.get("name"))) == name:
            return queue.pop(index)
    return None


def _failed(
    item: OrderItem, order_id: str | None, status: str, code: str, reason: str
) -> ItemResult:
    """A failed order or payout: nothing delivered, so no cost and no credentials."""
    return ItemResult(
        item.row_key,
        "failed",
        order_id,
        provider_status=status,
        error_code=code,
        error_message=reason,
    )


def _norm_name(name: str) -> str:
    return " ".join(name.split()).casefold()


def payout_result(item: OrderItem, payout: Record, wallet_currency: str) -> ItemResult:
    status = as_text(payout.get("status"))
    payout_id = text_of(payout.get("id")) or None
    if status == "failed":
        reason = " ".join(as_text(payout.get("failure_reason")).split()) or "the payout failed"
        return _failed(item, payout_id, status, "request_failed", reason)
    if status not in _DELIVERED_PAYOUT_STATUSES:
        log.warning("GIFQ payout in unexpected status %r; counting it as sent", status)
    same_wallet = item.currency.upper() == wallet_currency.upper()
    return ItemResult(
        row_key=item.row_key,
        status="succeeded",
        order_id=payout_id,
        cost=to_decimal(payout.get("amount")) if same_wallet else None,
        cost_currency=wallet_currency.upper() if same_wallet else None,
        provider_status=status,
        extra={"payout_order_id": as_text(payout.get("payout_order_id"))},
    )


# ---------------------------------------------------------------------------
# Parsing records (pure). Each raises ValueError/TypeError on malformed data.


def parse_brand(brand: Record) -> list[Product]:
    """One Product per brand option: code = brand slug; equal min and max = fixed value."""
    slug = _required_text(brand, "brand")
    title = as_text(brand.get("title")) or slug
    categories = brand.get("categories") or []
    brand_countries = brand.get("countries") or []
    options = brand.get("products") or []
    if not isinstance(options, list):
        raise TypeError("products must be a list")
    products = []
    for option in records_in(options):
        low = _optional_money(option.get("min_face_value"))
        high = _optional_money(option.get("max_face_value"))
        countries = option.get("countries") or brand_countries
        products.append(
            Product(
                product_code=slug,
                name=title,
                merchant=title,
                currency=_required_text(option, "currency").upper(),
                countries=tuple(as_text(c).upper() for c in countries if as_text(c)),
                category=as_text(categories[0]) if categories else "",
                min_value=low,
                max_value=high,
                denominations=(low,) if low is not None and low == high else (),
                discount=_optional_money(option.get("discount")) or Decimal(0),
                is_active=option.get("stock_count") != 0,
            )
        )
    return products


def parse_balance(record: Record) -> Balance:
    amount = to_decimal(record.get("amount"))
    return Balance(
        currency=_required_text(record, "currency").upper(), balance=amount, available=amount
    )


def parse_transaction(record: Record) -> WalletTransaction:
    """Signed as GIFQ sends it: negative amounts are debits."""
    kind = _required_text(record, "type")
    order_id = text_of(record.get("order_id")) or text_of(record.get("payout_order_id"))
    return WalletTransaction(
        transaction_type=kind,
        amount=to_decimal(record.get("amount")),
        currency=_required_text(record, "currency").upper(),
        order_id=order_id or None,
        transaction_id=text_of(record.get("id")) or None,
        reference=as_text(record.get("reference")) or None,
        timestamp=parse_time(record.get("created_at")),
        description=kind.replace("_", " "),
    )


def parse_provider_order(record: Record) -> ProviderOrder:
    cost, _currency = order_cost(record)
    return ProviderOrder(
        order_id=_required_text(record, "id"),
        product_code=as_text(record.get("brand")),
        currency=as_text(record.get("currency")).upper(),
        face_value=to_decimal(record.get("face_value")),
        status=as_text(record.get("status")),
        created_at=parse_time(record.get("created_at")),
        reference=as_text(record.get("reference")) or None,
        cost=cost if as_text(record.get("status")) == "completed" else None,
    )


def parse_payout_order_line(record: Record) -> ProviderOrder:
    """One recipient's payout, in the shape reconciliation reads orders in."""
    return ProviderOrder(
        order_id=_required_text(record, "id"),
        product_code="",
        currency=as_text(record.get("currency")).upper(),
        face_value=to_decimal(record.get("amount")),
        status=as_text(record.get("status")),
        created_at=parse_time(record.get("created_at")),
        recipient_email=as_text(record.get("email")),
        reference=text_of(record.get("payout_order_id")) or None,
        cost=to_decimal(record.get("amount")),
    )


def parse_redemption(order: Record) -> Redemption:
    """The order's credentials as one voucher code and one link.

    The code is `code` (or `serial`); a `pin`, `security_code` or
    `link_challenge_code` the brand also needs follows it, labelled, so the
    recipient has everything in one cell.
    """
    fields = order.get("redemption")
    found = fields if isinstance(fields, Mapping) else {}
    values = {name: text_of(found.get(name)) for name in _REDEMPTION_FIELDS}
    parts = [values["code"] or values["serial"]]
    if values["code"] and values["serial"]:
        parts.append(f"serial {values['serial']}")
    labels = {"pin": "PIN", "security_code": "security code", "link_challenge_code": "challenge"}
    parts += [f"{label} {values[name]}" for name, label in labels.items() if values[name]]
    return Redemption(
        order_id=_required_text(order, "id"),
        voucher_code=" / ".join(part for part in parts if part) or None,
        redemption_url=values["link"] or None,
    )


def text_of(value: Any) -> str:
    """A string or number as text (ids may be either); Decimals exactly as written."""
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, int | str):
        return str(value).strip()
    return ""


def _required_text(record: Record, field: str) -> str:
    value = text_of(record.get(field))
    if not value:
        raise ValueError(f"missing {field}")
    return value


def _optional_money(value: Any) -> Decimal | None:
    return None if value is None or value == "" else to_decimal(value)


def _header_int(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None


def created_before(record: Record, moment: datetime | None) -> bool:
    created = parse_time(record.get("created_at"))
    return moment is not None and created is not None and created < moment


def fx_quote(order: Record) -> FxQuote | None:
    """The conversion a cross-currency order was charged at; None for any other order."""
    fx = order.get("fx_fee")
    if not isinstance(fx, Mapping):
        return None
    try:
        rate = _optional_money(fx.get("rate"))
        fee = _optional_money(fx.get("fee_percentage"))
    except (TypeError, ValueError, ArithmeticError):
        return None  # an odd record only means this order tells no rate
    source = as_text(order.get("currency")).upper()
    paying = (as_text(fx.get("currency")) or as_text(order.get("payment_currency"))).upper()
    if rate is None or rate <= 0 or not source or not paying:
        return None
    return FxQuote(
        source=source,
        paying=paying,
        rate=rate,
        fee_percent=fee if fee is not None else Decimal(0),
        seen_at=parse_time(order.get("created_at")),
    )
