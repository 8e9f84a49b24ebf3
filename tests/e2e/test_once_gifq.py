"""Exactly once between runs, against the GIFQ sandbox over real HTTP: a payout order
tied to two chunks after a crash, payouts re-sent after a lost ledger, and an account
id that changed with the spelling of the URL."""

from __future__ import annotations

import shutil
import signal
import sqlite3
from collections import Counter
from decimal import Decimal
from pathlib import Path

from batcher.sandbox.server import running_sandbox
from tests.e2e.runkit import (
    batcher,
    read_rows_csv,
    start_batcher,
    stop_while_waiting,
    wait_for,
)
from tests.e2e.test_gifq_run import (
    ORDER_HEADER,
    PAYOUT_HEADER,
    assert_each_recipient_paid_once,
    assert_each_row_ordered_once,
    gifq_env,
    order_rows,
    payout_args,
    payout_rows,
    run_args,
    sandbox_orders,
    write_csv,
)


def payout_orders(sandbox: object) -> list[dict[str, object]]:
    return sandbox.control("GET", "/payout-orders")["payoutOrders"]  # type: ignore[attr-defined]


def chunk_states(state: Path, batch: str) -> Counter[str]:
    db = sqlite3.connect(state / "ledger.sqlite")
    try:
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'chunks'").fetchone():
            return Counter()  # the run has not created its tables yet
        return Counter(
            r[0] for r in db.execute("SELECT state FROM chunks WHERE batch = ?", (batch,))
        )
    finally:
        db.close()


def test_two_look_alike_payout_chunks_are_never_tied_to_one_payout_order(tmp_path: Path) -> None:
    """Failure 1: 2,000 rows at one amount make two chunks of equal count and total. The
    process dies after chunk A was accepted, with B's POST in flight but not arrived. The
    rerun's lookup for B found A's queued payout order and took it: B's rows stayed
    unknown forever (or were never paid)."""
    with running_sandbox("gifq", funding={"GBP": "100000.00"}, async_delay_seconds=2.0) as sandbox:
        rows = [dict(r, Amount="10.00") for r in payout_rows(2000)]
        sheet = write_csv(tmp_path / "twins.csv", rows, PAYOUT_HEADER)
        state, reports = tmp_path / "state", tmp_path / "reports"
        env = gifq_env(sandbox, state)
        proc = start_batcher(payout_args(sandbox, sheet, reports, "--max-rate", "0.5"), env)
        ledger = state / "ledger.sqlite"
        assert wait_for(
            lambda: ledger.exists() and chunk_states(state, "twins")["accepted"] == 1, timeout=90
        )
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert len(payout_orders(sandbox)) == 1, "B was sent before the kill; rerun the test"
        # The kill landed after B was committed `sending` and before its POST arrived.
        db = sqlite3.connect(ledger)
        with db:
            db.execute(
                "UPDATE chunks SET state = 'sending', send_count = 1,"
                " first_sent_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), last_sent_at ="
                " strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE batch = 'twins' AND state = 'planned'"
            )
            db.execute(
                "UPDATE rows SET state = 'sending' WHERE batch = 'twins' AND state = 'planned'"
            )
        db.close()

        result = batcher(payout_args(sandbox, sheet, reports), env, timeout=300)
        assert result.returncode == 0, result.stderr
        orders = payout_orders(sandbox)
        assert len(orders) == 2
        assert_each_recipient_paid_once(sandbox, rows)
        lines = read_rows_csv(reports, "twins")
        assert Counter(r["state"] for r in lines) == {"succeeded": 2000}
        assert len({r["order_request_id"] for r in lines}) == 2  # one payout order per chunk
        assert "reconciliation: RECONCILED" in result.stderr


def test_payouts_after_a_lost_ledger_and_an_edited_sheet_are_looked_up_first(
    tmp_path: Path,
) -> None:
    """Failure 4: after a lost ledger payouts were re-sent without any lookup; only the
    undocumented Idempotency-Key stood in the way, and an edit defeated it."""
    with running_sandbox("gifq", funding={"GBP": "50000.00"}, async_delay_seconds=0.05) as sandbox:
        rows = payout_rows(60)
        sheet = write_csv(tmp_path / "plost.csv", rows, PAYOUT_HEADER)
        state, reports = tmp_path / "state", tmp_path / "reports"
        env = gifq_env(sandbox, state)
        first = batcher(payout_args(sandbox, sheet, reports, "--chunk-size", "7"), env)
        assert first.returncode == 0, first.stderr
        assert len(payout_orders(sandbox)) == 9

        shutil.rmtree(state)
        added = payout_rows(3, prefix="NEWP", start=Decimal("33.00"))
        edited = added[:1] + rows + added[1:]
        write_csv(sheet, edited, PAYOUT_HEADER)
        second = batcher(
            payout_args(sandbox, sheet, reports, "--chunk-size", "7", "--ledger-lost"), env
        )
        assert second.returncode == 0, second.stderr
        assert_each_recipient_paid_once(sandbox, edited)
        assert len(payout_orders(sandbox)) == 10  # only the 3 new recipients, in one order
        assert "60 already ordered" in second.stderr
        assert {r["state"] for r in read_rows_csv(reports, "plost")} == {"succeeded"}


def test_the_account_is_the_token_not_the_spelling_of_the_url(tmp_path: Path) -> None:
    """Failure 3: after a lost ledger, `localhost` instead of `127.0.0.1` gave every row a
    new reference and every order was created again."""
    with running_sandbox("gifq", async_delay_seconds=0.05) as sandbox:
        rows = order_rows(12)
        sheet = write_csv(tmp_path / "spelled.csv", rows, ORDER_HEADER)
        state, reports = tmp_path / "state", tmp_path / "reports"
        env = gifq_env(sandbox, state)
        first = batcher(run_args(sandbox, sheet, reports), env)
        assert first.returncode == 0, first.stderr
        assert len(sandbox_orders(sandbox)) == 12

        shutil.rmtree(state)
        respelled = [a.replace("127.0.0.1", "localhost") for a in run_args(sandbox, sheet, reports)]
        assert respelled != run_args(sandbox, sheet, reports)
        second = batcher([*respelled, "--ledger-lost"], env)
        assert second.returncode == 0, second.stderr
        assert len(sandbox_orders(sandbox)) == 12
        assert_each_row_ordered_once(sandbox, rows)


def test_a_stop_ends_the_wait_for_a_look_alike_payout_order(tmp_path: Path) -> None:
    """Failure 4: the lookup waited up to 120 s for a look-alike payout order to settle,
    deaf to Ctrl-C and SIGTERM. It now stops within 2 s and leaves the chunk unknown."""
    with running_sandbox("gifq", fault_drop=1.0, async_delay_seconds=600.0) as sandbox:
        sheet = write_csv(tmp_path / "stuck.csv", payout_rows(3), PAYOUT_HEADER)
        state, reports = tmp_path / "state", tmp_path / "reports"
        proc = start_batcher(payout_args(sandbox, sheet, reports), gifq_env(sandbox, state))
        # The POST's answer is dropped after GIFQ created the payout order; the resend
        # looks for it first, finds it queued, and waits for it to settle.
        assert wait_for(lambda: len(payout_orders(sandbox)) == 1, timeout=60)
        # 90 s: a loaded clean-clone run did not see the chunk unknown within 30 s; the
        # lookup's wait that the stop must end lasts 120 s from then, so the stop below
        # still comes well inside it
        assert wait_for(lambda: chunk_states(state, "stuck")["unknown"] == 1, timeout=90)
        stderr, took = stop_while_waiting(proc, after=3.0)  # well inside the 120 s wait
        # The wait itself ends within a second; the rest is the quick report.
        assert took < 10.0, f"took {took:.1f}s to stop"
        assert "stopped while waiting for payout order" in stderr or "interrupted" in stderr
        assert chunk_states(state, "stuck") == {"unknown": 1}, "left for the next run"
        assert len(payout_orders(sandbox)) == 1, "nothing was resent"
