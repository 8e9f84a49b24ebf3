"""Money as Decimal: ISO 4217 minor units, half-up rounding, parsing from raw text.

A float never holds a price anywhere in batcher. Amounts enter as text (sheet
cells, JSON number literals) and stay Decimal until they are written out.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import lru_cache

# ISO 4217 minor units for the currencies that differ from the default of 2,
# plus the common 2-decimal ones for documentation. Unknown codes default to 2.
_ZERO_DECIMAL = {
    "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF",
    "UGX", "UYI", "VND", "VUV", "XAF", "XOF", "XPF",
}  # fmt: skip
_THREE_DECIMAL = {"BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"}
_FOUR_DECIMAL = {"CLF", "UYW"}

CURRENCY_SYMBOLS = {"GBP": "£", "EUR": "€", "USD": "$", "JPY": "¥", "CHF": "CHF "}

_CURRENCY_CODE = re.compile(r"^[A-Z]{3}$")


def is_currency_code(code: str) -> bool:
    return bool(_CURRENCY_CODE.match(code))


def minor_units(currency: str) -> int:
    """Number of decimals the currency allows (JPY 0, GBP 2, KWD 3)."""
    code = currency.upper()
    if code in _ZERO_DECIMAL:
        return 0
    if code in _THREE_DECIMAL:
        return 3
    if code in _FOUR_DECIMAL:
        return 4
    return 2


@lru_cache(maxsize=256)
def quantum(currency: str) -> Decimal:
    """The currency's smallest unit (GBP 0.01, JPY 1): made once per currency, as
    every order's cost and amount is rounded to it."""
    return Decimal(1).scaleb(-minor_units(currency))


def round_money(amount: Decimal, currency: str) -> Decimal:
    """Round half-up to the currency's minor units."""
    return amount.quantize(quantum(currency), rounding=ROUND_HALF_UP)


def decimals_of(amount: Decimal) -> int:
    """How many decimals the literal carries, ignoring trailing zeros (50.10 -> 1)."""
    normal = amount.normalize()
    exponent = normal.as_tuple().exponent
    assert isinstance(exponent, int)
    return max(0, -exponent)


def fits_currency(amount: Decimal, currency: str) -> bool:
    return decimals_of(amount) <= minor_units(currency)


def cost_after_discount(face_value: Decimal, discount_percent: Decimal, currency: str) -> Decimal:
    """What the wallet is charged: face x (1 - discount/100), half-up to minor units.

    A negative discount is a fee, so the cost exceeds the face value.
    """
    return round_money(face_value * (_HUNDRED - discount_percent) / _HUNDRED, currency)


_HUNDRED = Decimal(100)


def to_decimal(value: object) -> Decimal:
    """Turn a JSON scalar into Decimal without passing through float semantics.

    JSON numbers must be parsed with `parse_float=Decimal` upstream; this accepts
    Decimal, int and str. A float is refused loudly so a bug cannot hide.
    """
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool):
        raise TypeError("a boolean is not money")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation as exc:
            raise ValueError(f"not a decimal number: {value!r}") from exc
        if not result.is_finite():
            raise ValueError(f"not a finite amount: {value!r}")
        return result
    raise TypeError(f"refusing to treat {type(value).__name__} as money")


def money_str(amount: Decimal, currency: str) -> str:
    """Plain text with the currency's decimals, for ledgers and CSV: '1234.50'."""
    return str(round_money(amount, currency))


def format_money(amount: Decimal, currency: str) -> str:
    """Human text for terminals and messages: '£1,234.50', 'JPY 1,000'."""
    rounded = round_money(amount, currency)
    places = minor_units(currency)
    body = f"{abs(rounded):,.{places}f}"
    sign = "-" if rounded < 0 else ""
    symbol = CURRENCY_SYMBOLS.get(currency.upper())
    if symbol:
        return f"{sign}{symbol}{body}"
    return f"{sign}{currency.upper()} {body}"


# ---------------------------------------------------------------------------
# Parsing amounts typed by people.

_SPACES = re.compile(r"[\s\u00a0\u202f\u2007']")
_SYMBOLS = re.compile(r"^(?:[£€$¥]|[A-Z]{3})|(?:[£€$¥]|[A-Z]{3})$")


class AmountError(ValueError):
    """An amount that cannot be read, with a reason fit for the operator."""


def parse_amount(raw: str, *, decimal_comma: bool = False) -> Decimal:
    """Parse an amount as a person typed it: '50', '£50', '1,000.50', '50,00'.

    `decimal_comma` is set for `;`-delimited sheets, where Excel writes `50,00`.
    Raises AmountError with a reason; never returns NaN or infinity.
    """
    text = _SPACES.sub("", raw.strip())
    if not text:
        raise AmountError("the amount is empty")
    if not any(ch.isdigit() for ch in text):
        raise AmountError(f"{raw.strip()!r} is not a number")  # 'NaN', 'inf', 'fifty
    negative = False
    if text.startswith("(") and text.endswith(")"):
        negative, text = True, text[1:-1]
    if text.startswith("-"):
        negative, text = True, text[1:]
    elif text.startswith("+"):
        text = text[1:]
    text = _SYMBOLS.sub("", text.upper())
    if text.startswith("-"):
        negative, text = True, text[1:]
    if not text:
        raise AmountError(f"{raw.strip()!r} has no digits")
    text = _normalise_separators(text, decimal_comma=decimal_comma, raw=raw)
    if not re.fullmatch(r"\d+(?:\.\d+)?(?:E[+-]?\d+)?", text):
        raise AmountError(f"{raw.strip()!r} is not a number")
    try:
        value = Decimal(text)
    except InvalidOperation as exc:  # pragma: no cover - the regex guards this
        raise AmountError(f"{raw.strip()!r} is not a number") from exc
    if "E" in text:
        # Scientific notation from Excel: keep the exact value, drop the exponent form.
        value = value.quantize(Decimal(1)) if value == value.to_integral() else value.normalize()
    return -value if negative else value


def _normalise_separators(text: str, *, decimal_comma: bool, raw: str) -> str:
    if "," in text and "." in text:
        # Whichever comes last is the decimal separator: 1,000.50 or 1.000,50.
        if text.rfind(",") > text.rfind("."):
            return text.replace(".", "").replace(",", ".")
        return text.replace(",", "")
    if "," in text:
        if decimal_comma:
            if text.count(",") > 1:
                raise AmountError(f"{raw.strip()!r} has more than one decimal comma")
            return text.replace(",", ".")
        groups = text.split(",")
        if all(len(g) == 3 for g in groups[1:]) and groups[0] and len(groups[0]) <= 3:
            return text.replace(",", "")  # thousands separators: 1,000
        if len(groups) == 2:
            return text.replace(",", ".")  # 50,00 even outside a ';' file
        raise AmountError(f"{raw.strip()!r} has ambiguous commas")
    if text.count(".") > 1:
        groups = text.split(".")
        if all(len(g) == 3 for g in groups[1:]):
            return text.replace(".", "")  # 1.000.000 written European style
        raise AmountError(f"{raw.strip()!r} has more than one decimal point")
    if decimal_comma and re.fullmatch(r"\d{1,3}\.\d{3}", text):
        # In a file that writes decimals with a comma, 1.000 is most likely one
        # thousand, but it could be one. Refuse to guess with money.
        raise AmountError(
            f"{raw.strip()!r} is ambiguous in a file with decimal commas "
            f"(one thousand or one?); write {text.replace('.', '')} or {text.replace('.', ',')}"
        )
    return text


# Symbols (and codes) people type next to an amount, and the currencies each may mean.
SYMBOL_CURRENCIES: dict[str, frozenset[str]] = {
    "£": frozenset({"GBP"}),
    "€": frozenset({"EUR"}),
    "¥": frozenset({"JPY", "CNY"}),
    "$": frozenset({"USD", "CAD", "AUD", "NZD", "SGD", "HKD", "MXN"}),
}
_MARKER = re.compile(r"^\s*[-+(]?\s*([£€$¥]|[A-Za-z]{3})|([£€$¥]|[A-Za-z]{3})\s*\)?\s*$")


def currencies_marked(raw: str) -> frozenset[str] | None:
    """The currencies a symbol or ISO code typed with an amount allows ('£50' -> {GBP}).

    None when the amount carries no marker. Lets validation catch '£50' on a EUR row,
    which `parse_amount` alone would silently read as 50.
    """
    match = _MARKER.search(raw)
    if not match:
        return None
    marker = match.group(1) or match.group(2)
    return SYMBOL_CURRENCIES.get(marker, frozenset({marker.upper()}))
