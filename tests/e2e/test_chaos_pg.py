"""Chaos on PostgreSQL: 3 workers drain 6 batches on 2 UGiftMe accounts from one shared
ledger while workers are SIGKILLed mid-batch (and replaced) and the sandboxes inject
faults; every item ends done, with 0 duplicate and 0 missing orders.

The seed is printed (and can be forced with BATCHER_CHAOS_SEED) so a failure replays.
"""

from __future__ import annotations

import os
import random
from dataclasses import asdict
from pathlib import Path

from tests.bench.chaos_pg import run_round


def test_three_workers_drain_six_batches_on_two_accounts_exactly_once_under_kills(
    tmp_path: Path, pg_url: str
) -> None:
    seed = int(os.environ.get("BATCHER_CHAOS_SEED", random.randrange(1, 2**31)))
    print(f"\npostgresql chaos seed: {seed}  (replay with BATCHER_CHAOS_SEED={seed})")
    result = run_round(seed, tmp_path, pg_url, workers=3, batches=6, rows=20, kills=3)
    print(asdict(result))
    assert result.kills >= 1, "no worker was killed mid-batch: the round proved nothing"
    assert result.reclaims >= 1, "no killed worker's batch was taken over"
    assert result.duplicates == 0, result.per_account
    assert result.missing == 0, result.per_account
    assert result.by_state == {"done": 6}, result.not_done
