"""Matching reads the rows settled without a question light (`SettledRow`): none of
their cells decoded, no whole `RowRecord` built. The reconciliation, the sums and the
report's lines are those the whole rows give."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from batcher.core.models import WalletTransaction
from batcher.ledger import queries
from batcher.ledger.records import SettledRow, line_values
from batcher.ledger.store import Ledger, RowRecord
from batcher.providers.base import ProviderOrder
from batcher.reporting import row_source
from batcher.reporting.reconcile import _check_order, _matched, _order_lines
from batcher.reporting.reports import collect
from batcher.reporting.row_facts import RowFacts
from batcher.reporting.verdicts import Reconciliation, WalletLine
from tests.test_reconcile import debit_for, order_for, row
from tests.test_report_pages import BALANCES, SPECS
from tests.test_reports import build

NOW = datetime.now(UTC)


class WholeReads:
    """The keys of the rows the ledger hands out as whole records."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.keys: list[str] = []
        real = queries.row_record

        def row_record(r: Any) -> RowRecord:
            record = real(r)
            self.keys.append(record.row_key)
            return record

        monkeypatch.setattr(queries, "row_record", row_record)
        monkeypatch.setattr(row_source, "row_record", row_record)


def _odd_ledger(tmp_path: Path) -> tuple[Ledger, Any]:
    """`SPECS`, and a little of everything matching tells apart: a changed row, earlier
    sheets' orders, a debit that differs, a refund, an order the provider did not list,
    one with no debit."""
    ledger, provider = build(tmp_path, SPECS, balances=BALANCES)
    db = ledger._db
    db.execute("UPDATE rows SET in_sheet = 0 WHERE source_row IN (12, 13)")
    db.execute("UPDATE rows SET conflict = 'amount changed' WHERE source_row = 14")
    provider.orders_ = [o for o in provider.orders_ if o.order_id != "o15"]
    txs = provider.transactions_ = [t for t in provider.transactions_ if t.order_id != "o18"]
    i = next(i for i, tx in enumerate(txs) if tx.order_id == "o16")
    txs[i] = dataclasses.replace(txs[i], amount=txs[i].amount - Decimal("0.01"))
    refunded = next(tx for tx in txs if tx.order_id == "o17")
    txs.append(dataclasses.replace(refunded, transaction_type="refund", amount=-refunded.amount))
    return ledger, provider


def _line(line: WalletLine) -> tuple[Any, ...]:
    def shown(r: Any) -> tuple[Any, ...] | None:
        if r is None:
            return None
        return (r.row_key, r.source_row, r.reference, r.transaction_id, r.order_id,
                r.succeeded_at, r.cost, r.currency, r.cost_currency)  # fmt: skip

    return (
        line.status, line.currency, line.transaction, shown(line.row), line.ledger_cost,
        line.difference, line.note, tuple(shown(r) for r in line.rows),
        line.order_id, line.timestamp,
    )  # fmt: skip


def _reconciliation(rec: Reconciliation) -> dict[str, Any]:
    found = {f.name: getattr(rec, f.name) for f in dataclasses.fields(rec)}
    found["wallet_lines"] = [_line(line) for line in rec.wallet_lines]
    return found


def _facts(f: RowFacts) -> dict[str, Any]:
    return {**vars(f), "totals": vars(f.totals), "failures": vars(f.failures)}


def test_matching_reads_settled_rows_light_and_reconciles_as_the_whole_rows_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger, provider = _odd_ledger(tmp_path)
    try:
        monkeypatch.setattr(row_source, "ROW_PAGE", 10_000)  # one page: read whole
        whole = collect(ledger, "nightly", provider, now=NOW)  # type: ignore[arg-type]
        monkeypatch.setattr(row_source, "ROW_PAGE", 6)
        reads = WholeReads(monkeypatch)
        paged = collect(ledger, "nightly", provider, now=NOW)  # type: ignore[arg-type]
        settled = {
            r[0]
            for r in ledger._db.execute(
                "SELECT row_key FROM rows WHERE state = 'succeeded' AND conflict IS NULL"
            )
        }
    finally:
        ledger.close()
    lines = paged.reconciliation.wallet_lines
    assert any(isinstance(line.row, SettledRow) for line in lines)
    assert not any(isinstance(line.row, SettledRow) for line in whole.reconciliation.wallet_lines)
    assert _reconciliation(paged.reconciliation) == _reconciliation(whole.reconciliation)
    assert _facts(paged.facts) == _facts(whole.facts)
    statuses = {line.status for line in lines}
    assert {"matched", "cost differs", "order has no wallet transaction"} <= statuses
    assert paged.reconciliation.checks["k15"].problems and paged.facts.earlier_orders == 2
    # Matching and summing built whole records only for the rows not settled without
    # a question (failed, unsent, in flight, changed): never for the settled ones.
    assert reads.keys and not settled & set(reads.keys)
    assert len(reads.keys) == len(set(reads.keys)) == len(SPECS) - len(settled)


ROW = row(1)
LISTED = order_for(ROW)
PAID = debit_for(ROW)


@pytest.mark.parametrize(
    ("record", "listed", "tx"),
    [
        (ROW, LISTED, PAID),
        (ROW, None, PAID),
        (ROW, dataclasses.replace(LISTED, currency="EUR"), PAID),
        (ROW, dataclasses.replace(LISTED, face_value=Decimal("50.01")), PAID),
        (dataclasses.replace(ROW, cost=None), LISTED, PAID),
        (ROW, LISTED, dataclasses.replace(PAID, amount=PAID.amount - Decimal("0.01"))),
        (ROW, LISTED, dataclasses.replace(PAID, amount=Decimal("-48.750"))),
        (ROW, LISTED, dataclasses.replace(PAID, currency="EUR")),
        (dataclasses.replace(ROW, cost_currency="EUR"), LISTED, PAID),
        (dataclasses.replace(ROW, cost_currency=None), LISTED, PAID),
        (ROW, LISTED, dataclasses.replace(PAID, amount=Decimal("48.75"))),  # a credit
    ],
)
def test_the_matched_shortcut_is_the_check_and_line_of_an_order_with_no_problem(
    record: RowRecord, listed: ProviderOrder | None, tx: WalletTransaction
) -> None:
    """`_matched` gives what `_check_order` and `_order_lines` give when nothing is wrong,
    and declines (None) exactly when something is."""
    light = SettledRow(
        **{f.name: getattr(record, f.name) for f in dataclasses.fields(SettledRow)
           if hasattr(record, f.name) and f.name != "passthrough"},
        product_code="AMAZON_UK_STD", passthrough=("Cost centre",), fields_json="{}",
        passthrough_json="{}",
    )  # fmt: skip
    for each in (record, light):
        check = _check_order(each, listed, [tx])
        lines = _order_lines(each, check, [tx])
        found = _matched(each, listed, tx)
        if check.problems or not check.listed:
            assert found is None
        else:
            assert found == (check, lines[0]) and lines[0].status == "matched"
            # made without their __init__: every field set, as it sets them
            assert vars(found[0]) == vars(check) and vars(found[1]) == vars(lines[0])


def test_orders_sheet_lines_of_held_rows_are_the_records_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Orders sheet takes the rows the wallet lines hold from them, whole or light
    (a light row's cells decoded for its line), and reads the others' lines undecoded
    (`for_lines`), never as whole records: the same lines, in report order."""
    ledger, _ = _odd_ledger(tmp_path)
    try:
        skip = "UPDATE rows SET state = 'skipped', reference = 'R-20' WHERE source_row = 21"
        ledger._db.execute(skip)
        monkeypatch.setattr(row_source, "RAW_PAGE", 4)
        rows = row_source.BatchRows.from_ledger(ledger, "nightly", page=6)
        expected = [line_values(r) for r in rows]
        light = {r.row_key: r for r in rows.for_sums() if isinstance(r, SettledRow)}
        whole = {r.row_key: r for r in list(rows)[::5] if r.row_key not in light}
        held = {k: r for i, (k, r) in enumerate(light.items()) if i % 3}
        rows.hold({**held, **whole})
        reads = WholeReads(monkeypatch)
        lines = list(rows.for_lines())
        read_for_lines = set(reads.keys)
        first = rows.first(10)
    finally:
        ledger.close()
    assert len(light) > 20 and whole and len(held) < len(light)
    assert lines == expected and len(lines) == len(SPECS)
    assert all(
        list(map(type, a)) == list(map(type, b)) for a, b in zip(lines, expected, strict=True)
    )
    assert read_for_lines == {"k20"}, "only the skipped row, to explain it"
    assert len(first) == 10 and all(isinstance(r, RowRecord) for r in first)  # whole only


@pytest.mark.parametrize("enabled", [True, False])
def test_matching_pauses_the_cycle_collector_and_leaves_it_as_it_was(
    monkeypatch: pytest.MonkeyPatch, enabled: bool
) -> None:
    """Matching builds hundreds of thousands of acyclic objects: the cyclic collector is
    paused while it does (not walking the heap again and again), then left as found."""
    import gc

    from batcher.reporting import reconcile as module
    from tests.test_reconcile import provider_for, run

    seen: list[bool] = []
    real = module.match_orders

    def match_orders(*args: Any, **kwargs: Any) -> Any:
        seen.append(gc.isenabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "match_orders", match_orders)
    rows = [row(n) for n in range(3)]
    was = gc.isenabled()
    try:
        if not enabled:
            gc.disable()
        rec = run(rows, provider_for(rows))
        after = gc.isenabled()
    finally:
        gc.enable() if was else gc.disable()
    assert rec.verdict == "RECONCILED" and seen == [False] and after is enabled


def test_a_light_row_is_its_whole_record_on_either_backend(ledger: Ledger) -> None:
    """What matching, the sums and the Orders line read of a light row is its whole
    record's, on SQLite and on PostgreSQL: every shared field, and the line."""
    from batcher.ledger.queries import settled_line_values
    from tests.test_ledger import sheet_row

    ledger.sync_rows("b", [sheet_row(f"k{i:02}", i + 2) for i in range(8)], retry_failed=False)
    ledger._db.execute(
        "UPDATE rows SET state = 'succeeded', order_id = 'O-' || row_key, cost = '9.75',"
        " order_request_id = 'req-1', chunk_key = 'c-1', transaction_id = 't-' || row_key,"
        " voucher_last4 = 'AB12', succeeded_at = updated_at, error_message = 'slow'"
        " WHERE batch = ? AND source_row < 8",
        ("b",),
    )
    rows = row_source.BatchRows.from_ledger(ledger, "b", page=3)
    light = [r for r in rows.for_sums() if isinstance(r, SettledRow)]
    whole = {r.row_key: r for r in rows}
    assert len(light) == 6
    names = [f.name for f in dataclasses.fields(SettledRow) if f.name != "passthrough"]
    shared = [n for n in names if hasattr(RowRecord, n)]
    for each in light:
        record = whole[each.row_key]
        assert {n: getattr(each, n) for n in shared} == {n: getattr(record, n) for n in shared}
        assert each.product_code == record.fields.get("product_code", "")
        assert each.passthrough == tuple(record.passthrough)
        assert settled_line_values(each) == line_values(record)
