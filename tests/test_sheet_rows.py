"""The sheet's rows for the ledger (execute/rows.py) carry the keys and content hashes
that execute/plan.py defines, however the rows are built and sliced."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest

from batcher.core.models import Balance, Product
from batcher.execute.plan import RowFields, row_keys
from batcher.execute.rows import iter_sheet_rows
from batcher.intake.read import read_sheet
from batcher.intake.validate import validate_rows
from batcher.ledger.records import SheetRow

PRODUCTS = [Product(product_code="SHOP_GB", merchant="Shop", currency="GBP", countries=("GB",))]
WALLETS = [Balance(currency="GBP", balance=Decimal(10**6), available=Decimal(10**6))]

SHEET = """Reference,Email,Name,Product,Amount,Currency,Country,Message,Team
R-1,a@x.com,Ann  Lee,SHOP_GB,10,GBP,GB,Thanks!,T1
,b@x.com,José Núñez,SHOP_GB,20.50,GBP,GB,,T2
,b@x.com,José Núñez,SHOP_GB,20.5,GBP,GB,,T3
R-2,c@x.com,,SHOP_GB,10.0,GBP,GB,,T1
,b@x.com,José Núñez,SHOP_GB,20.50,GBP,GB,,T4
,d@x.com,Dee,SHOP_GB,5,GBP,gb,Well  done,T2
R-3,a@x.com,Ann Lee,shop_gb,10.00,gbp,GB,Thanks!,T1
,,broken,SHOP_GB,xx,GBP,GB,,T9
"""


def _defined(rows: list[SheetRow]) -> tuple[list[str], list[str]]:
    """The keys and content hashes as execute/plan.py defines them: a `RowFields` per
    row and `row_keys` over the whole sheet in order."""
    fields = [
        RowFields(
            recipient_email=r.fields["recipient_email"],
            product_code=r.fields["product_code"],
            amount=Decimal(r.fields["amount"]),
            currency=r.fields["currency"],
            recipient_name=r.fields["recipient_name"],
            message=r.fields["message"],
            country=r.fields["country"],
            payment_currency=r.fields["payment_currency"],
        )
        for r in rows
    ]
    keys = row_keys([(r.fields["reference"] or None, f) for r, f in zip(rows, fields, strict=True)])
    return keys, [f.content_hash() for f in fields]


@pytest.mark.parametrize("slice_rows", [1, 2, 3, 20_000])
def test_keys_and_hashes_are_plan_definitions_in_any_slicing(
    tmp_path: Path, slice_rows: int
) -> None:
    path = tmp_path / "sheet.csv"
    path.write_text(SHEET, encoding="utf-8")
    result = validate_rows(read_sheet(path), PRODUCTS, WALLETS, allow_duplicates=True)
    rows = list(iter_sheet_rows(result, slice_rows=slice_rows))
    valid = [r for r in rows if r.valid]
    assert len(rows) == 8 and len(valid) == 7  # the broken row is in the ledger too
    keys, hashes = _defined(valid)
    assert [r.row_key for r in valid] == keys
    assert [r.content_hash for r in valid] == hashes
    # identical unreferenced rows are told apart by their rank, across slices
    assert len(set(keys)) == len(keys)
    assert Counter(k[0] for k in keys) == Counter({"f": 4, "r": 3})
    assert [r.source_row for r in rows] == sorted(r.source_row for r in rows)
    assert [r.passthrough for r in valid][:2] == [{"Team": "T1"}, {"Team": "T2"}]
