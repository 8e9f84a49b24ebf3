"""canonical_json writes exactly what json.dumps would, with sorted keys and exact Decimals."""

from __future__ import annotations

import json
from decimal import Decimal
from enum import IntEnum, StrEnum
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batcher.transport.http import canonical_json


def reference(value: Any) -> str:
    """The definition, spelled out with json.dumps for every scalar."""
    if value is None or isinstance(value, bool | int | str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dict):
        fields = sorted((str(k), v) for k, v in value.items())
        return (
            "{"
            + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{reference(v)}" for k, v in fields)
            + "}"
        )
    return "[" + ",".join(reference(item) for item in value) + "]"


class Kind(StrEnum):
    GIFT = "gift"


class Level(IntEnum):
    HIGH = 3


scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.text()
    | st.decimals(allow_nan=False, allow_infinity=False, places=2)
    | st.sampled_from([Kind.GIFT, Level.HIGH])
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(values)
def test_same_bytes_as_the_definition(value: Any) -> None:
    assert canonical_json(value) == reference(value).encode("utf-8")


def test_text_keeps_non_ascii_and_escapes_controls() -> None:
    body = canonical_json({"name": 'Zoë "Z" \u2028\n', "b": Decimal("50.00"), "a": [True, None]})
    assert body == '{"a":[true,null],"b":50.00,"name":"Zoë \\"Z\\" \u2028\\n"}'.encode()


@pytest.mark.parametrize("bad", [1.5, Decimal("NaN"), Decimal("Infinity"), {1, 2}, object()])
def test_floats_non_finite_decimals_and_other_types_are_refused(bad: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        canonical_json({"x": bad})
