"""The sandbox's JSON writer: byte for byte what json.dumps writes, with Decimals exact."""

from __future__ import annotations

import enum
import json
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from batcher.sandbox.jsonio import decode_json, encode_json

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=8),
    st.text(alphabet='a"\\/\n\t\x00\u2028é😀', max_size=8),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(value=json_values)
def test_plain_values_are_written_as_json_dumps_writes_them(value: Any) -> None:
    want = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    assert encode_json(value) == want


class Colour(enum.IntEnum):
    RED = 1


class Mode(enum.StrEnum):
    SYNC = "sync"


def test_decimals_enums_and_odd_keys() -> None:
    value = {"a": Decimal("25.00"), 3: [Decimal("1E+2"), Colour.RED, Mode.SYNC], "t": (True,)}
    assert encode_json(value) == b'{"a":25.00,"3":[100,1,"sync"],"t":[true]}'
    assert decode_json(encode_json(value))["a"] == Decimal("25.00")
    assert encode_json({"b": 1, "a": 2}, sort_keys=True) == b'{"a":2,"b":1}'
