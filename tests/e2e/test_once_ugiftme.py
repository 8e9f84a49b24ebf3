"""Exactly once between runs, against the UGiftMe sandbox over real HTTP: a lost ledger
with an edited sheet, one sheet under two batch names, edits of ordered rows without a
reference, and a damaged ledger. Each test names the failure it guards against."""

from __future__ import annotations

import csv
import shutil
import sqlite3
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import openpyxl
import pytest

from batcher.core.errors import ExitCode
from batcher.sandbox.server import running_sandbox
from tests.e2e.runkit import (
    batcher,
    cli_env,
    make_rows,
    orders_by_email,
    read_rows_csv,
    read_summary,
    sandbox_orders,
    start_batcher,
    stop_once_said,
    wait_for,
    write_sheet,
)

FAST = {"rate_limit": 100_000, "async_delay_seconds": 0.05}


def args_for(sheet: Path, reports: Path, *extra: str) -> list[str]:
    return ["run", str(sheet), "--yes", "--report-dir", str(reports), "--chunk-size", "5", *extra]


def without_reference(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [dict(r, Reference="") for r in rows]


def assert_once(sandbox: object, rows: list[dict[str, str]]) -> None:
    by_email = orders_by_email(sandbox)
    doubled = {e: n for e, n in by_email.items() if n > 1}
    assert not doubled, f"ordered twice: {doubled}"
    assert set(by_email) == {r["Email"] for r in rows}, "missing or foreign orders"


def test_lost_ledger_and_an_added_row_order_nothing_twice(tmp_path: Path) -> None:
    """Failure 2: one added row shifted every chunk, every key was new (208 duplicates)."""
    for with_reference in (True, False):
        with running_sandbox("ugiftme", **FAST) as sandbox:
            rows = make_rows(40, seed=3)
            if not with_reference:
                rows = without_reference(rows)
            sheet = write_sheet(tmp_path / "edited.csv", rows)
            state, reports = tmp_path / f"state-{with_reference}", tmp_path / f"r-{with_reference}"
            env = cli_env(sandbox, state)
            first = batcher(args_for(sheet, reports), env)
            assert first.returncode == 0, first.stderr
            assert len(sandbox_orders(sandbox)) == 40

            shutil.rmtree(state)  # the machine was rebuilt
            extra = make_rows(1, seed=99, prefix="NEW")[0]
            extra["Email"] = "added@example.com"
            if not with_reference:
                extra["Reference"] = ""
            edited = [extra, *rows]  # the new row sorts first: every old slice would shift
            write_sheet(sheet, edited)
            # the operator says the ledger is lost: recovery from the provider takes over
            second = batcher([*args_for(sheet, reports), "--ledger-lost"], env)
            assert second.returncode == 0, second.stderr
            assert_once(sandbox, edited)
            assert "recovery:" in second.stderr and "40 already ordered" in second.stderr
            states = Counter(r["state"] for r in read_rows_csv(reports, "edited"))
            assert states == {"succeeded": 41}
            recovery = read_summary(reports, "edited")["recovery"]
            assert recovery.pop("requests") >= 1 and recovery.pop("since")
            assert recovery == {"window_days": 30, "orders_read": 40, "rows_asked": 41,
                                "rows_matched": 40, "rows_held_ambiguous": 0}  # fmt: skip
            third = batcher(args_for(sheet, reports), env)  # the ledger vouches: nobody asked
            assert third.returncode == 0 and read_summary(reports, "edited")["recovery"] is None


def test_lost_ledger_after_a_partial_run_orders_the_rest_once(tmp_path: Path) -> None:
    """Failure 2, partial: a run killed half-way, ledger lost, 60 rows added (62 doubles)."""
    with running_sandbox("ugiftme", rate_limit=15, rate_window_seconds=1,
                         async_delay_seconds=0.05) as sandbox:  # fmt: skip
        rows = make_rows(60, seed=5)
        sheet = write_sheet(tmp_path / "partial.csv", rows)
        state, reports = tmp_path / "state", tmp_path / "r"
        env = cli_env(sandbox, state)
        # 1 request/s: the run takes ~25 s, so a loaded machine's pause between seeing
        # 10 orders and the kill cannot let it finish (at 15/s it did, 1 time in 6)
        proc = start_batcher(args_for(sheet, reports, "--max-rate", "1"), env)
        assert wait_for(lambda: len(sandbox_orders(sandbox)) >= 10, timeout=60)
        proc.kill()
        proc.communicate()
        sent = len(sandbox_orders(sandbox))
        assert 10 <= sent < 60

        shutil.rmtree(state)
        more = make_rows(60, seed=6, prefix="ADD")
        for i, row in enumerate(more):
            row["Email"] = f"added{i}@example.com"
        edited = more[:30] + rows + more[30:]
        write_sheet(sheet, edited)
        for _ in range(4):  # requests still queued when it died may need a moment
            result = batcher([*args_for(sheet, reports), "--ledger-lost"], env)
            if result.returncode == 0:
                break
            time.sleep(1)
        assert result.returncode == 0, result.stderr
        assert_once(sandbox, edited)


def test_same_sheet_under_two_batch_names(tmp_path: Path) -> None:
    """Failure 5: the same sheet as batch A and batch B, at once and one after the other."""
    with running_sandbox("ugiftme", rate_limit=40, rate_window_seconds=1,
                         async_delay_seconds=0.05) as sandbox:  # fmt: skip
        rows = make_rows(30, seed=8)
        sheet = write_sheet(tmp_path / "twice.csv", rows)
        env = cli_env(sandbox, tmp_path / "state")
        reports = tmp_path / "r"
        # At the same time: exactly one of them may run it.
        a = start_batcher(args_for(sheet, reports, "--batch", "night-a"), env)
        b = start_batcher(args_for(sheet, reports, "--batch", "night-b"), env)
        outs = [p.communicate(timeout=120) for p in (a, b)]
        codes = sorted(p.returncode for p in (a, b))
        assert codes == [0, int(ExitCode.CANNOT_START)], outs
        assert any("already run as batch" in err for _out, err in outs)
        assert_once(sandbox, rows)

        # Afterwards, under a third name: refused, and with the flag nothing is reordered.
        third = batcher(args_for(sheet, reports, "--batch", "night-c"), env)
        assert third.returncode == ExitCode.CANNOT_START and "already run as batch" in third.stderr
        forced = batcher(args_for(sheet, reports, "--batch", "night-c", "--same-sheet-ok"), env)
        assert forced.returncode == 0, forced.stderr
        assert {r["state"] for r in read_rows_csv(reports, "night-c")} == {"skipped"}
        assert_once(sandbox, rows)


def test_references_in_flight_in_another_batch_are_held(tmp_path: Path) -> None:
    """Failure 5: references still in flight in batch A were ordered again by batch B."""
    with running_sandbox("ugiftme", rate_limit=100_000, async_delay_seconds=0.05) as sandbox:
        rows = make_rows(40, seed=9)
        sheet_a = write_sheet(tmp_path / "a.csv", rows)
        env = cli_env(sandbox, tmp_path / "state")
        reports = tmp_path / "r"
        # Slow enough (8 chunks and their polls at 1 request/s) that A is still in flight
        # while B runs twice, even when a loaded machine takes seconds to start a process.
        a = start_batcher(args_for(sheet_a, reports, "--batch", "night-a", "--max-rate", "1"), env)
        assert wait_for(lambda: len(sandbox_orders(sandbox)) >= 5, timeout=60)
        extra = make_rows(1, seed=77, prefix="B")[0]
        extra["Email"] = "only-in-b@example.com"
        sheet_b = write_sheet(tmp_path / "b.csv", [*rows, extra])  # other bytes, same refs
        b = batcher(args_for(sheet_b, reports, "--batch", "night-b"), env)
        assert b.returncode == ExitCode.HELD, b.stderr  # held, with their reason
        lines = read_rows_csv(reports, "night-b")
        held = [r for r in lines if r["state"] == "held"]
        assert held and all("night-a" in r["error_message"] for r in held)
        assert read_summary(reports, "night-b")["by_state"]["held"] == len(held)
        released = batcher(args_for(sheet_b, reports, "--batch", "night-b", "--release-held",
                                    "all"), env)  # fmt: skip
        assert released.returncode in (0, ExitCode.HELD), released.stderr
        assert max(orders_by_email(sandbox).values()) == 1, "a person cannot release these"
        skipped = [r for r in lines if r["state"] == "skipped"]  # already done in night-a
        assert len(held) + len(skipped) == 40
        a.communicate(timeout=120)
        assert a.returncode == 0
        again = batcher(args_for(sheet_b, reports, "--batch", "night-b"), env)
        assert again.returncode == 0, again.stderr
        states = Counter(r["state"] for r in read_rows_csv(reports, "night-b"))
        assert states == {"skipped": 40, "succeeded": 1}
        assert_once(sandbox, [*rows, extra])


def test_editing_an_ordered_row_without_reference_is_held(tmp_path: Path) -> None:
    """Failure 6: without a Reference, editing an ordered row ordered a second card."""
    with running_sandbox("ugiftme", **FAST) as sandbox:
        rows = without_reference(make_rows(6, seed=11))
        sheet = write_sheet(tmp_path / "edits.csv", rows)
        env = cli_env(sandbox, tmp_path / "state")
        reports = tmp_path / "r"
        assert batcher(args_for(sheet, reports), env).returncode == 0
        edited = [dict(r) for r in rows]
        edited[2]["Amount"] = "42.42"  # amount edited
        edited[4]["Name"] = "Someone Else"  # name edited
        write_sheet(sheet, edited)
        result = batcher(args_for(sheet, reports), env)
        assert result.returncode == ExitCode.HELD, result.stderr  # held, with the way out
        assert "held" in result.stderr and "--release-held" in result.stderr
        lines = {r["recipient_email"]: r for r in read_rows_csv(reports, "edits")}
        for index in (2, 4):
            line = lines[rows[index]["Email"]]
            assert line["state"] == "held" and line["error_code"] == "held_possible_duplicate"
            assert f"--release-held {line['source_row']}" in line["error_message"]
        summary = read_summary(reports, "edits")
        assert summary["by_state"]["held"] == 2 and summary["exit_code"] == ExitCode.HELD
        book = openpyxl.load_workbook(reports / "edits" / "reconciliation.xlsx", read_only=True)
        failures = [
            " ".join(str(c) for c in r) for r in book["Failures"].iter_rows(values_only=True)
        ]
        assert (
            sum("--release-held" in line and "held, never sent" in line for line in failures) == 2
        )
        assert not any(r["Email"] in (rows[2]["Email"], rows[4]["Email"])
                       for r in _failed_rows(reports, "edits")), "never refed: it may be ordered"  # fmt: skip
        assert max(orders_by_email(sandbox).values()) == 1 and len(sandbox_orders(sandbox)) == 6
        retried = batcher(args_for(sheet, reports, "--retry-failed"), env)
        assert retried.returncode == ExitCode.HELD, retried.stderr  # not a failure to retry
        assert len(sandbox_orders(sandbox)) == 6
        one = lines[rows[2]["Email"]]["source_row"]
        confirmed = batcher(args_for(sheet, reports, "--release-held", one), env)
        assert confirmed.returncode == ExitCode.HELD, confirmed.stderr  # only the row named
        assert len(sandbox_orders(sandbox)) == 7
        confirmed = batcher(args_for(sheet, reports, "--release-held", "all"), env)
        assert confirmed.returncode == 0, confirmed.stderr
        assert len(sandbox_orders(sandbox)) == 8  # the operator asked for the second cards


def test_damaged_ledger_is_named_and_nothing_is_sent(tmp_path: Path) -> None:
    """Failure 7: a corrupt ledger said 'the ledger is intact, rerun'; a 0-byte one was new."""
    with running_sandbox("ugiftme", **FAST) as sandbox:
        rows = make_rows(10, seed=12)
        sheet = write_sheet(tmp_path / "damage.csv", rows)
        state, reports = tmp_path / "state", tmp_path / "r"
        env = cli_env(sandbox, state)
        assert batcher(args_for(sheet, reports), env).returncode == 0
        ledger = state / "ledger.sqlite"
        db = sqlite3.connect(ledger)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        backup = batcher(["ledger", "backup", str(tmp_path / "backup.sqlite")], env)
        assert backup.returncode == 0, backup.stderr

        data = bytearray(ledger.read_bytes())
        for offset in range(4096, len(data), 4096):  # scribble over every page header
            data[offset : offset + 8] = b"\xde\xad\xbe\xef" * 2
        ledger.write_bytes(bytes(data))
        damaged = batcher(args_for(sheet, reports), env)
        assert damaged.returncode != 0
        assert f"the ledger at {ledger} is damaged" in damaged.stderr
        assert "restore it from backup" in damaged.stderr and "intact" not in damaged.stderr
        assert len(sandbox_orders(sandbox)) == 10

        ledger.write_bytes(b"")  # 0 bytes: a new ledger, so the provider is asked first
        for suffix in ("-wal", "-shm"):
            Path(str(ledger) + suffix).unlink(missing_ok=True)
        empty = batcher([*args_for(sheet, reports), "--ledger-lost"], env)
        assert empty.returncode == 0, empty.stderr
        assert "10 already ordered" in empty.stderr
        assert_once(sandbox, rows)

        shutil.copy(tmp_path / "backup.sqlite", ledger)  # restored from the backup
        restored = batcher(args_for(sheet, reports), env)
        assert restored.returncode == 0, restored.stderr
        assert_once(sandbox, rows)


def _failed_rows(reports: Path, batch: str) -> list[dict[str, str]]:
    path = reports / batch / "failed_rows.csv"
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_a_stop_ends_recoverys_wait_for_the_provider(tmp_path: Path) -> None:
    """Recovery of a new batch waits up to 60 s for the provider to finish order
    requests it cannot list yet; Ctrl-C and SIGTERM used to be ignored for all of it."""
    with running_sandbox("ugiftme", rate_limit=100_000, async_delay_seconds=600.0) as sandbox:
        env = cli_env(sandbox, tmp_path / "state")
        reports = tmp_path / "r"
        sheet_a = write_sheet(tmp_path / "a.csv", make_rows(1, seed=41, prefix="A"))
        first = batcher([*args_for(sheet_a, reports), "--deadline", "3"], env)
        assert first.returncode == 3, first.stderr  # its order request is still queued
        rows_b = make_rows(3, seed=42, prefix="B")
        for i, row in enumerate(rows_b):
            row["Email"] = f"b{i}@example.com"
        sheet_b = write_sheet(tmp_path / "b.csv", rows_b)
        proc = start_batcher(args_for(sheet_b, reports), env)
        stderr, took = stop_once_said(proc, "recovery: waiting up to")
        assert took < 5.0, f"took {took:.1f}s to stop"
        assert "stopped on request while waiting for the provider" in stderr
        db = sqlite3.connect(tmp_path / "state" / "ledger.sqlite")
        try:
            planned = db.execute("SELECT COUNT(*) FROM chunks WHERE batch = 'b'").fetchone()[0]
        finally:
            db.close()
        assert planned == 0, "stopped before anything of batch b was planned or sent"


def _with_message(path: Path, rows: list[dict[str, str]]) -> Path:
    """The sheet with a Message column (the runkit's sheets have none)."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.mark.parametrize("with_reference", [True, False], ids=["reference", "no-reference"])
def test_editing_a_row_held_as_an_ambiguous_match_does_not_release_it(
    tmp_path: Path, with_reference: bool
) -> None:
    """An edit is not a release: a row held as an ambiguous provider match whose amount
    was edited stayed held only until the next run, which ordered it."""
    with running_sandbox("ugiftme", **FAST) as sandbox:
        base = make_rows(1, seed=5)[0]
        first = _with_message(
            tmp_path / "first.csv", [dict(base, Reference="OLD-1", Message="Happy birthday")]
        )
        env = cli_env(sandbox, tmp_path / "state")
        assert batcher(args_for(first, tmp_path / "r1"), env).returncode == 0
        assert len(sandbox_orders(sandbox)) == 1
        # The same person and card twice, told apart only by the message, in a ledger
        # that never saw the first order: recovery cannot tell which row it was.
        rows = [
            dict(base, Reference="AMB-1" if with_reference else "", Message="Happy birthday"),
            dict(base, Reference="AMB-2" if with_reference else "", Message="Thank you"),
        ]
        sheet = _with_message(tmp_path / "amb.csv", rows)
        lost = cli_env(sandbox, tmp_path / "other-state")
        reports = tmp_path / "r2"
        held = batcher(args_for(sheet, reports), lost)
        assert held.returncode == ExitCode.HELD, held.stderr
        codes = {r["error_code"] for r in read_rows_csv(reports, "amb")}
        assert codes == {"held_ambiguous_provider_match"}
        rows[1]["Amount"] = str(Decimal(rows[1]["Amount"]) + 1)
        _with_message(sheet, rows)
        again = batcher(args_for(sheet, reports), lost)
        assert again.returncode == ExitCode.HELD, again.stderr
        assert len(sandbox_orders(sandbox)) == 1, "an edit released a held row"
        states = {r["state"] for r in read_rows_csv(reports, "amb")}
        assert states == {"held"}
        released = batcher(args_for(sheet, reports, "--release-held", "all"), lost)
        assert released.returncode == 0, released.stderr
        assert len(sandbox_orders(sandbox)) == 3  # the operator's decision: both ordered


def test_a_release_of_a_run_that_was_refused_does_not_stick(tmp_path: Path) -> None:
    """--release-held in a run refused before sending (a spend limit; the same path as
    'no' at the prompt) stayed released: the next plain rerun ordered the held rows."""
    with running_sandbox("ugiftme", **FAST) as sandbox:
        rows = without_reference(make_rows(3, seed=13))
        sheet = write_sheet(tmp_path / "refused.csv", rows)
        env = cli_env(sandbox, tmp_path / "state")
        reports = tmp_path / "r"
        assert batcher(args_for(sheet, reports), env).returncode == 0
        edited = [dict(r) for r in rows]
        edited[1]["Amount"] = "42.42"
        write_sheet(sheet, edited)
        assert batcher(args_for(sheet, reports), env).returncode == ExitCode.HELD
        refused = batcher(args_for(sheet, reports, "--release-held", "all", "--max-total",
                                   "GBP=1"), env)  # fmt: skip
        assert refused.returncode == ExitCode.USAGE, refused.stderr
        assert "releasing 1 held row" in refused.stderr
        line = next(r for r in read_rows_csv(reports, "refused") if r["source_row"] == "3")
        assert (line["state"], line["error_code"]) == ("held", "held_possible_duplicate")
        again = batcher(args_for(sheet, reports), env)
        assert again.returncode == ExitCode.HELD, again.stderr
        assert len(sandbox_orders(sandbox)) == 3, "a refused run's release was kept"
        released = batcher(args_for(sheet, reports, "--release-held", "all"), env)
        assert released.returncode == 0, released.stderr
        assert len(sandbox_orders(sandbox)) == 4
