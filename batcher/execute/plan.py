"""Row keys, chunk keys and chunking. Pure functions: no I/O, no clock, no randomness.

The same pending rows always give the same chunks and the same idempotency keys,
on any machine, with or without a ledger (docs/architecture.md, "Row identity and
idempotency keys"). That is what lets the provider's own deduplication protect
the company even when the ledger is lost.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import NamedTuple

from batcher.core.keys import MatchKey, canonical_amount, normalise_text
from batcher.providers.base import OrderFields

KEY_VERSION = "b1"
_ROW_KEY_LENGTH = 32  # hex chars: 128 bits
_CHUNK_KEY_LENGTH = 40  # hex chars: 160 bits; the whole key stays far below 255


def _digest(*parts: str) -> str:
    # A unit separator between parts, so ("ab", "c") and ("a", "bc") differ.
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


class RowFields(OrderFields):
    """The order-defining fields of a row, already validated and normalised."""

    def _order(self) -> tuple[str, str, Decimal, str, str, str]:
        """The fields that make the order, in `_canonical`'s order."""
        return (
            self.recipient_email,
            self.product_code,
            self.amount,
            self.currency,
            self.recipient_name,
            self.message,
        )

    def canonical(self) -> tuple[str, ...]:
        return _canonical(*self._order())

    def content_hash(self) -> str:
        """Everything that, if changed, makes it a different order."""
        return content_hash_of(*self._order(), self.country, self.payment_currency)


def _canonical(
    email: str, product_code: str, amount: Decimal, currency: str, name: str, message: str
) -> tuple[str, ...]:
    return (
        email.strip().lower(),
        product_code.strip().upper(),
        canonical_amount(amount),  # 50, 50.0 and 50.00 are one order
        currency.strip().upper(),
        normalise_text(name),
        normalise_text(message),
    )


def content_hash_of(
    email: str,
    product_code: str,
    amount: Decimal,
    currency: str,
    name: str,
    message: str,
    country: str,
    payment_currency: str,
) -> str:
    """`RowFields.content_hash` of these fields, without making a `RowFields` (a
    sheet's rows are hashed by the slice)."""
    return _digest(
        "content",
        *_canonical(email, product_code, amount, currency, name, message),
        country.strip().upper(),
        payment_currency.strip().upper(),
    )[:_ROW_KEY_LENGTH]


def reference_row_key(reference: str) -> str:
    return "r" + _digest("ref", normalise_text(reference))[: _ROW_KEY_LENGTH - 1]


def fields_row_key(fields: RowFields, occurrence: int) -> str:
    """Key of a row without a reference: its fields plus its rank among identical rows."""
    if occurrence < 1:
        raise ValueError("occurrence counts from 1")
    return "f" + _digest("fields", *fields.canonical(), str(occurrence))[: _ROW_KEY_LENGTH - 1]


def row_keys(
    rows: Sequence[tuple[str | None, RowFields]], *, seen: Counter[bytes] | None = None
) -> list[str]:
    """Row keys for (reference, fields) pairs given in source order.

    Only the relative order of identical rows matters (for their occurrence
    number); inserting or reordering other rows never changes a key. `seen` carries
    the occurrence counts over from the sheet's earlier slices (one digest per
    distinct unreferenced row, not its fields).
    """
    seen = Counter() if seen is None else seen
    keys: list[str] = []
    for reference, fields in rows:
        if reference is not None and reference.strip():
            keys.append(reference_row_key(reference))
            continue
        canonical = fields.canonical()
        identity = hashlib.sha256("\x1f".join(canonical).encode("utf-8")).digest()[:16]
        seen[identity] += 1
        keys.append(fields_row_key(fields, seen[identity]))
    return keys


# ---------------------------------------------------------------------------
# Chunks


class PlanRow(NamedTuple):
    """A row ready to be planned into a chunk (a tuple: a plan makes one per row)."""

    row_key: str
    currency: str
    attempt: int
    #: the key of the chunk that released this row, so a failed chunk is retried as a unit
    retry_group: str
    #: (product, amount, email, name): a chunk may hold each only once
    match_fields: MatchKey


@dataclass(frozen=True)
class PlannedChunk:
    key: str
    currency: str
    attempt: int
    row_keys: tuple[str, ...]


def chunk_key(
    provider: str, account: str, batch: str, row_keys: Iterable[str], attempt: int
) -> str:
    """sha256(provider | account | batch | sorted row keys | attempt), shortened and versioned."""
    ordered = sorted(row_keys)
    if not ordered:
        raise ValueError("a chunk holds at least one row")
    digest = _digest(provider, account, batch, ",".join(ordered), str(attempt))
    return f"{KEY_VERSION}-{digest[:_CHUNK_KEY_LENGTH]}"


def plan_chunks(
    rows: Iterable[PlanRow],
    *,
    provider: str,
    account: str,
    batch: str,
    chunk_size: int,
) -> list[PlannedChunk]:
    """Split rows into chunks: one currency and one attempt per chunk, and no two
    rows with the same match fields in one chunk. Deterministic in the *set* of rows.
    """
    if chunk_size < 1:
        raise ValueError("chunk size must be at least 1")
    groups: dict[tuple[str, int, str], list[PlanRow]] = {}
    for row in rows:
        groups.setdefault((row.currency, row.attempt, row.retry_group), []).append(row)

    chunks: list[PlannedChunk] = []
    for (currency, attempt, _group), members in sorted(groups.items()):
        for keys in _fill(sorted(members, key=lambda r: r.row_key), chunk_size):
            key = chunk_key(provider, account, batch, keys, attempt)
            chunks.append(PlannedChunk(key, currency, attempt, tuple(sorted(keys))))
    return chunks


def _fill(members: list[PlanRow], chunk_size: int) -> list[list[str]]:
    """First-fit: each row goes into the first chunk with room and no clash."""
    bins: list[tuple[list[str], set[tuple[str, str, str, str]]]] = []
    open_from = 0  # bins before this index are full; keeps the common case linear
    for row in members:
        placed = False
        for index in range(open_from, len(bins)):
            keys, seen = bins[index]
            if len(keys) < chunk_size and row.match_fields not in seen:
                keys.append(row.row_key)
                seen.add(row.match_fields)
                placed = True
                break
        if not placed:
            bins.append(([row.row_key], {row.match_fields}))
        while open_from < len(bins) and len(bins[open_from][0]) >= chunk_size:
            open_from += 1
    return [keys for keys, _ in bins]


def invalid_row_keys(raw_rows: Sequence[tuple[str, ...]]) -> list[str]:
    """Keys for rows that failed validation: their raw cells plus their rank among
    identical raw rows. They are never ordered; the key only tracks them in the ledger."""
    seen: Counter[tuple[str, ...]] = Counter()
    keys = []
    for cells in raw_rows:
        normal = tuple(normalise_text(c) for c in cells)
        seen[normal] += 1
        keys.append("x" + _digest("invalid", *normal, str(seen[normal]))[: _ROW_KEY_LENGTH - 1])
    return keys
