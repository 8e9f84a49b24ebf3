"""The one answer to "is this the same order?", used by planning, provider lookups and reconciliation.

Every stage that recognises an order by its content (a bulk result without item
indexes, a provider order found after a lost ledger, an order listed for
reconciliation) builds this key, so a row that matches in one stage matches in
all of them: names are compared in Unicode NFC with whitespace collapsed, and
amounts by value (``100``, ``100.00`` and ``1E+2`` are one amount).
"""

from __future__ import annotations

import unicodedata
from decimal import Decimal

#: (product code, amount, email, name), each in its canonical spelling
MatchKey = tuple[str, str, str, str]


def normalise_text(value: str) -> str:
    """Unicode NFC, trimmed, inner whitespace collapsed: what a person sees as 'the same'."""
    if value.isascii():  # NFC leaves ASCII as it is: no call (keys are made per order)
        return " ".join(value.split())
    return " ".join(unicodedata.normalize("NFC", value).split())


def canonical_amount(amount: Decimal) -> str:
    """An amount spelled one way whatever its exponent: 100, 100.00 and 1E+2 give '100'."""
    if not amount.is_finite():
        raise ValueError(f"not a finite amount: {amount}")
    text = str(amount)
    if len(text) > _PLAIN_DIGITS or "E" in text:
        text = format(amount.normalize(), "f")
    elif "." in text:
        # Plain notation (every amount a sheet or a provider spells), too short for
        # normalize() to round: trailing zeros dropped is the same text, for a few
        # string operations instead of a new Decimal (planning does 40,000 a run).
        text = text.rstrip("0").rstrip(".")
    return "0" if text in {"-0", "0"} else text


#: at most this many characters of plain notation take the string path: fewer digits
#: than any decimal context's default precision (28), so nothing is rounded either way
_PLAIN_DIGITS = 24


def match_key(product_code: str, amount: Decimal, email: str, name: str) -> MatchKey:
    """What identifies an order by content, identically in every stage."""
    return (
        normalise_text(product_code).upper(),
        canonical_amount(amount),
        normalise_text(email).lower(),
        normalise_text(name),
    )
