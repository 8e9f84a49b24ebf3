"""The end of a run reads what the sheet gave each row early, and only the rest at the end.

Whatever happened to the ledger in between, the rows, sums, rows.csv and workbook of
the two-part read are those of one whole read at the end (`read_batch` without the
early part): a row changed since the early read is read whole again.
"""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batcher.execute.run import read_batch
from batcher.ledger.store import Ledger
from batcher.reporting import early_rows
from batcher.reporting.early_rows import combine, read_early
from batcher.reporting.outputs import (
    RowsCsvDraft,
    line_of_parts,
    row_line,
    static_line_parts,
    write_rows_csv,
)
from batcher.reporting.reports import write_batch_report
from batcher.reporting.row_facts import RowFacts
from tests.test_reconcile import row
from tests.test_report_pages import BALANCES, SPECS, workbook_values
from tests.test_reports import build


def _facts(f: RowFacts) -> dict[str, Any]:
    found = dict(vars(f))
    found["totals"], found["failures"] = vars(f.totals), vars(f.failures)
    return found


def end_of_run(ledger: Ledger, out: Path, early: early_rows.EarlyRows | None) -> dict[str, Any]:
    """What the end of a run makes of the ledger: rows, sums, rows.csv, the workbook."""
    rows, facts, draft = read_batch(ledger, "nightly", out, early)
    draft.commit(out / "rows.csv", rows.in_sheet, list(facts.sheet_passthrough))
    records = list(rows)
    report = write_batch_report(ledger, "nightly", None, out / "report", rows=rows, facts=facts)
    return {
        "records": records,
        "in_sheet": rows.in_sheet_count,
        "keys": list(rows.keys),
        "facts": _facts(facts),
        "rows.csv": (out / "rows.csv").read_bytes(),
        "workbook": workbook_values(report.workbook),
    }


def _vary(db: Any) -> None:
    """Every kind of row an end reads: skipped elsewhere, held, conflicting, an earlier
    sheet's order, a row that left the sheet unordered, pass-through cells that need
    quoting or look like formulas, and a column only a later row has."""
    db.execute(
        "UPDATE rows SET state = 'skipped', error_code = NULL, error_message = NULL"
        " WHERE source_row = 12"
    )
    db.execute(
        "UPDATE rows SET state = 'held', error_code = 'possible_duplicate' WHERE source_row = 13"
    )
    db.execute("UPDATE rows SET conflict = 'amount changed' WHERE source_row = 14")
    db.execute("UPDATE rows SET in_sheet = 0 WHERE source_row IN (15, 16)")
    db.execute("UPDATE rows SET order_id = NULL WHERE source_row = 16")  # not shown at all
    db.execute(
        "UPDATE rows SET passthrough = ? WHERE source_row = 17",
        (json.dumps({"Cost centre": 'a,"b"\r\nc'}),),
    )
    db.execute("UPDATE rows SET error_message = ? WHERE source_row = 18", ("=cmd|' /C calc'!A0",))


@pytest.mark.parametrize("late_column", [False, True], ids=["same columns", "a later column"])
def test_the_end_read_in_two_parts_is_the_end_read_whole(tmp_path: Path, late_column: bool) -> None:
    ledger, _ = build(tmp_path, SPECS, balances=BALANCES)
    try:
        _vary(ledger._db)
        if late_column:
            ledger._db.execute(
                "UPDATE rows SET passthrough = ? WHERE source_row = 20",
                (json.dumps({"Cost centre": "CC-2", "Team": "=1+1"}),),
            )
        whole = end_of_run(ledger, tmp_path / "whole", None)
        early = read_early(ledger.location, "nightly")
        assert early is not None
        two_part = end_of_run(ledger, tmp_path / "early", early)
    finally:
        ledger.close()
    assert two_part == whole
    assert len(whole["records"]) == len(SPECS) - 1  # the unordered row that left the sheet
    assert any(r.state == "skipped" and r.error_message for r in whole["records"])


def test_a_row_changed_after_the_early_read_is_read_as_the_ledger_holds_it(
    tmp_path: Path,
) -> None:
    """The early read is taken while the run goes on: rows settle after it, and (though
    a run never does) a row's sheet values may change. The end shows every row as the
    ledger holds it then; a row whose sheet values changed is read whole."""
    ledger, _ = build(tmp_path, SPECS, balances=BALANCES)
    try:
        db = ledger._db
        _vary(db)
        db.execute(
            "UPDATE rows SET state = 'accepted', order_id = NULL, transaction_id = NULL,"
            " cost = NULL WHERE source_row IN (21, 22, 23)"
        )
        early = read_early(ledger.location, "nightly")
        assert early is not None
        # settled after the early read: what sending and settling write
        db.execute(
            "UPDATE rows SET state = 'succeeded', order_id = 'late-' || source_row,"
            " transaction_id = 't', cost = '12.19', updated_at = '2026-03-02T00:00:00.000Z'"
            " WHERE source_row IN (21, 22)"
        )
        db.execute(
            "UPDATE rows SET state = 'failed', error_code = 'refused', error_message = '-1'"
            " WHERE source_row = 23"
        )
        # and what only a sheet sync writes
        db.execute(
            "UPDATE rows SET content_hash = 'new', fields = ?, face_value = '99.00'"
            " WHERE source_row = 24",
            (json.dumps({"recipient_email": "new@example.com", "amount": "99.00"}),),
        )
        db.execute(
            "UPDATE rows SET passthrough = ? WHERE source_row = 25",
            (json.dumps({"Cost centre": "CC-new"}),),
        )
        db.execute("UPDATE rows SET source_row = 99 WHERE source_row = 26")
        db.execute("UPDATE rows SET in_sheet = 1 WHERE source_row = 16")  # back in the sheet
        whole = end_of_run(ledger, tmp_path / "whole", None)
        two_part = end_of_run(ledger, tmp_path / "early", early)
        again = read_early(ledger.location, "nightly")
        assert again is not None
        assert combine(ledger, "nightly", again).read_whole == 0
        changed = read_early(ledger.location, "nightly")
        assert changed is not None
        db.execute("UPDATE rows SET content_hash = 'newer' WHERE source_row = 24")
        assert combine(ledger, "nightly", changed).read_whole == 1
    finally:
        ledger.close()
    assert two_part == whole
    shown = {r.source_row: r for r in whole["records"]}
    assert shown[22].order_id == "late-22" and shown[23].state == "failed"
    assert shown[24].fields["recipient_email"] == "new@example.com"
    assert shown[25].passthrough == {"Cost centre": "CC-new"} and 99 in shown and 16 in shown
    assert b"late-21" in whole["rows.csv"] and b"CC-new" in whole["rows.csv"]


def test_an_early_read_is_taken_once(tmp_path: Path) -> None:
    ledger, _ = build(tmp_path, SPECS[:5], balances=BALANCES)
    try:
        early = read_early(ledger.location, "nightly")
        assert early is not None
        combine(ledger, "nightly", early)
        with pytest.raises(RuntimeError):
            combine(ledger, "nightly", early)  # its records are finished: never twice
    finally:
        ledger.close()


def test_the_early_read_holds_at_most_its_limit_and_stops_when_cancelled(
    tmp_path: Path,
) -> None:
    ledger, _ = build(tmp_path, SPECS, balances=BALANCES)
    try:
        assert read_early(ledger.location, "nightly", limit=len(SPECS) - 2) is None
        assert read_early(ledger.location, "nightly", cancelled=lambda: True) is None
        assert read_early(ledger.location, "nightly", limit=len(SPECS)) is not None
    finally:
        ledger.close()


# Cells as a hostile sheet or provider may give them: quoting, line breaks, formulas.
_TEXT = st.text(
    st.sampled_from(
        ["a", "1", ",", '"', "\r", "\n", " ", "=", "+", "-", "@", "\t", "é", "\x00", "＝"]
    ),
    max_size=6,
)
_MAYBE = st.none() | _TEXT


@st.composite
def _rows(draw: Any) -> list[Any]:
    headers = draw(st.lists(_TEXT, max_size=3, unique=True))
    found = []
    for n in range(draw(st.integers(1, 5))):
        cells = {h: draw(_TEXT) for h in headers if draw(st.booleans())}
        found.append(
            row(
                n,
                reference=draw(_MAYBE),
                state=draw(st.sampled_from(["succeeded", "failed", "pending", "skipped"])),
                fields={
                    "recipient_email": draw(_TEXT),
                    "recipient_name": draw(_TEXT),
                    "product_code": draw(_TEXT),
                    **({"amount": draw(_TEXT)} if draw(st.booleans()) else {}),
                },
                passthrough=cells,
                chunk_key=draw(_MAYBE),
                order_id=draw(_MAYBE),
                error_code=draw(_MAYBE),
                error_message=draw(_MAYBE),
                conflict=draw(_MAYBE),
                cost=draw(st.none() | st.sampled_from([Decimal("-1.5"), Decimal("12.19")])),
                cost_currency=draw(_MAYBE),
            )
        )
    return found


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_rows())
def test_a_line_from_its_sheet_parts_is_the_rows_line(rows: list[Any]) -> None:
    headers = list(rows[0].passthrough)
    for each in rows:
        parts = static_line_parts(
            each.source_row, each.row_key, each.reference, each.fields, each.face_value,
            each.currency, each.passthrough, headers,
        )  # fmt: skip
        assert line_of_parts(each, parts) == row_line(each, headers)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_rows())
def test_rows_csv_joined_without_the_writer_is_the_writers(rows: list[Any]) -> None:
    """A line whose cells need no quoting is joined by commas, the others written by
    `csv.writer`: rows.csv is byte for byte what the writer alone writes."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        draft = RowsCsvDraft(out)
        headers = list(rows[0].passthrough)
        for n, each in enumerate(rows):
            parts = static_line_parts(
                each.source_row, each.row_key, each.reference, each.fields, each.face_value,
                each.currency, each.passthrough, headers,
            )  # fmt: skip
            draft.add(each, parts if n % 2 else None)
        extra = list(dict.fromkeys(h for r in rows for h in r.passthrough))
        drafted = draft.commit(out / "drafted.csv", lambda: iter(rows), extra)
        whole = write_rows_csv(out / "whole.csv", rows, extra)
        assert drafted.read_bytes() == whole.read_bytes()


def test_many_lines_are_written_a_few_thousand_at_a_time(tmp_path: Path) -> None:
    rows = [row(n, error_message="a,b" if n % 7 == 0 else None) for n in range(5_000)]
    draft = RowsCsvDraft(tmp_path)
    for each in rows:
        draft.add(each)
    drafted = draft.commit(tmp_path / "drafted.csv", lambda: iter(rows), ["Cost centre"])
    whole = write_rows_csv(tmp_path / "whole.csv", rows, ["Cost centre"])
    assert drafted.read_bytes() == whole.read_bytes()
    lines = list(csv.reader(io.StringIO(drafted.read_text(encoding="utf-8"))))
    assert len(lines) == 5_001 and lines[8][9] == "a,b"


def test_the_early_read_gives_way_while_the_run_goes_on_not_once_it_is_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beside the run's polls it sleeps a little every slice (a poll wanting the
    interpreter would otherwise wait up to the switch interval); once the end waits
    for it, it never sleeps; once abandoned, it stops."""
    from batcher.execute import run as run_module

    ledger, _ = build(tmp_path, SPECS[:5], balances=BALANCES)
    sleeps: list[float] = []
    try:
        early = run_module._EarlyRead(ledger, "nightly")
        monkeypatch.setattr(run_module.time, "sleep", sleeps.append)
        assert early._between() is False and sleeps == [run_module.GIVE_WAY]
        early.allowed = True
        early.start()
        assert early.take() is not None
        slept = len(sleeps)
        assert early._between() is False and len(sleeps) == slept
        early.abandon()
        assert early._between() is True
    finally:
        monkeypatch.undo()
        ledger.close()
    assert set(sleeps) == {run_module.GIVE_WAY}


def test_a_row_gone_before_it_is_read_whole_leaves_its_key_and_count_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row read whole that is gone by then (a run never deletes one) is left out of
    the records, and of the keys and the in-sheet count that go with them."""
    ledger, _ = build(tmp_path, SPECS, balances=BALANCES)
    try:
        db = ledger._db
        early = read_early(ledger.location, "nightly")
        assert early is not None
        db.execute("UPDATE rows SET content_hash = 'changed' WHERE source_row IN (21, 22)")
        gone = db.execute("SELECT row_key FROM rows WHERE source_row = 21").fetchone()[0]
        real = ledger.rows_by_key

        def without_gone(batch: str, keys: Any) -> Any:
            found = real(batch, keys)
            found.pop(gone, None)
            return found

        monkeypatch.setattr(ledger, "rows_by_key", without_gone)
        end = combine(ledger, "nightly", early)
    finally:
        ledger.close()
    assert end.read_whole == 2
    assert gone not in end.keys
    assert len(end.keys) == len(end.records) == len(end.parts)
    assert end.in_sheet == sum(1 for r in end.records if r.in_sheet)
