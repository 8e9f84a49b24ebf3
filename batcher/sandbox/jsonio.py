"""Decimal-exact JSON in both directions, and the JSON answers built on it.

Money never passes through a float: numbers are read as Decimal and written
from Decimal's own digits; `canonical_json` is what idempotency fingerprints hash.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from decimal import Decimal
from enum import Enum
from typing import Any

from starlette.responses import Response


class JsonDecodeError(ValueError):
    """A request body that is not acceptable JSON."""


def _refuse_constant(name: str) -> Any:
    raise JsonDecodeError(f"{name} is not valid JSON")


def decode_json(raw: bytes | str) -> Any:
    """Parse JSON with every non-integer number as Decimal; NaN/Infinity refused."""
    try:
        return json.loads(raw, parse_float=Decimal, parse_constant=_refuse_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise JsonDecodeError(str(exc)) from None


def decimal_literal(value: Decimal) -> str:
    """A Decimal as a JSON number literal, in plain notation ('1E+2' -> '100')."""
    if not value.is_finite():
        raise ValueError(f"{value} cannot be written as JSON")
    return format(value, "f")


def encode_json(value: Any, *, sort_keys: bool = False, allow_floats: bool = False) -> bytes:
    """Serialise to compact UTF-8 JSON; Decimals are written raw, never via float.

    Floats are refused unless `allow_floats` (for settings such as delays and
    rates in control calls, never for money in API answers).
    """
    parts: list[str] = []
    _encode_into(value, parts, sort_keys, allow_floats)
    return "".join(parts).encode("utf-8")


#: The C string encoder behind json.dumps(text, ensure_ascii=False), called directly:
#: json.dumps builds a new encoder on every call, which was most of the sandbox's
#: time answering a list page (100 orders: about 2,000 strings).
_json_string: Callable[[str], str] = json.encoder.encode_basestring


def _encode_into(value: Any, out: list[str], sort_keys: bool, allow_floats: bool) -> None:
    kind = type(value)
    if kind is str:  # the exact types first: most values are plain strings and dicts
        out.append(_json_string(value))
    elif kind is dict and not sort_keys:
        out.append("{")
        first = True
        for key, item in value.items():
            if not first:
                out.append(",")
            first = False
            out.append(_json_string(key) if type(key) is str else _json_string(str(key)))
            out.append(":")
            _encode_into(item, out, sort_keys, allow_floats)
        out.append("}")
    elif value is None:
        out.append("null")
    elif isinstance(value, bool):
        out.append("true" if value else "false")
    elif isinstance(value, int):
        out.append(int.__repr__(value))  # as json.dumps writes an int (or an IntEnum)
    elif isinstance(value, str):
        out.append(_json_string(value))
    elif isinstance(value, Decimal):
        out.append(decimal_literal(value))
    elif isinstance(value, float):
        if not allow_floats or not math.isfinite(value):
            raise TypeError("refusing to serialise a float; use Decimal for money")
        out.append(repr(value))
    elif isinstance(value, Mapping):
        items = sorted(value.items()) if sort_keys else value.items()
        out.append("{")
        for index, (key, item) in enumerate(items):
            if index:
                out.append(",")
            out.append(_json_string(str(key)))
            out.append(":")
            _encode_into(item, out, sort_keys, allow_floats)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _encode_into(item, out, sort_keys, allow_floats)
        out.append("]")
    elif isinstance(value, Enum):
        _encode_into(value.value, out, sort_keys, allow_floats)
    else:
        raise TypeError(f"cannot serialise {type(value).__name__} as JSON")


def canonical_json(value: Any) -> bytes:
    """Canonical form for payload comparison: sorted keys, no spaces, numbers normalised.

    50, 50.0 and 50.00 are the same JSON number, so they compare equal.
    """
    return encode_json(_normalise_numbers(value), sort_keys=True)


def _normalise_numbers(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | Decimal):
        return Decimal(value).normalize()  # written in plain notation by encode_json
    if isinstance(value, Mapping):
        return {str(k): _normalise_numbers(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normalise_numbers(v) for v in value]
    return value


class DecimalJSONResponse(Response):
    """A JSON response that writes Decimals as exact number literals."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return encode_json(content)


def json_response(
    body: Any, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return DecimalJSONResponse(body, status_code=status_code, headers=dict(headers or {}))
