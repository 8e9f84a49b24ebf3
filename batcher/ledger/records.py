"""What the ledger stores and hands out: rows, chunks, outcomes, sync counts (plain data)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from operator import attrgetter
from typing import Any

from batcher.core.states import ROW_STATES
from batcher.ledger.backend import Row


def parse_ts(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def count_states(rows: Iterable[RowRecord]) -> dict[str, int]:
    """Rows per state, every state present (zero when none)."""
    counts: dict[str, int] = dict.fromkeys(map(str, ROW_STATES), 0)
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    return counts


def passthrough_headers(
    rows: Sequence[RowRecord], info: Mapping[str, Any] | None = None
) -> list[str]:
    """The sheet's other (pass-through) columns, in file order, then any only the rows know of.

    `info` is the batch's info (`sheet_headers`, `sheet_columns`); without it the
    order is that in which the rows first name each column.
    """
    info = info or {}
    mapped = set((info.get("sheet_columns") or {}).values())
    seen: dict[str, None] = {}
    present = {h for r in rows for h in r.passthrough}
    for header in info.get("sheet_headers") or []:
        if header not in mapped and header in present:
            seen[header] = None
    for row in rows:
        for header in row.passthrough:
            seen.setdefault(header, None)
    return list(seen)


@dataclass(frozen=True, slots=True)
class RowContent:
    """What the sheet says about a row: the same fields in the sheet and in the ledger."""

    reference: str | None
    content_hash: str
    fields: dict[str, str]
    passthrough: dict[str, str]
    currency: str
    face_value: Decimal
    est_cost: Decimal | None


@dataclass(frozen=True, slots=True)
class SheetRow(RowContent):
    """A row of the current sheet, as the runner hands it to the ledger."""

    row_key: str
    source_row: int
    valid: bool
    error_code: str = ""
    error_message: str = ""


@dataclass(frozen=True, slots=True)
class RowRecord(RowContent):
    """A row as the ledger holds it: its sheet content, state and provider answer."""

    batch: str
    row_key: str
    source_row: int
    in_sheet: bool
    state: str
    attempt: int
    retry_group: str
    failure_kind: str | None
    error_code: str | None
    error_message: str | None
    provider_request_id: str | None
    conflict: str | None
    chunk_key: str | None
    order_request_id: str | None
    order_id: str | None
    transaction_id: str | None
    cost: Decimal | None
    cost_currency: str | None
    voucher_last4: str | None
    provider_status: str | None
    created_at: str
    updated_at: str
    succeeded_at: str | None

    @classmethod
    def from_sql(cls, row: Row) -> RowRecord:
        data = dict(zip(row.keys(), row, strict=True))  # 4x faster than dict(sqlite3.Row)
        for name in _SHARED_COLUMNS:
            if data[name] is not None:
                data[name] = sys.intern(data[name])
        data["in_sheet"] = bool(data["in_sheet"])
        data["fields"] = _cells(data["fields"])
        data["passthrough"] = _cells(data["passthrough"])
        for money in ("face_value", "est_cost", "cost"):
            data[money] = _decimal(data[money]) if data[money] is not None else None
        return cls(**data)


#: What a line of a report's Orders sheet shows of a row, in this order: row_key,
#: source_row, reference, fields, passthrough, face_value, currency, cost, cost_currency,
#: state, order_id, transaction_id, order_request_id, chunk_key, attempt, voucher_last4,
#: error_code, error_message, conflict, in_sheet, created_at, updated_at, succeeded_at
LineValues = tuple[Any, ...]


#: A record's `LineValues` (`queries.raw_line_values` reads the same from the ledger):
#: its fields in that order, read by one C call.
line_values: Callable[[RowRecord], LineValues] = attrgetter(
    "row_key", "source_row", "reference", "fields", "passthrough", "face_value", "currency",
    "cost", "cost_currency", "state", "order_id", "transaction_id", "order_request_id",
    "chunk_key", "attempt", "voucher_last4", "error_code", "error_message", "conflict",
    "in_sheet", "created_at", "updated_at", "succeeded_at",
)  # fmt: skip


@dataclass(slots=True)
class SettledRow:
    """A row settled without a question (succeeded, nothing changed since it was sent):
    only what a report sums over it (`batcher.reporting.row_facts`), matches to the
    provider's listings (`batcher.reporting.reconcile`, whose wallet lines keep it) and
    shows of it, with its cells left as the ledger stores them (JSON text), decoded
    only for its line on the Orders sheet (`queries.settled_line_values`). Reading it
    skips the columns and decoding a whole `RowRecord` costs; the first of a report's
    two reads of a batch's rows is mostly such rows."""

    row_key: str
    source_row: int
    in_sheet: bool
    reference: str | None
    currency: str
    face_value: Decimal
    cost: Decimal | None
    cost_currency: str | None
    order_id: str | None
    order_request_id: str | None
    transaction_id: str | None
    chunk_key: str | None
    retry_group: str
    attempt: int
    voucher_last4: str | None
    error_code: str | None
    error_message: str | None
    created_at: str
    updated_at: str
    succeeded_at: str | None
    product_code: str
    passthrough: tuple[str, ...]  # the row's pass-through headers, in its order
    fields_json: str  # the row's cells, undecoded
    passthrough_json: str  # its pass-through cells, undecoded
    state: str = "succeeded"
    conflict: None = None


# A batch's rows are read whole (plans, reports): at 100,000 rows every per-row copy
# of the same text counts. Columns most rows share (batch, state, currency, a chunk's
# keys, timestamps of one commit) and the field names are interned, amounts are
# shared Decimals (immutable), so each row holds only what is its own.
_SHARED_COLUMNS = (
    "batch", "state", "currency", "retry_group", "failure_kind", "error_code",
    "error_message", "provider_request_id", "chunk_key", "order_request_id",
    "cost_currency", "provider_status", "created_at", "updated_at", "succeeded_at",
)  # fmt: skip
_SHARED_FIELDS = frozenset({"product_code", "currency", "country", "payment_currency"})
_decimal = lru_cache(maxsize=1 << 16)(Decimal)


def _cells(text: str) -> dict[str, str]:
    """A row's stored cells: names interned, and the values rows share (codes)."""
    return {
        sys.intern(name): sys.intern(value)
        if name in _SHARED_FIELDS and isinstance(value, str)
        else value
        for name, value in json.loads(text).items()
    }


@dataclass(slots=True)
class ChunkRecord:
    chunk_key: str
    batch: str
    currency: str
    attempt: int
    state: str
    payload: bytes
    row_count: int
    request_id: str | None
    send_count: int
    poll_count: int
    error_code: str | None
    error_message: str | None
    created_at: str
    first_sent_at: str | None
    last_sent_at: str | None
    accepted_at: str | None
    finished_at: str | None
    row_keys: list[str] = field(default_factory=list)

    @classmethod
    def from_sql(cls, row: Row, row_keys: list[str]) -> ChunkRecord:
        data = dict(row)
        data["payload"] = bytes(data["payload"])
        return cls(**data, row_keys=row_keys)


@dataclass(frozen=True)
class SyncReport:
    new: int = 0
    unchanged: int = 0
    changed: int = 0
    conflicts: int = 0
    skipped_elsewhere: int = 0
    gone: int = 0


@dataclass(frozen=True, slots=True)
class RowOutcome:
    """What a provider said about one row, as the ledger records it."""

    row_key: str
    state: str  # succeeded | failed | pending | accepted
    failure_kind: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    provider_request_id: str | None = None
    order_id: str | None = None
    transaction_id: str | None = None
    cost: Decimal | None = None
    cost_currency: str | None = None
    voucher_last4: str | None = None
    provider_status: str | None = None
    #: for released rows: retry as attempt+1, grouped with the chunk that released them
    release: bool = False
