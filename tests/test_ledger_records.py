"""Row records: the one column order every report writes the sheet's other columns in
(passthrough_headers), and rows read back from the ledger."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from batcher.ledger.records import passthrough_headers
from batcher.ledger.store import Ledger
from tests.test_ledger import sheet_row
from tests.test_reconcile import row


def test_without_sheet_info_columns_come_in_the_order_rows_first_name_them() -> None:
    rows = [
        row(1, passthrough={"Team": "A"}),
        row(2, passthrough={"Cost centre": "CC-1", "Team": "B"}),
    ]
    assert passthrough_headers(rows) == ["Team", "Cost centre"]


def test_sheet_order_wins_and_mapped_or_absent_columns_are_left_out() -> None:
    rows = [row(1, passthrough={"Team": "A", "Cost centre": "CC-1", "Note": "x"})]
    info = {
        "sheet_headers": ["Email", "Cost centre", "Budget", "Team"],
        "sheet_columns": {"recipient_email": "Email"},
    }
    # Budget is in the sheet but no row carries it; Note is only in the ledger
    assert passthrough_headers(rows, info) == ["Cost centre", "Team", "Note"]


def test_rows_read_back_share_what_rows_have_in_common_and_keep_their_own(
    tmp_path: Path,
) -> None:
    """A batch is read whole (plans, reports): per-row copies of common text would cost
    a kilobyte a row. Values are unchanged; only the objects are shared."""
    ledger = Ledger.open(tmp_path)
    try:
        ledger.ensure_batch(
            "b", provider="p", account_id="a", source_path="s.csv", source_sha256="0" * 64
        )
        ledger.sync_rows("b", [sheet_row(f"k{i}", i + 2) for i in range(3)], retry_failed=False)
        first, second, third = ledger.rows("b")
    finally:
        ledger.close()
    assert not hasattr(first, "__dict__")  # slotted: no dictionary per record
    assert [r.fields["recipient_email"] for r in (first, second, third)] == [
        "k0@x.com",
        "k1@x.com",
        "k2@x.com",
    ]
    assert first.fields == {"recipient_email": "k0@x.com", "product_code": "P", "amount": "10.00"}
    assert first.passthrough == {"Cost centre": "CC-1"}
    assert (first.face_value, first.est_cost) == (Decimal("10.00"), Decimal("9.50"))
    for name in first.fields:  # the same name object in every row
        assert next(n for n in second.fields if n == name) is name
    assert second.fields["product_code"] is first.fields["product_code"]
    assert second.currency is first.currency and second.state is first.state
    assert second.batch is first.batch and second.face_value is first.face_value


def test_rows_read_by_key_are_the_rows_select_star_gives(tmp_path: Path) -> None:
    """`rows_by_key` (and the paged reads over it) builds records positionally from
    `ROW_COLUMNS`: every field equal to `RowRecord.from_sql` of `SELECT *`, shared text
    still shared, over rows in every state (costs, errors, no reference, nasty text)."""
    from batcher.ledger.queries import ROW_COLUMNS
    from batcher.ledger.records import RowRecord
    from tests.test_reports import MIXED, build

    ledger, _ = build(tmp_path, MIXED)
    try:
        expected = {
            r["row_key"]: RowRecord.from_sql(r)
            for r in ledger._db.execute("SELECT * FROM rows WHERE batch = ?", ("nightly",))
        }
        keys = sorted(expected)
        found = ledger.rows_by_key("nightly", keys)
        paged = [r for page in ledger.rows_in_pages("nightly", keys, 3) for r in page]
    finally:
        ledger.close()
    assert ROW_COLUMNS.split(", ") == [c for c in RowRecord.__dataclass_fields__]
    assert found == expected and paged == [expected[k] for k in keys]
    assert len({r.state for r in found.values()}) >= 4 and any(r.cost is None for r in paged)
    for name in ("in_sheet", "face_value", "cost", "fields", "passthrough", "source_row"):
        assert [type(getattr(r, name)) for r in paged] == [
            type(getattr(expected[r.row_key], name)) for r in paged
        ]
    first, second = paged[0], paged[1]
    assert second.batch is first.batch and second.created_at is first.created_at


def test_a_rows_product_code_is_read_as_decoding_its_cells_would() -> None:
    """The first read of a report sums settled rows by product without decoding each
    row's cells: whatever the cells hold (quotes, backslashes, the key's own text in a
    value or a name, no product code, another type, another layout), the product code
    is the one `json.loads` finds."""
    import json

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from batcher.ledger.queries import product_code

    nasty = st.text(alphabet='ab"\\: ,{}\u00e9\u2028product_code', max_size=24)
    values = st.one_of(nasty, st.sampled_from(['"product_code": "', "P\\", "TESCO_UK"]))
    keys = st.one_of(st.sampled_from(["product_code", "recipient_name", "reference"]), nasty)
    cells = st.dictionaries(
        keys, st.one_of(values, st.none(), st.integers()), max_size=5
    ) | st.builds(lambda v: {"name": v, "product_code": v}, values)

    @settings(max_examples=400, deadline=None)
    @given(cells=cells, ascii_only=st.booleans(), compact=st.booleans())
    def check(cells: dict[str, object], ascii_only: bool, compact: bool) -> None:
        separators = (",", ":") if compact else None
        text = json.dumps(cells, ensure_ascii=ascii_only, separators=separators)
        assert product_code(text) == json.loads(text).get("product_code", "")

    check()
    assert product_code('{"reference": "r", "product_code": "AMAZON_UK"}') == "AMAZON_UK"
