"""The end of a run and the reports read the batch's rows a page at a time.

At a million rows every row held at once is over 1.5 GB: the report must come out
the same whether the batch is one page or many, and never read the batch whole.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from openpyxl import load_workbook

from batcher.ledger.store import Ledger, RowRecord
from batcher.reporting import row_source
from batcher.reporting.outputs import RowsCsvDraft, write_rows_csv
from batcher.reporting.reports import FAILED_ROWS_NAME, write_batch_report
from tests.test_reconcile import row
from tests.test_reports import MIXED, Spec, build

SPECS = [
    *MIXED,
    *(Spec(n, face="12.50", cost="12.19", cost_centre=f"CC-{n % 3}") for n in range(11, 41)),
    Spec(41, state="failed", product="TESCO_UK", face="20.00", cost="19.20"),
    Spec(42, state="funds", face="30.00", cost="29.25"),
    Spec(43, state="unknown", face="15.00", cost="14.63"),
    Spec(44, state="invalid", product="NOPE_UK"),
]
BALANCES = {"GBP": ("1000.00", "513.87"), "EUR": ("500.00", "470.75"), "JPY": ("9000", "4125")}


def workbook_values(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every sheet's cells, but the moment the report was generated."""
    book = load_workbook(path)
    return {
        sheet.title: [
            row
            for row in sheet.iter_rows(values_only=True)
            if row and row[0] != "Report generated (UTC)"
        ]
        for sheet in book.worksheets
    }


def report(ledger: Ledger, provider: Any, out: Path) -> tuple[dict[str, Any], bytes, str]:
    result = write_batch_report(ledger, "nightly", provider, out)
    rec = result.reconciliation
    return (
        workbook_values(result.workbook),
        (out / "nightly" / FAILED_ROWS_NAME).read_bytes(),
        (f"{rec.verdict}: {rec.reason}"),
    )


class Paging:
    """Records the pages the ledger hands out, and refuses to hand out the whole batch."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.pages: list[int] = []
        real = Ledger.rows_in_pages

        def rows_in_pages(
            ledger: Ledger, batch: str, keys: Sequence[str], page: int = 5_000
        ) -> Iterator[list[RowRecord]]:
            for rows in real(ledger, batch, keys, page):
                self.pages.append(len(rows))
                yield rows

        def rows(*args: Any, **kwargs: Any) -> list[RowRecord]:
            raise AssertionError("the report read every row of the batch at once")

        monkeypatch.setattr(Ledger, "rows_in_pages", rows_in_pages)
        monkeypatch.setattr(Ledger, "rows", rows)


@pytest.mark.parametrize("page", [1, 7])
def test_a_report_in_pages_is_the_report_in_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, page: int
) -> None:
    ledger, provider = build(tmp_path, SPECS, balances=BALANCES)
    try:
        whole = report(ledger, provider, tmp_path / "whole")
        paging = Paging(monkeypatch)
        monkeypatch.setattr(row_source, "ROW_PAGE", page)
        paged = report(ledger, provider, tmp_path / "paged")
    finally:
        ledger.close()
    assert paged == whole
    assert max(paging.pages) <= page and sum(paging.pages) >= len(SPECS)
    orders = whole[0]["Orders"]
    assert len(orders) == 1 + len(SPECS), "every row on the Orders sheet, once"
    assert len(whole[1].splitlines()) == 1 + 4, "the two invalid and two refused rows to fix"


def test_the_orders_sheet_reads_again_only_the_rows_the_wallet_lines_do_not_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Matching the listings keeps every matched order's row in its wallet line; the
    Orders sheet takes those from there and reads only the others from the ledger
    again (a 100k-row report read every row twice), and comes out the same."""
    ledger, provider = build(tmp_path, SPECS, balances=BALANCES)
    try:
        whole = report(ledger, provider, tmp_path / "whole")
        paging = Paging(monkeypatch)
        monkeypatch.setattr(row_source, "ROW_PAGE", 7)
        paged = report(ledger, provider, tmp_path / "paged")
    finally:
        ledger.close()
    assert paged == whole
    matched = sum(1 for line in whole[0]["Orders"][1:] if line[-4] == "OK")
    assert matched >= 30
    # One whole read to match and sum; then only rows not matched: for the Orders
    # sheet, its width sample and the failures' five readers (two sheets' samples and
    # lines, failed_rows.csv). Reading every row again for the Orders sheet and its
    # sample made it 172.
    assert len(SPECS) <= sum(paging.pages) <= len(SPECS) + 7 * (len(SPECS) - matched)


def test_a_report_without_the_provider_in_pages_is_the_report_in_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger, _ = build(tmp_path, SPECS, balances=BALANCES)
    try:
        whole = report(ledger, None, tmp_path / "whole")
        Paging(monkeypatch)
        monkeypatch.setattr(row_source, "ROW_PAGE", 5)
        paged = report(ledger, None, tmp_path / "paged")
    finally:
        ledger.close()
    assert paged == whole


@pytest.mark.parametrize(
    "passthrough",
    [
        [{"Cost centre": "CC-1", "Team": "a"}, {"Cost centre": "=1+2", "Team": "b"}, {}],
        [{"Cost centre": "CC-1"}, {"Team": "late"}, {"Cost centre": "CC-3", "Team": "x"}],
    ],
    ids=["the first row's columns", "a column only a later row has"],
)
def test_rows_csv_drafted_as_the_rows_go_by_is_rows_csv(
    tmp_path: Path, passthrough: list[dict[str, str]]
) -> None:
    rows = [
        row(n, passthrough=cells, state=state)
        for n, (cells, state) in enumerate(
            zip(passthrough, ["succeeded", "failed", "pending"], strict=True)
        )
    ]
    gone = row(9, in_sheet=False)  # an earlier sheet's order: not in rows.csv
    draft = RowsCsvDraft(tmp_path)
    for each in [*rows, gone]:
        draft.add(each)
    extra = list(dict.fromkeys(h for r in rows for h in r.passthrough))
    drafted = draft.commit(tmp_path / "drafted.csv", lambda: iter(rows), extra)
    whole = write_rows_csv(tmp_path / "whole.csv", rows)
    assert drafted.read_bytes() == whole.read_bytes()
    assert len(drafted.read_text(encoding="utf-8").splitlines()) == 1 + len(rows)


def test_rows_summed_light_sum_as_the_whole_rows_do(tmp_path: Path) -> None:
    """The first read of a batch's rows only sums them (`RowFacts`): rows settled without
    a question (succeeded, unchanged since sent) come as `SettledRow`s, read from a few
    columns, the rest whole. The sums, counts, headers, failures and unsettled rows are
    those of the whole rows, earlier sheets' orders and a changed row included."""
    from batcher.ledger.records import SettledRow
    from batcher.reporting.row_facts import RowFacts

    ledger, _ = build(tmp_path, SPECS, balances=BALANCES)
    try:
        db = ledger._db
        db.execute("UPDATE rows SET in_sheet = 0 WHERE source_row IN (12, 13)")  # earlier sheet
        db.execute("UPDATE rows SET conflict = 'amount changed' WHERE source_row = 14")
        # succeeded, yet no order id: not an order, but its currency is named
        db.execute("UPDATE rows SET order_id = NULL, currency = 'CHF' WHERE source_row = 16")
        db.execute(
            'UPDATE rows SET passthrough = \'{"Team": "x", "Cost centre": "CC-9"}\''
            " WHERE source_row = 15"
        )
        rows = row_source.BatchRows.from_ledger(ledger, "nightly", page=6)
        light = list(rows.for_sums())
        light_facts, whole_facts = RowFacts.of(rows), RowFacts.of(list(rows))
    finally:
        ledger.close()
    settled = [r for r in light if isinstance(r, SettledRow)]
    assert 20 <= len(settled) < len(light) == len(SPECS)
    assert [r.row_key for r in light] == rows.keys
    assert any(not r.in_sheet for r in settled)

    def facts(f: RowFacts) -> dict[str, Any]:
        found = dict(vars(f))
        found["totals"], found["failures"] = vars(f.totals), vars(f.failures)
        return found

    assert facts(light_facts) == facts(whole_facts)
    assert whole_facts.conflicts == 1 and whole_facts.earlier_orders == 2
    assert "CHF" in whole_facts.by_currency and "CHF" in whole_facts.style_currencies
    assert list(whole_facts.passthrough_seen) == ["Cost centre", "Team"]


def ledger_of_odd_rows(tmp_path: Path) -> Ledger:
    """The SPECS batch with the rows a line shows differently: two from an earlier sheet,
    one with a conflict, one skipped (its reference ordered in another batch)."""
    ledger, _ = build(tmp_path, SPECS, balances=BALANCES)
    db = ledger._db
    db.execute("UPDATE rows SET in_sheet = 0 WHERE source_row IN (12, 13)")
    db.execute("UPDATE rows SET conflict = 'amount changed' WHERE source_row = 14")
    db.execute("UPDATE rows SET state = 'skipped', reference = 'R-15' WHERE source_row = 15")
    return ledger


def test_lines_read_undecoded_are_the_records_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Orders sheet's lines are read from the ledger without a whole record per row
    (`BatchRows.for_lines`): each line's values are those of the row's record, in report
    order, a skipped row explained, nasty text, earlier sheets and conflicts included."""
    from batcher.ledger.queries import ROW_COLUMNS, raw_line_values, row_record
    from batcher.ledger.records import line_values

    ledger = ledger_of_odd_rows(tmp_path)
    try:
        db = ledger._db
        raws = db.execute(f"SELECT {ROW_COLUMNS} FROM rows WHERE batch = ?", ("nightly",))
        pairs = [(raw_line_values(r), line_values(row_record(r))) for r in raws]
        monkeypatch.setattr(row_source, "RAW_PAGE", 4)
        rows = row_source.BatchRows.from_ledger(ledger, "nightly", page=6)
        read = list(rows.for_lines())
        expected = [line_values(r) for r in rows]
    finally:
        ledger.close()
    assert len(pairs) == len(SPECS) and all(raw == whole for raw, whole in pairs)
    assert all(list(map(type, raw)) == list(map(type, whole)) for raw, whole in pairs)
    assert read == expected and len(read) == len(SPECS)
    skipped = next(v for v in read if v[9] == "skipped")
    assert skipped[17] == "already ordered in another batch (its order is not in this ledger)"


def test_light_reads_are_the_whole_reads_on_either_backend(ledger: Ledger) -> None:
    """The sums' light read and the Orders sheet's undecoded read, on SQLite and on
    PostgreSQL: the same facts and line values as whole records give."""
    from batcher.ledger.records import line_values
    from batcher.reporting.row_facts import RowFacts
    from tests.test_ledger import sheet_row

    ledger.sync_rows("b", [sheet_row(f"k{i:02}", i + 2) for i in range(20)], retry_failed=False)
    db = ledger._db
    db.execute(
        "UPDATE rows SET state = 'succeeded', order_id = 'O-' || row_key, cost = '9.75',"
        " succeeded_at = updated_at WHERE batch = ? AND source_row < 15",
        ("b",),
    )
    db.execute("UPDATE rows SET state = 'failed', error_code = 'x' WHERE source_row = 20")
    db.execute("UPDATE rows SET state = 'skipped', reference = 'R-1' WHERE source_row = 21")
    rows = row_source.BatchRows.from_ledger(ledger, "b", page=6)
    whole = list(rows)

    def facts(f: RowFacts) -> dict[str, Any]:
        return {**vars(f), "totals": vars(f.totals), "failures": vars(f.failures)}

    assert facts(RowFacts.of(rows)) == facts(RowFacts.of(whole))
    assert RowFacts.of(rows).ordered == 13
    assert list(rows.for_lines()) == [line_values(r) for r in whole]


def test_report_keys_are_the_sheets_rows_in_sheet_order_then_earlier_orders(
    ledger: Ledger,
) -> None:
    """On SQLite and on PostgreSQL: the rows in the sheet by (source row, key), then the
    rows no longer in it that hold an order, by the same; the others are left out."""
    from tests.test_ledger import sheet_row

    rows = [sheet_row(f"k{i:02}", 40 - i) for i in range(12)]  # keys against sheet order
    ledger.sync_rows("b", rows, retry_failed=False)
    db = ledger._db
    db.execute("UPDATE rows SET source_row = 7 WHERE row_key IN ('k03', 'k09')")  # a tie
    db.execute("UPDATE rows SET in_sheet = 0 WHERE row_key IN ('k01', 'k02', 'k05', 'k06')")
    db.execute("UPDATE rows SET order_id = 'O-' || row_key WHERE row_key IN ('k02', 'k05')")
    db.execute("UPDATE rows SET order_id = '' WHERE row_key = 'k06'")  # no order after all
    keys, in_sheet = ledger.report_keys("b")
    assert in_sheet == 8
    assert keys == [
        "k03", "k09", "k11", "k10", "k08", "k07", "k04", "k00",  # sheet order, ties by key
        "k05", "k02",  # earlier orders, by their sheet rows
    ]  # fmt: skip
