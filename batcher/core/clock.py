"""Timestamps as batcher writes them: ISO 8601 in UTC, milliseconds, a trailing Z."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_text(moment: datetime) -> str:
    """An aware datetime as 2025-01-15T09:30:00.123Z (the ledger and reports sort on this text)."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_now() -> str:
    return utc_text(datetime.now(UTC))
