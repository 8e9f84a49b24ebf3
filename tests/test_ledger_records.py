"""passthrough_headers: the one column order every report writes the sheet's other columns in."""

from __future__ import annotations

from batcher.ledger.records import passthrough_headers
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
