"""rows.csv lines made with one formula test per line (`safe_texts`) are the lines each
cell through `safe_cell` made: the same text for every kind of row and cell."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from batcher.ledger.store import RowRecord
from batcher.reporting.cells import safe_cell
from batcher.reporting.outputs import row_line
from tests.test_reconcile import row


def each_cell_guarded(row: RowRecord, passthrough_headers: Sequence[str]) -> list[str]:
    """rows.csv's line as it was made before `safe_texts`: every value, `str`, `safe_cell`."""
    f = row.fields
    values: list[Any] = [
        row.source_row, row.row_key, row.state, row.attempt, row.chunk_key or "",
        row.order_id or "", row.order_request_id or "", row.transaction_id or "",
        row.error_code or "", row.error_message or "", row.provider_request_id or "",
        row.failure_kind or "", row.conflict or "", row.reference or "",
        f.get("recipient_email", ""), f.get("recipient_name", ""), f.get("product_code", ""),
        f.get("amount", str(row.face_value)), row.currency,
        "" if row.cost is None else str(row.cost), row.cost_currency or "",
    ]  # fmt: skip
    values.extend(row.passthrough.get(h, "") for h in passthrough_headers)
    return [safe_cell(str(v)) for v in values]


_TEXT = (
    st.text(max_size=12)
    | st.sampled_from(["", "=1+1", "+44 20", "-5", "@SUM(A1)", " =x", "\t=x", "＝1", "é", "£5"])
    | st.from_regex(r"[A-Za-z0-9=+\-@ '\t\uff1d\u200b].{0,8}", fullmatch=True)
)
_MAYBE = st.none() | _TEXT
_MONEY = st.decimals(min_value=-1000, max_value=1000, places=2, allow_nan=False)


@st.composite
def rows(draw: st.DrawFn) -> RowRecord:
    fields = {
        name: draw(_TEXT)
        for name in ("recipient_email", "recipient_name", "product_code", "amount")
        if draw(st.booleans())
    }
    return row(
        draw(st.integers(0, 10**6)),
        row_key=draw(_TEXT),
        state=draw(st.sampled_from(["succeeded", "failed", "skipped", "pending", "held"])),
        attempt=draw(st.integers(-2, 5)),
        reference=draw(_MAYBE),
        fields=fields,
        passthrough=draw(st.dictionaries(st.sampled_from(["Cost centre", "Team", "=x"]), _TEXT)),
        face=draw(_MONEY),
        cost=draw(st.none() | _MONEY),
        currency=draw(st.sampled_from(["GBP", "", "=GBP"])),
        cost_currency=draw(_MAYBE),
        chunk_key=draw(_MAYBE),
        order_id=draw(_MAYBE),
        order_request_id=draw(_MAYBE),
        transaction_id=draw(_MAYBE),
        error_code=draw(_MAYBE),
        error_message=draw(_MAYBE),
        provider_request_id=draw(_MAYBE),
        failure_kind=draw(_MAYBE),
        conflict=draw(_MAYBE),
    )


@settings(max_examples=300)
@given(rows(), st.lists(st.sampled_from(["Cost centre", "Team", "=x", "Other"]), unique=True))
def test_a_rows_csv_line_is_each_cell_through_safe_cell(
    record: RowRecord, headers: list[str]
) -> None:
    assert row_line(record, headers) == each_cell_guarded(record, headers)


def test_a_skipped_row_explained_and_a_formula_cell_are_lines_as_before() -> None:
    skipped = row(
        3, state="skipped", order_id=None, cost=None, error_code="ordered_in_another_batch",
        error_message="already ordered in batch b1 as order o1 on 2026-03-01; not ordered again",
        fields={"recipient_email": "=HYPERLINK(1)", "recipient_name": "-x"},
    )  # fmt: skip
    plain = row(4, cost=Decimal("12.30"))
    for record in (skipped, plain):
        assert row_line(record, ["Cost centre", "Team"]) == each_cell_guarded(
            record, ["Cost centre", "Team"]
        )
    assert row_line(skipped, [])[14:16] == ["'=HYPERLINK(1)", "'-x"]
