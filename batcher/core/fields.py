"""The canonical order fields every stage speaks of, whatever the sheet calls them."""

from __future__ import annotations

SOURCE_ROW = "source_row"

CANONICAL_FIELDS: tuple[str, ...] = (
    "reference",
    "recipient_email",
    "recipient_name",
    "product_code",
    "merchant",
    "amount",
    "currency",
    "country",
    "message",
    "payment_currency",
)

#: Columns validation adds to every valid row (the catalog's discount, the cost);
#: a pass-through column under one of these names is renamed, like a repeated header.
DERIVED_FIELDS: tuple[str, ...] = ("discount", "cost")

#: Required by every provider. GIFQ adds `country` (see each provider's `required_fields`).
BASE_REQUIRED: frozenset[str] = frozenset({"recipient_email", "product_code", "amount", "currency"})
