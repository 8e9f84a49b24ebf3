"""Header text -> canonical field: the alias table, and headers that name a currency."""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Sequence

_ALIASES: dict[str, tuple[str, ...]] = {
    "reference": (
        "reference", "ref", "orderref", "orderreference", "referenceid", "refno",
        "referencenumber", "externalreference", "externalref", "externalid",
        "clientreference", "yourreference", "customerreference",
    ),
    "recipient_email": (
        "recipientemail", "email", "emailaddress", "recipientemailaddress", "mail",
        "emailid",
    ),
    "recipient_name": (
        "recipientname", "name", "recipient", "fullname", "recipientfullname",
        "employeename", "displayname",
    ),
    "product_code": (
        "productcode", "product", "sku", "code", "productid", "productsku", "giftcard",
        "giftcardcode", "cardcode", "card",
    ),
    "merchant": ("merchant", "merchantname", "retailer", "store", "vendor"),
    "amount": (
        "amount", "value", "valuepurchased", "facevalue", "denomination", "giftvalue",
        "giftamount", "cardvalue", "cardamount",
    ),
    "currency": ("currency", "currencycode", "ccy", "cur"),
    "country": ("country", "countrycode", "recipientcountry", "countryiso"),
    "message": ("message", "giftmessage", "personalmessage", "msg", "greeting"),
    "payment_currency": ("paymentcurrency", "walletcurrency", "paywith", "paymentccy"),
}  # fmt: skip

#: normalised header text -> canonical field
HEADER_ALIASES: dict[str, str] = {
    alias: name for name, aliases in _ALIASES.items() for alias in aliases
}

# "Amount (GBP)", "Value [€]": an amount header that names its currency.
_AMOUNT_WITH_CURRENCY = re.compile(
    r"^(?P<base>.*?)\s*[\(\[]\s*(?P<ccy>[A-Za-z]{3}|[£€$¥])\s*[\)\]]\s*$"
)
_SYMBOL_CODES = {"£": "GBP", "€": "EUR", "¥": "JPY", "$": "USD"}


def normalise_header(text: str) -> str:
    """Lower-case letters and digits only: 'E-mail Address ' -> 'emailaddress'."""
    folded = unicodedata.normalize("NFKD", text).casefold()
    return "".join(ch for ch in folded if ch.isalnum() and not unicodedata.combining(ch))


def field_for_header(text: str) -> tuple[str | None, str | None]:
    """The canonical field a header names, and a currency it implies ('Amount (GBP)').

    The currency is looked for first: 'Value (£)' normalises to 'value', an
    amount alias, and would otherwise lose its '£'.
    """
    match = _AMOUNT_WITH_CURRENCY.match(text)
    if match and HEADER_ALIASES.get(normalise_header(match["base"])) == "amount":
        code = match["ccy"]
        return "amount", _SYMBOL_CODES.get(code, code.upper())
    return HEADER_ALIASES.get(normalise_header(text)), None


def closest_headers(name: str, headers: Sequence[str]) -> list[str]:
    """Headers that look most like a field, best first (for a missing-column error)."""
    aliases = _ALIASES[name]
    scored: list[tuple[float, str]] = []
    for header in headers:
        key = normalise_header(header)
        if not key:
            continue
        best = max(difflib.SequenceMatcher(None, key, alias).ratio() for alias in aliases)
        if best >= 0.6:
            scored.append((best, header))
    scored.sort(key=lambda pair: -pair[0])
    return [header for _, header in scored[:3]]
