"""Recovery from the provider against another run of the same account: the orders the
ledger already ties to rows are read inside the transaction that records a match, so
a run that claims an order in between cannot have it tied to a second row."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import batcher.execute.recovery as recovery
from batcher.execute.runner import Runner, RunOptions
from batcher.ledger.store import Ledger
from batcher.providers.base import ProviderOrder
from tests.runner_fakes import FakeProvider, sheet_rows

ACCOUNT = "acct-fake"


def _claim_if_free(path: Path, claimed: list[bool]) -> None:
    """Another run, recovering batch 'other': it takes o1 for its row, unless some row
    already stands for o1, in one write transaction (as batcher does)."""
    db = sqlite3.connect(path, timeout=20, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        taken = db.execute("SELECT COUNT(*) FROM rows WHERE order_id = 'o1'").fetchone()[0]
        if not taken:
            db.execute("UPDATE rows SET state = 'succeeded', order_id = 'o1' WHERE batch = 'other'")
        db.execute("COMMIT")
        claimed.append(not taken)
    finally:
        db.close()


def test_an_order_claimed_while_recovery_matches_is_never_tied_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    rows = sheet_rows([("GBP", "10.00")])
    for batch in ("mine", "other"):  # the same person and card, in two batches
        ledger.ensure_batch(batch, provider="fake", account_id=ACCOUNT,
                            source_path=f"{batch}.csv", source_sha256=batch)  # fmt: skip
        ledger.sync_rows(batch, rows, retry_failed=False)
    provider = FakeProvider()
    provider.created.append(
        ProviderOrder(
            order_id="o1",
            product_code="GC-GBP",
            currency="GBP",
            face_value=Decimal("10.00"),
            status="completed",
            created_at=datetime.now(UTC),
            recipient_email="person1@example.com",
            recipient_name="Person 1",
        )
    )
    claimed: list[bool] = []
    other = threading.Thread(target=_claim_if_free, args=(path, claimed))
    real_match = recovery.match_orders

    def match_while_another_run_claims(*args: Any) -> recovery.Recovery:
        other.start()
        other.join(timeout=1.0)  # it finishes at once unless this run holds the ledger
        return real_match(*args)

    monkeypatch.setattr(recovery, "match_orders", match_while_another_run_claims)
    runner = Runner(provider, ledger, "mine", ACCOUNT, RunOptions())
    try:
        recovery.recover_from_provider(runner, lookback=timedelta(days=30))
        other.join(timeout=30)
        tied = ledger._db.execute(
            "SELECT batch FROM rows WHERE order_id = 'o1' ORDER BY batch"
        ).fetchall()
    finally:
        ledger.close()
    assert len(tied) == 1, f"o1 tied to {len(tied)} rows"
    assert claimed == [tied[0][0] == "other"]
