"""When a rerun may skip the sync and keep the last report (execute/unchanged.py): only
when the report's stamp proves the ledger and the sheet are as that run left them."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import pytest

from batcher.execute.unchanged import sheet_already_synced, stamp_report, unchanged_report
from batcher.ledger.store import Ledger, RowOutcome, SheetRow

BATCH = "b"
SHEET = "fingerprint-of-the-sheet"


def _row(key: str, n: int) -> SheetRow:
    return SheetRow(
        row_key=key,
        source_row=n,
        reference=f"R-{key}",
        content_hash=f"h-{key}",
        fields={"recipient_email": f"{key}@x.com"},
        passthrough={},
        currency="GBP",
        face_value=Decimal("10"),
        est_cost=None,
        valid=True,
    )


def _finished(led: Ledger) -> Ledger:
    led.ensure_batch(BATCH, provider="p", account_id="a", source_path="s", source_sha256="0")
    led.sync_rows(BATCH, [_row("k1", 2), _row("k2", 3)], retry_failed=False)
    led.save_plan(BATCH, [("c1", "GBP", 1, ["k1", "k2"], b"{}")])
    led.mark_sending(BATCH, "c1")
    outcomes = [RowOutcome(k, "succeeded", order_id=f"o-{k}") for k in ("k1", "k2")]
    led.settle_chunk(BATCH, "c1", "succeeded", outcomes)
    return led


@pytest.fixture
def done(tmp_path: Path) -> tuple[Ledger, Path]:
    """A batch whose two rows succeeded, with the report the run wrote and stamped."""
    led = _finished(Ledger.open(tmp_path / "state"))
    reports = tmp_path / "reports"
    folder = reports / BATCH
    folder.mkdir(parents=True)
    for name in ("reconciliation.xlsx", "failed_rows.csv", "rows.csv"):
        (folder / name).write_text("x")
    summary = {
        "run_id": "run-1",
        "reconciliation": {"verdict": "RECONCILED", "workbook": "w"},
        "totals_by_currency": {},
        "paid_orders": {},
        "conflicts": 0,
    }
    stamp = led.change_stamp(BATCH)
    assert stamp is not None
    stamp_report(folder, stamp, summary, SHEET)
    return led, reports


def test_the_same_sheet_on_an_untouched_ledger_needs_no_sync(done: tuple[Ledger, Path]) -> None:
    led, reports = done
    assert sheet_already_synced(led, BATCH, reports, SHEET, all_valid=True)
    kept = unchanged_report(led, BATCH, reports)
    assert kept is not None and kept.by_state["succeeded"] == 2


def test_another_sheet_or_an_invalid_row_is_synced(done: tuple[Ledger, Path]) -> None:
    led, reports = done
    assert not sheet_already_synced(led, BATCH, reports, "another sheet", all_valid=True)
    assert not sheet_already_synced(led, BATCH, reports, SHEET, all_valid=False)


def test_any_ledger_change_since_the_report_is_noticed(done: tuple[Ledger, Path]) -> None:
    led, reports = done
    led.sync_rows(BATCH, [_row("k1", 2)], retry_failed=False)  # k2 left the sheet
    assert unchanged_report(led, BATCH, reports) is None
    assert not sheet_already_synced(led, BATCH, reports, SHEET, all_valid=True)


def test_a_run_starting_and_ending_is_no_change(done: tuple[Ledger, Path]) -> None:
    led, reports = done
    run = led.start_run(BATCH, "run")
    led.finish_run(run, BATCH, 0, {})
    assert unchanged_report(led, BATCH, reports) is not None


def test_unsettled_rows_or_another_verdict_mean_a_new_report(done: tuple[Ledger, Path]) -> None:
    led, reports = done
    stamp = led.change_stamp(BATCH)
    assert stamp is not None
    summary = {
        "run_id": "run-2",
        "reconciliation": {"verdict": "IN PROGRESS"},
        "totals_by_currency": {},
        "paid_orders": {},
        "conflicts": 0,
    }
    stamp_report(reports / BATCH, stamp, summary, SHEET)
    assert unchanged_report(led, BATCH, reports) is None
    (reports / BATCH / "report_stamp.json").unlink()
    assert unchanged_report(led, BATCH, reports) is None


def test_a_replaced_ledger_is_a_change(done: tuple[Ledger, Path], tmp_path: Path) -> None:
    """The same history in a new ledger (same event ids) is told apart by its batch record."""
    led, reports = done
    time.sleep(0.002)  # the ledger's clock has millisecond resolution
    other = _finished(Ledger.open(tmp_path / "other-state"))
    assert other.count_by_state(BATCH) == led.count_by_state(BATCH)
    assert unchanged_report(other, BATCH, reports) is None


def test_new_webhook_evidence_means_a_new_report(done: tuple[Ledger, Path]) -> None:
    """An orphan event shows on the Orphans sheet: a new one, or one delivered again
    (its delivery count is shown), must not leave a kept report without it."""
    from batcher.ledger.events import WebhookEvents

    led, reports = done
    evidence = WebhookEvents(led.location)
    try:
        record = {
            "event": "order.succeeded", "request_id": "req-ghost", "status": "succeeded",
            "terminal": True, "order_ids": ["ord-ghost"], "payload": "{}",
        }  # fmt: skip
        evidence.record("p", "delivery-1", **record)  # type: ignore[arg-type]
        assert unchanged_report(led, BATCH, reports) is None
        stamp = led.change_stamp(BATCH)
        assert stamp is not None
        summary = {
            "run_id": "run-2", "reconciliation": {"verdict": "RECONCILED", "workbook": "w"},
            "totals_by_currency": {}, "paid_orders": {}, "conflicts": 0,
        }  # fmt: skip
        stamp_report(reports / BATCH, stamp, summary, SHEET)
        assert unchanged_report(led, BATCH, reports) is not None
        evidence.record("p", "delivery-1", **record)  # type: ignore[arg-type]
        assert unchanged_report(led, BATCH, reports) is None
    finally:
        evidence.close()
