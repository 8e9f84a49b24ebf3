"""Reading provider JSON records: what both provider clients parse the same way (pure)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, TypeGuard, TypeVar

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
    return iso_time(value) if isinstance(value, str) else None


@lru_cache(maxsize=4096)
def iso_time(text: str) -> datetime | None:
    """`parse_time` of a text."""
    # A listing repeats its timestamps (the orders of one bulk request and their
    # wallet transactions share one): each distinct text is parsed once. A datetime
    # is immutable, so handing out the same one twice is safe.
    text = text.strip()
    if not text:
        return None
    try:
        return aware(datetime.fromisoformat(text))
    except ValueError:
        return None


_FIELDS: dict[type, frozenset[str]] = {}


def assemble(cls: type[T], **values: Any) -> T:
    """A frozen dataclass instance (a core model, `ProviderOrder`) built from values
    the parser has already read and checked, without running its `__init__`.

    A listing parses 100,000 records: the generated `__init__` of a frozen dataclass
    sets each field through `object.__setattr__`, and a model's `__post_init__` then
    checks each field again; together that cost as much as the rest of the parsing.
    Every field must be given, each exactly as the model's own checks would leave
    it (a `str`, a finite `Decimal`, an aware `datetime`, None for an optional one):
    nothing is coerced or checked here. Anything else builds with the constructor.
    """
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = frozenset(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
    if values.keys() != names:
        raise TypeError(f"assemble({cls.__name__}) needs every field, and only those")
    built = object.__new__(cls)
    built.__dict__.update(values)
    return built


def unchecked(cls: type[T], values: dict[str, Any]) -> T:
    """`assemble` for a caller that names every field in a literal (and whose tests
    compare what it builds with what `assemble` builds): not even the names are
    checked. A listing's fast path builds 200,000 models with it."""
    built = object.__new__(cls)
    object.__setattr__(built, "__dict__", values)
    return built


def is_record(value: Any) -> TypeGuard[Record]:
    """A JSON object (the common case, a dict, without the slower Mapping check)."""
    return type(value) is dict or isinstance(value, Mapping)


def aware(moment: datetime) -> datetime:
    """Naive datetimes are taken as UTC, so comparisons never mix the two."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
