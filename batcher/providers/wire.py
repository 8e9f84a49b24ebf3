"""Reading provider JSON records: what both provider clients parse the same way (pure)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from batcher.core.errors import ProviderUnavailable

T = TypeVar("T")
Record = Mapping[str, Any]


def read_record(provider: str, path: str, parse: Callable[[Record], T], record: Record) -> T:
    """Parse one record; malformed provider data becomes a one-line operator error."""
    try:
        return parse(record)
    except (ValueError, TypeError, ArithmeticError):
        raise ProviderUnavailable(f"{provider} sent data batcher cannot read from {path}") from None


def records_in(values: Iterable[Any]) -> Iterator[Record]:
    """The objects of a JSON list; anything else in it is skipped."""
    return (value for value in values if isinstance(value, Mapping))


def as_text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 timestamp, or None when absent or unreadable."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return aware(datetime.fromisoformat(value.strip()))
    except ValueError:
        return None


def aware(moment: datetime) -> datetime:
    """Naive datetimes are taken as UTC, so comparisons never mix the two."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
