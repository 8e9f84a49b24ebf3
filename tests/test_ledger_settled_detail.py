"""A settled row's event detail, spelled out (`transitions.settled_detail`), is the JSON
the ledger's generic event encoder writes, to the byte: reports and `batcher events`
read either."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from batcher.ledger.connection import _event_detail
from batcher.ledger.transitions import settled_detail

texts = st.none() | st.text() | st.sampled_from(["succeeded", "failed", 'a"b\\\\c', "é\u2028\x00"])


@given(texts, texts, texts)
def test_the_spelled_out_detail_is_the_generic_encoders(state: Any, code: Any, order: Any) -> None:
    assert settled_detail(state, code, order) == _event_detail(
        {"state": state, "code": code, "order_id": order}
    )


@given(st.integers() | st.decimals(allow_nan=False), texts)
def test_a_value_that_is_not_text_takes_the_generic_path(odd: Any, other: Any) -> None:
    assert settled_detail(other, odd, other) == _event_detail(
        {"state": other, "code": odd, "order_id": other}
    )
