"""A new batch's rows are stored in the order chunks take them (currency, row key),
not in sheet order, so each transition of a chunk rewrites a few neighbouring pages
of `rows` rather than one random page per row (connection._store_staged_rows)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from batcher.ledger import sync
from batcher.ledger.records import SheetRow
from batcher.ledger.store import Ledger
from tests.test_ledger import _started, sheet_row
from tests.test_ledger_row_indexes import _key, _pages_written_by_one_chunks_sending


def _row(n: int, currency: str) -> SheetRow:
    return replace(sheet_row(_key(n), n + 2, ref=f"REF-{n:06d}"), currency=currency)


def _stored(ledger: Ledger) -> list[tuple[str, str, int]]:
    return [
        (r[0], r[1], r[2])
        for r in ledger._db.execute(
            "SELECT currency, row_key, source_row FROM rows WHERE batch = 'b' ORDER BY rowid"
        )
    ]


def test_a_new_batch_is_stored_in_chunk_order_across_sync_slices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sync, "SYNC_SLICE_ROWS", 70)  # several slices, as a large sheet
    ledger = _started(Ledger.open(tmp_path))
    try:
        rows = [_row(n, "EUR" if n % 3 == 0 else "GBP") for n in range(500)]
        ledger.sync_rows("b", rows, retry_failed=False)
        stored = _stored(ledger)
        assert len(stored) == 500
        # the table's own order is the chunks' order: by currency, then row key
        assert [s[:2] for s in stored] == sorted((r.currency, r.row_key) for r in rows)
        # readers that want the sheet's order still get it
        assert [r.source_row for r in ledger.rows("b")] == [n + 2 for n in range(500)]
        # nothing waits once the sync's transaction is over
        assert ledger._db.execute("SELECT COUNT(*) FROM temp.rows_staging").fetchone()[0] == 0
    finally:
        ledger.close()


def test_a_sync_that_fails_stores_and_leaves_nothing(tmp_path: Path) -> None:
    ledger = _started(Ledger.open(tmp_path))

    def failing() -> Iterator[SheetRow]:
        yield from (_row(n, "GBP") for n in range(30))
        raise RuntimeError("the sheet broke")

    try:
        with pytest.raises(RuntimeError):
            ledger.sync_rows("b", failing(), retry_failed=False)
        assert _stored(ledger) == []
        assert ledger._db.execute("SELECT COUNT(*) FROM temp.rows_staging").fetchone()[0] == 0
        report = ledger.sync_rows("b", [_row(n, "GBP") for n in range(30)], retry_failed=False)
        assert report.new == 30 and len(_stored(ledger)) == 30
    finally:
        ledger.close()


def test_a_second_sync_appends_its_new_rows_in_chunk_order(tmp_path: Path) -> None:
    ledger = _started(Ledger.open(tmp_path))
    try:
        ledger.sync_rows("b", [_row(n, "GBP") for n in range(0, 200, 2)], retry_failed=False)
        ledger.sync_rows("b", [_row(n, "GBP") for n in range(200)], retry_failed=False)
        stored = _stored(ledger)
        first, second = stored[:100], stored[100:]
        assert [k for _, k, _ in first] == sorted(_key(n) for n in range(0, 200, 2))
        assert [k for _, k, _ in second] == sorted(_key(n) for n in range(1, 200, 2))
        with sqlite3.connect(tmp_path / "ledger.sqlite") as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        ledger.close()


def test_a_chunks_transition_rewrites_a_few_neighbouring_pages_of_rows(tmp_path: Path) -> None:
    frames = _pages_written_by_one_chunks_sending(tmp_path, v6=False)
    # 100 rows at about five a page: some 20 table pages, plus a few index pages
    # (stored in sheet order, about one table page per row: over 100)
    assert frames <= 40, frames
