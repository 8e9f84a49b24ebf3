"""Planning's shortcuts give exactly what the slow path gives (issue 18: the time a run
spends before its first request)."""

from __future__ import annotations

import gc
import json
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import batcher.ledger.planning as planning
from batcher.core.money import fits_currency, quantum
from batcher.execute.runner import RunOptions
from batcher.ledger.planning import FieldsDecoded
from batcher.ledger.store import Ledger, RowOutcome, SheetRow
from batcher.providers.ugiftme import amount_literal


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
    ledger: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(planning, "FIELDS_DECODED_ROWS", 3)
    ledger.sync_rows("b", [_row(i) for i in range(3)], retry_failed=False)
    assert len(planning.fields_decoded(ledger).by_text) == 3
    ledger.sync_rows("b", [_row(i) for i in range(7)], retry_failed=False)  # 4 new
    assert planning.fields_decoded(ledger).by_text == {}
    decoded = _count_decodes(monkeypatch)
    assert [r.fields for r in _planning_rows(ledger)] == [_row(i).fields for i in range(7)]
    assert len(decoded) == 7
    memo = FieldsDecoded()
    memo.by_text.update((f"t{i}", {}) for i in range(4))
    assert memo.keeping() is None
    assert memo.by_text == {}
    assert memo.keeping() is None  # full until the next sync clears it
    memo.clear()
    assert memo.keeping() == {}


def _amount_literal_long_way(amount: Decimal, currency: str) -> Decimal:
    """`amount_literal` as it was written before its shortcut."""
    if not amount.is_finite() or amount <= 0:
        raise ValueError(f"{amount} is not a positive amount")
    if not fits_currency(amount, currency):
        raise ValueError(f"{amount} has more decimals than {currency} allows")
    return amount.quantize(quantum(currency))


def _outcome(f: Any, amount: Decimal, currency: str) -> tuple[str, str]:
    try:
        got = f(amount, currency)
    except Exception as exc:  # the same exception, with the same words
        return type(exc).__name__, str(exc)
    return "ok", f"{got!s} {got.as_tuple()}"  # the same spelling too, not just the value


@settings(max_examples=400, deadline=None)
@given(
    amount=st.decimals(allow_nan=True, allow_infinity=True)
    | st.builds(
        lambda digits, exponent: Decimal(f"{digits}E{exponent}"),
        st.integers(-(10**30), 10**30),
        st.integers(-6, 6),
    ),
    currency=st.sampled_from(["GBP", "JPY", "KWD", "CLF", "gbp"]),
)
def test_amount_literal_gives_what_the_long_way_gives(amount: Decimal, currency: str) -> None:
    assert _outcome(amount_literal, amount, currency) == _outcome(
        _amount_literal_long_way, amount, currency
    )


@pytest.mark.parametrize(
    "amount", ["10", "10.0", "10.50", "10.500", "10.505", "1E+2", "0.001", "12345.6789"]
)
def test_amount_literal_examples(amount: str) -> None:
    for currency in ("GBP", "JPY", "KWD"):
        assert _outcome(amount_literal, Decimal(amount), currency) == _outcome(
            _amount_literal_long_way, Decimal(amount), currency
        )


def test_the_collector_is_paused_while_a_run_prepares(tmp_path: Path) -> None:
    from tests.test_runner import world

    w = world(tmp_path, [("GBP", "1.00")] * 3, wallets={"GBP": Decimal(1000)})
    seen: list[bool] = []
    before = gc.isenabled()

    def hold(needs: Any) -> list[str]:
        seen.append(gc.isenabled())
        return [n.row_key for n in needs if False]

    with w.runner(RunOptions()) as (_ledger, runner):
        plan = runner.prepare(w.rows, hold=hold)
    assert plan.rows_to_send == 3
    assert seen == [False]
    assert gc.isenabled() == before
    # and back on after a prepare that fails
    with w.runner(RunOptions()) as (_ledger, runner), pytest.raises(RuntimeError):
        runner.prepare(w.rows, hold=lambda needs: (_ for _ in ()).throw(RuntimeError("x")))
    assert gc.isenabled() == before


def test_a_states_rows_in_one_statement_are_its_rows_by_key(ledger: Any) -> None:
    rows = [_row(i) for i in (5, 1, 4, 2, 3)]
    ledger.sync_rows("b", rows, retry_failed=False)
    ledger.hold_rows("b", [RowOutcome("k004", "held", error_code="possible_duplicate")])
    for state in ("pending", "held", "planned"):
        keys = ledger.row_keys("b", state)  # sheet order
        by_key = [r for page in ledger.planning_rows_in_pages("b", keys) for r in page]
        assert ledger.planning_rows_in_state("b", state) == by_key
    assert [r.row_key for r in ledger.planning_rows_in_state("b", "pending")] == [
        "k001", "k002", "k003", "k005"
    ]  # fmt: skip


def test_only_rows_to_plan_are_kept_and_none_once_planned(tmp_path: Path) -> None:
    from tests.test_runner import world

    w = world(tmp_path, [("GBP", "1.00")] * 3, wallets={"GBP": Decimal(1000)})
    invalid = replace(w.rows[0], row_key="x-bad", source_row=99, valid=False,
                      fields={**w.rows[0].fields, "recipient_email": "not-an-email"})  # fmt: skip
    with w.runner(RunOptions()) as (ledger, runner):
        ledger.sync_rows(runner.batch, [*w.rows, invalid], retry_failed=False)
        kept = planning.fields_decoded(ledger).by_text
        assert sorted(kept) == sorted(
            planning.json.dumps(r.fields, ensure_ascii=False) for r in w.rows
        )
        plan = runner.prepare(None)  # no funds rule: planning reads whole records instead
        assert plan.rows_to_send == 3
        assert planning.fields_decoded(ledger).by_text == {}
