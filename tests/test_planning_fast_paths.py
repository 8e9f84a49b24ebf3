"""Planning's shortcuts give exactly what the slow path gives (issue 18: the time a run
spends before its first request)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import batcher.ledger.planning as planning
from batcher.ledger.planning import FieldsDecoded
from batcher.ledger.store import Ledger, SheetRow


def _row(i: int, *, email: str = "", product: str = "P-1") -> SheetRow:
    fields = {
        "recipient_email": email or f"p{i}@x.com",
        "product_code": product,
        "recipient_name": f"Ann \u00e9 {i}",
        "amount": "10.00",
        "currency": "GBP",
        "payment_currency": "",
        "message": 'say "hi"\u2028',
    }
    return SheetRow(
        row_key=f"k{i:03d}",
        source_row=i + 2,
        reference=f"R-{i}",
        content_hash=f"h{i}-{email}",
        fields=fields,
        passthrough={"Cost centre": "CC"},
        currency="GBP",
        face_value=Decimal("10.00"),
        est_cost=Decimal("9.50"),
        valid=True,
    )


@pytest.fixture
def ledger(tmp_path: Path) -> Any:
    led = Ledger.open(tmp_path)
    led.ensure_batch("b", provider="p", account_id="a", source_path="s.csv", source_sha256="0")
    yield led
    led.close()


def _planning_rows(led: Any) -> list[Any]:
    keys = led.row_keys("b", "pending", by="row_key")
    return [r for page in led.planning_rows_in_pages("b", keys) for r in page]


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    decoded: list[str] = []
    real = json.loads

    def loads(text: str, **kw: Any) -> Any:
        decoded.append(text)
        return real(text, **kw)

    monkeypatch.setattr(planning.json, "loads", loads)
    return decoded


def test_rows_the_sync_just_wrote_are_not_decoded_again(
    ledger: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [_row(i) for i in range(5)]
    ledger.sync_rows("b", rows, retry_failed=False)
    decoded = _count_decodes(monkeypatch)
    got = _planning_rows(ledger)
    assert decoded == []
    assert [r.fields for r in got] == [r.fields for r in rows]
    # The caller owns what it got: changing it changes neither the sheet's rows nor a
    # later read, which decodes the stored text again (each shortcut is used once).
    got[0].fields["product_code"] = "changed"
    assert rows[0].fields["product_code"] == "P-1"
    again = _planning_rows(ledger)
    assert len(decoded) == 5
    assert [r.fields for r in again] == [r.fields for r in rows]


def test_a_row_changed_since_is_read_as_stored(ledger: Any) -> None:
    ledger.sync_rows("b", [_row(i) for i in range(3)], retry_failed=False)
    # Another sync changes row 1's content: its new text is read, never the old dict.
    ledger.sync_rows("b", [_row(0), _row(1, email="new@x.com"), _row(2)], retry_failed=False)
    with ledger._tx() as db:  # and a writer outside the sync changes row 2's
        db.execute(
            "UPDATE rows SET fields = ? WHERE row_key = 'k002'",
            (json.dumps({"product_code": "OTHER"}),),
        )
    got = {r.row_key: r.fields for r in _planning_rows(ledger)}
    assert got["k000"] == _row(0).fields
    assert got["k001"]["recipient_email"] == "new@x.com"
    assert got["k002"] == {"product_code": "OTHER"}


def test_a_sheet_too_large_to_plan_at_once_keeps_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(planning, "FIELDS_DECODED_ROWS", 3)
    memo = FieldsDecoded()
    for i in range(3):
        memo.add(f"t{i}", {"i": str(i)})
    assert len(memo.by_text) == 3
    memo.add("t3", {})
    assert memo.by_text == {}
    memo.add("t4", {})  # full: nothing more is kept until the next sync clears it
    assert memo.by_text == {}
    memo.clear()
    memo.add("t5", {})
    assert memo.by_text == {"t5": {}}
