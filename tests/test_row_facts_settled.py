"""Whole records settled without a question (succeeded, no conflict) are summed by the
light rows' shortcut (`RowFacts._count_settled`): every figure is the one the whole
path (`RowFacts._add_whole`) gives, for every kind of row around them."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from batcher.ledger.store import RowRecord
from batcher.reporting.row_facts import RowFacts
from tests.test_reconcile import row


def _figures(facts: RowFacts) -> dict[str, Any]:
    found = dict(vars(facts))
    found["totals"], found["failures"] = vars(facts.totals), vars(facts.failures)
    found["by_currency"] = {c: vars(v) for c, v in facts.by_currency.items()}
    return found


def _rows() -> list[RowRecord]:
    return [
        row(1),
        row(2, currency="EUR", fields={"product_code": "AMAZON_DE_STD"}),
        row(3, cost_currency="USD", passthrough={"Team": "x", "Cost centre": "CC-9"}),
        row(4, order_id=None, currency="CHF"),  # succeeded without an order id
        row(5, in_sheet=False),  # an earlier sheet's order
        row(6, in_sheet=False, order_id=None),
        row(7, cost=None),  # no cost in the ledger
        row(8, conflict="amount changed"),  # changed after it was sent: the whole path
        row(9, state="failed", order_id=None, error_code="insufficient_funds"),
        row(10, state="accepted", order_id=None),
        row(11, state="pending", order_id=None, passthrough={"Region": "North"}),
        row(12, state="held", order_id=None, error_code="possible_duplicate"),
        row(13, face="12.34", cost=Decimal("12.00")),
    ]


def test_settled_records_sum_as_the_whole_path_sums_them() -> None:
    shortcut, whole = RowFacts(), RowFacts()
    for each in _rows():
        shortcut.add(each)
        whole._add_whole(each)
    assert _figures(shortcut) == _figures(whole)
    assert shortcut.ordered == 7 and shortcut.earlier_orders == 1
    assert list(shortcut.passthrough_seen) == ["Cost centre", "Team", "Region"]
