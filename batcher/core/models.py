"""Provider-neutral domain types shared by validation, planning, the runner and reports.

Provider clients translate their wire formats into these; nothing outside
`batcher.providers` needs to know how a given provider spells a field.

They were pydantic models; they are frozen dataclasses now, because importing
pydantic and building these models was about a sixth of the start-up of
`batcher validate`. What they kept of pydantic: keyword-only construction, each
field checked (and coerced as pydantic's lax mode would: an int or a numeric
string becomes a Decimal, a list a tuple) with a `ValueError` naming the model
and the field, finite amounts only, `model_copy(update=...)`, `model_dump()` and
`model_dump_json()`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar, Self


class ModelError(ValueError):
    """A field of a model got a value of the wrong kind (pydantic's ValidationError was
    a ValueError too)."""


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise TypeError("Input should be a valid string")


def _money(value: Any) -> Decimal:
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, bool):
        raise TypeError("Decimal input should be an integer, float, string or Decimal object")
    elif isinstance(value, int | float | str):
        try:
            result = Decimal(str(value).strip())
        except InvalidOperation:
            raise TypeError("Input should be a valid decimal") from None
    else:
        raise TypeError("Decimal input should be an integer, float, string or Decimal object")
    if not result.is_finite():
        raise TypeError("Input should be a finite number")
    return result


_TRUE = {"1", "on", "t", "true", "y", "yes"}
_FALSE = {"0", "off", "f", "false", "n", "no"}


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise TypeError("Input should be a valid boolean")


def _moment(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip())
        except ValueError:
            raise TypeError("Input should be a valid datetime") from None
    raise TypeError("Input should be a valid datetime")


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else check(value)


def _tuple_of(check: Callable[[Any], Any]) -> Callable[[Any], tuple[Any, ...]]:
    def checked(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, tuple | list | set | frozenset):
            raise TypeError("Input should be a valid tuple")
        return tuple(check(item) for item in value)

    return checked


def _text_map(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise TypeError("Input should be a valid dictionary")
    return {_text(k): _text(v) for k, v in value.items()}


#: a field's annotation (as written: `from __future__ import annotations`) -> its check
_CHECKS: dict[str, Callable[[Any], Any]] = {
    "str": _text,
    "str | None": _optional(_text),
    "Decimal": _money,
    "Decimal | None": _optional(_money),
    "bool": _flag,
    "datetime | None": _optional(_moment),
    "tuple[str, ...]": _tuple_of(_text),
    "tuple[Decimal, ...]": _tuple_of(_money),
    "dict[str, str]": _text_map,
}


def _json_value(value: Any) -> Any:
    """As pydantic's model_dump(mode="json") writes a value."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    if isinstance(value, tuple | list):
        return [_json_value(item) for item in value]
    if isinstance(value, dict):
        return {key: _json_value(item) for key, item in value.items()}
    return value


class _Frozen:
    """What the models share: every field checked on construction, and pydantic's copy
    and dump methods."""

    _checks: ClassVar[tuple[tuple[str, Callable[[Any], Any]], ...]]

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        cls._checks = ()  # filled by the first instance, when the dataclass fields exist

    def __post_init__(self) -> None:
        checks = type(self)._checks
        if not checks:
            checks = type(self)._checks = tuple(
                (f.name, _CHECKS[str(f.type)])
                for f in dataclasses.fields(self)  # type: ignore[arg-type]
            )
        for name, check in checks:
            value = self.__dict__[name]
            try:
                checked = check(value)
            except TypeError as exc:
                raise ModelError(
                    f"1 validation error for {type(self).__name__}\n{name}\n  {exc} "
                    f"[input_value={value!r:.40}, input_type={type(value).__name__}]"
                ) from None
            if checked is not value:
                object.__setattr__(self, name, checked)

    def __str__(self) -> str:  # pydantic's: the fields, without the class name
        return " ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))  # type: ignore[arg-type]

    def model_copy(self, *, update: dict[str, Any] | None = None) -> Self:
        return dataclasses.replace(self, **(update or {}))  # type: ignore[type-var]

    def model_dump(self, *, mode: str = "python") -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        return _json_value(values) if mode == "json" else values

    def model_dump_json(self) -> str:
        import json

        return json.dumps(self.model_dump(mode="json"), ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True, kw_only=True)
class Product(_Frozen):
    """One orderable catalog entry.

    `denominations` non-empty means only those face values are allowed;
    otherwise any value in [min_value, max_value] with the currency's decimals.
    `discount` is a percentage: positive is a discount, negative a fee.
    """

    product_code: str
    name: str = ""
    merchant: str = ""
    currency: str
    countries: tuple[str, ...] = ()
    category: str = ""
    min_value: Decimal | None = None
    max_value: Decimal | None = None
    denominations: tuple[Decimal, ...] = ()
    discount: Decimal = Decimal(0)
    is_active: bool = True


@dataclass(frozen=True, kw_only=True)
class Balance(_Frozen):
    currency: str
    balance: Decimal
    available: Decimal  # balance minus holds; equals balance when the provider has no holds


@dataclass(frozen=True, kw_only=True)
class WalletTransaction(_Frozen):
    """One wallet movement. `amount` is signed: debits are negative."""

    transaction_type: str  # funding | purchase | refund | fx_fee | payout | ...
    amount: Decimal
    currency: str
    order_id: str | None = None
    transaction_id: str | None = None
    reference: str | None = None
    timestamp: datetime | None = None
    description: str = ""


@dataclass(frozen=True, kw_only=True)
class Campaign(_Frozen):
    """A payout campaign: recipients of its payouts choose a card among its brands."""

    campaign_id: str
    title: str = ""
    status: str = ""  # draft | active | paused | archived
    brands: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class AccountInfo(_Frozen):
    account_id: str
    name: str = ""
    email: str = ""
    plan: str = ""
    status: str = ""
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class FxQuote(_Frozen):
    """The last conversion a provider reported from one currency into a paying wallet.

    `rate` is paying-currency units per unit of `source`; `fee_percent` the FX fee
    on the converted amount. A provider that publishes no rates still reports them
    on each cross-currency order: this is the newest of those.
    """

    source: str
    paying: str
    rate: Decimal
    fee_percent: Decimal
    seen_at: datetime | None = None
