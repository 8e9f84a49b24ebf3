"""Key derivation and chunking: pure, deterministic, position-independent."""

from __future__ import annotations

import random
from collections import Counter
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batcher.core.keys import match_key
from batcher.execute.plan import (
    PlanRow,
    RowFields,
    chunk_key,
    plan_chunks,
    reference_row_key,
    row_keys,
)

emails = st.sampled_from(["a@x.com", "b@x.com", "c@y.org", "d@z.net"])
products = st.sampled_from(["AMAZON_UK_STD", "TESCO_GBP", "ZALANDO_EU"])
amounts = st.decimals(min_value=1, max_value=500, places=2, allow_nan=False, allow_infinity=False)
names = st.sampled_from(["", "Ana", "José Núñez", "李雷"])


@st.composite
def row_fields(draw: st.DrawFn) -> RowFields:
    return RowFields(
        recipient_email=draw(emails),
        product_code=draw(products),
        amount=draw(amounts),
        currency="GBP",
        recipient_name=draw(names),
        message=draw(st.sampled_from(["", "Thanks!", "Well done"])),
    )


@st.composite
def sheets(draw: st.DrawFn) -> list[tuple[str | None, RowFields]]:
    rows = draw(st.lists(row_fields(), min_size=1, max_size=30))
    with_refs = draw(st.booleans())
    return [(f"REF-{i}" if with_refs else None, f) for i, f in enumerate(rows)]


def test_reference_key_ignores_fields_and_whitespace() -> None:
    fields = RowFields("a@x.com", "P", Decimal("10"), "GBP")
    other = RowFields("b@x.com", "Q", Decimal("99"), "EUR")
    assert row_keys([("RW-1", fields)]) == row_keys([(" RW-1 ", other)])
    assert reference_row_key("RW-1") != reference_row_key("RW-2")


def test_amount_spelling_and_case_do_not_change_the_key() -> None:
    a = RowFields("Ann@X.com ", "amazon_uk_std", Decimal("50"), "gbp", "  Ann  Lee ")
    b = RowFields("ann@x.com", "AMAZON_UK_STD", Decimal("50.00"), "GBP", "Ann Lee")
    assert row_keys([(None, a)]) == row_keys([(None, b)])
    assert a.content_hash() == b.content_hash()


def test_identical_rows_get_distinct_keys_by_occurrence() -> None:
    f = RowFields("a@x.com", "P", Decimal("10"), "GBP")
    keys = row_keys([(None, f), (None, f), (None, f)])
    assert len(set(keys)) == 3


@given(sheets(), st.integers(0, 30))
def test_row_keys_carry_occurrences_across_slices(rows: list, cut: int) -> None:
    """A sheet keyed a slice at a time, the counts carried over, keys as a whole."""
    seen: Counter[bytes] = Counter()
    sliced = row_keys(rows[:cut], seen=seen) + row_keys(rows[cut:], seen=seen)
    assert sliced == row_keys(rows)


@given(sheets(), st.randoms(use_true_random=False))
@settings(max_examples=200)
def test_row_keys_do_not_depend_on_position(rows: list, rnd: random.Random) -> None:
    """Shuffling rows (identical rows keep their relative order) keeps every key."""
    expected = row_keys(rows)
    groups: dict[object, list[int]] = {}
    for i, (reference, fields) in enumerate(rows):
        groups.setdefault((reference, fields.canonical()), []).append(i)
    sort_key: dict[int, float] = {}
    for members in groups.values():
        draws = sorted(rnd.random() for _ in members)
        sort_key.update(zip(members, draws, strict=True))
    order = sorted(range(len(rows)), key=sort_key.__getitem__)
    shuffled_keys = row_keys([rows[i] for i in order])
    assert shuffled_keys == [expected[i] for i in order]


@given(sheets(), row_fields())
def test_adding_a_row_keeps_existing_keys(rows: list, extra: RowFields) -> None:
    before = row_keys(rows)
    after = row_keys([*rows, (None, extra)])
    assert after[: len(before)] == before


def _plan_rows(n: int, *, currency: str = "GBP", clash_every: int = 0) -> list[PlanRow]:
    rows = []
    for i in range(n):
        email = "same@x.com" if clash_every and i % clash_every == 0 else f"u{i}@x.com"
        rows.append(
            PlanRow(
                row_key=f"f{i:031d}",
                currency=currency,
                attempt=1,
                retry_group="",
                match_fields=match_key("P", Decimal("10"), email, "Same"),
            )
        )
    return rows


def test_chunk_key_is_versioned_and_order_free() -> None:
    a = chunk_key("ugiftme", "acct", "b", ["k2", "k1"], 1)
    assert a == chunk_key("ugiftme", "acct", "b", ["k1", "k2"], 1)
    assert a.startswith("b1-") and len(a) <= 255
    assert a != chunk_key("ugiftme", "acct", "b", ["k1", "k2"], 2)
    assert a != chunk_key("ugiftme", "acct2", "b", ["k1", "k2"], 1)
    assert a != chunk_key("ugiftme", "acct", "b2", ["k1", "k2"], 1)
    with pytest.raises(ValueError):
        chunk_key("ugiftme", "acct", "b", [], 1)


@given(
    st.integers(min_value=1, max_value=400),
    st.integers(min_value=1, max_value=120),
    st.integers(min_value=0, max_value=5),
    st.randoms(use_true_random=False),
)
@settings(max_examples=100, deadline=None)
def test_chunking_invariants(n: int, size: int, clash_every: int, rnd: random.Random) -> None:
    rows = _plan_rows(n, clash_every=clash_every) + _plan_rows(3, currency="EUR")
    # Give EUR rows distinct keys from GBP ones.
    rows = rows[:n] + [
        PlanRow("e" + r.row_key[1:], r.currency, 1, "", r.match_fields) for r in rows[n:]
    ]
    plan = plan_chunks(rows, provider="p", account="a", batch="b", chunk_size=size)
    shuffled = list(rows)
    rnd.shuffle(shuffled)
    # Deterministic in the set of rows, whatever their order.
    assert plan == plan_chunks(shuffled, provider="p", account="a", batch="b", chunk_size=size)
    seen: list[str] = []
    by_key = {r.row_key: r for r in rows}
    for chunk in plan:
        assert 1 <= len(chunk.row_keys) <= size
        members = [by_key[k] for k in chunk.row_keys]
        assert {m.currency for m in members} == {chunk.currency}
        fields = [m.match_fields for m in members]
        assert len(fields) == len(set(fields)), "two rows with the same match fields in a chunk"
        seen.extend(chunk.row_keys)
    assert sorted(seen) == sorted(by_key), "every row lands in exactly one chunk"
    assert len({c.key for c in plan}) == len(plan)


def test_failed_chunk_is_retried_as_the_same_set() -> None:
    """Rows released from one chunk stay together, whatever else is pending."""
    released = [
        PlanRow(f"r{i:031d}", "GBP", 2, "b1-failed", match_key("P", Decimal(1), f"{i}@x", ""))
        for i in range(5)
    ]
    fresh = _plan_rows(7)
    alone = plan_chunks(released, provider="p", account="a", batch="b", chunk_size=100)
    mixed = plan_chunks(released + fresh, provider="p", account="a", batch="b", chunk_size=100)
    assert alone[0] in mixed
