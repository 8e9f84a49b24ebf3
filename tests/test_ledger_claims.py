"""Account-wide reference claims (schema 4): taken with the plan, released with the row,
and a claim the ledger's own check did not see still keeps a chunk from being saved.

Every test runs on a real SQLite file and on a real PostgreSQL database (tests/pg.py).
"""

from __future__ import annotations

from pathlib import Path

from batcher.core.states import CLAIMING_STATES, HELD_ELSEWHERE
from batcher.ledger.store import Ledger, RowOutcome
from tests.test_ledger import sheet_row


def claims(ledger: Ledger) -> dict[str, tuple[str, str]]:
    """reference -> (batch, row key) of every claim in the ledger."""
    return {
        r[0]: (r[1], r[2])
        for r in ledger._db.execute("SELECT reference, batch, row_key FROM reference_claims")
    }


def second_batch(ledger: Ledger, name: str = "b2", account: str = "a") -> None:
    ledger.ensure_batch(
        name, provider="p", account_id=account, source_path=f"{name}.csv", source_sha256=name
    )


def test_claiming_states_are_the_planned_in_flight_and_ordered_ones() -> None:
    assert set(CLAIMING_STATES) == {"planned", "sending", "unknown", "accepted", "succeeded"}


def test_a_planned_row_claims_its_reference_and_a_failure_gives_it_back(ledger: Ledger) -> None:
    ledger.sync_rows("b", [sheet_row("r1", 2, ref="REF-1"), sheet_row("k2", 3)], retry_failed=False)
    assert claims(ledger) == {}  # pending rows claim nothing
    ledger.save_plan("b", [("c1", "GBP", 1, ["r1", "k2"], b"x")])
    assert claims(ledger) == {"REF-1": ("b", "r1")}  # rows without a reference: none
    ledger.mark_sending("b", "c1")
    ledger.mark_accepted("b", "c1", "req-1")
    assert claims(ledger) == {"REF-1": ("b", "r1")}  # in flight: still held

    second_batch(ledger)
    ledger.sync_rows("b2", [sheet_row("s1", 2, ref="REF-1")], retry_failed=False)
    assert ledger.save_plan("b2", [("d1", "GBP", 1, ["s1"], b"y")]) == {"s1"}

    ledger.settle_chunk(
        "b",
        "c1",
        "failed",
        [
            RowOutcome("r1", "failed", failure_kind="permanent", error_code="bad"),
            RowOutcome("k2", "failed", failure_kind="permanent", error_code="bad"),
        ],
    )
    assert claims(ledger) == {}  # failed for good: no longer blocks
    ledger.clear_reference_holds("b2")
    assert ledger.save_plan("b2", [("d2", "GBP", 1, ["s1"], b"y")]) == set()
    assert claims(ledger) == {"REF-1": ("b2", "s1")}
    assert ledger.rows_by_key("b2", ["s1"])["s1"].state == "planned"


def test_a_succeeded_row_keeps_its_claim_and_a_retried_one_gives_it_back(ledger: Ledger) -> None:
    rows = [sheet_row("r1", 2, ref="REF-1"), sheet_row("r2", 3, ref="REF-2")]
    ledger.sync_rows("b", rows, retry_failed=False)
    ledger.save_plan("b", [("c1", "GBP", 1, ["r1", "r2"], b"x")])
    ledger.mark_sending("b", "c1")
    ledger.settle_chunk(
        "b",
        "c1",
        "failed",
        [
            RowOutcome("r1", "succeeded", order_id="o1"),
            RowOutcome("r2", "pending", failure_kind="retryable", release=True),
        ],
    )
    assert claims(ledger) == {"REF-1": ("b", "r1")}


def test_discarding_an_unsent_plan_and_changing_a_planned_row_give_claims_back(
    ledger: Ledger,
) -> None:
    rows = [sheet_row("r1", 2, ref="REF-1"), sheet_row("r2", 3, ref="REF-2")]
    ledger.sync_rows("b", rows, retry_failed=False)
    ledger.save_plan("b", [("c1", "GBP", 1, ["r1"], b"x"), ("c2", "GBP", 1, ["r2"], b"z")])
    assert set(claims(ledger)) == {"REF-1", "REF-2"}
    assert ledger.discard_unsent_plans("b", ["c1"]) == 1
    assert claims(ledger) == {"REF-2": ("b", "r2")}
    ledger.sync_rows(
        "b", [rows[0], sheet_row("r2", 3, ref="REF-2", content="new")], retry_failed=False
    )
    assert claims(ledger) == {}  # the changed row went back to pending before it was sent


def test_a_competing_claim_the_check_did_not_see_keeps_the_whole_chunk_unsaved(
    ledger: Ledger,
) -> None:
    """Another writer's claim (another machine, or a batcher without the write lock) that
    this ledger's rows do not show: the primary key refuses the second claim, so nothing
    of the chunk is written, not even the claims of its other rows, and the row is held
    naming the batch that holds the reference."""
    second_batch(ledger, "elsewhere")
    ledger._db.execute(
        "INSERT INTO reference_claims(provider, account_id, reference, batch, row_key,"
        " claimed_at) VALUES ('p', 'a', 'REF-2', 'elsewhere', 'ghost', '2024-01-01T00:00:00Z')"
    )
    rows = [sheet_row("r1", 2, ref="REF-1"), sheet_row("r2", 3, ref="REF-2"), sheet_row("k3", 4)]
    ledger.sync_rows("b", rows, retry_failed=False)
    assert ledger.references_taken_elsewhere("b", ["r1", "r2", "k3"]) == set()  # unseen

    held = ledger.save_plan("b", [("c1", "GBP", 1, ["r1", "r2", "k3"], b"x")])

    assert held == {"r2"}
    assert ledger.chunks("b", ["planned"]) == []
    assert ledger._db.execute("SELECT COUNT(*) FROM chunk_rows").fetchone()[0] == 0
    assert claims(ledger) == {"REF-2": ("elsewhere", "ghost")}  # REF-1's claim undone too
    after = ledger.rows_by_key("b", ["r1", "r2", "k3"])
    assert (after["r1"].state, after["k3"].state) == ("pending", "pending")
    assert after["r2"].state == "held" and after["r2"].error_code == HELD_ELSEWHERE
    assert "reference 'REF-2' is claimed in batch 'elsewhere'" in (after["r2"].error_message or "")
    assert "then rerun this batch" in (after["r2"].error_message or "")

    # The caller plans the rest again: they are saved, with their claims.
    assert ledger.save_plan("b", [("c2", "GBP", 1, ["r1", "k3"], b"y")]) == set()
    assert claims(ledger) == {"REF-2": ("elsewhere", "ghost"), "REF-1": ("b", "r1")}


def test_another_account_or_provider_does_not_compete(ledger: Ledger) -> None:
    ledger.sync_rows("b", [sheet_row("r1", 2, ref="REF-1")], retry_failed=False)
    ledger.save_plan("b", [("c1", "GBP", 1, ["r1"], b"x")])
    second_batch(ledger, "z", account="other-account")
    ledger.sync_rows("z", [sheet_row("r1", 2, ref="REF-1")], retry_failed=False)
    assert ledger.save_plan("z", [("e1", "GBP", 1, ["r1"], b"y")]) == set()
    count = ledger._db.execute("SELECT COUNT(*) FROM reference_claims").fetchone()[0]
    assert count == 2


def test_a_claim_left_by_a_row_that_no_longer_claims_is_taken_over(ledger: Ledger) -> None:
    ledger.sync_rows("b", [sheet_row("r1", 2, ref="REF-1")], retry_failed=False)
    ledger.save_plan("b", [("c1", "GBP", 1, ["r1"], b"x")])
    # a release that did not happen: the row failed, its claim stayed
    ledger._db.execute("UPDATE rows SET state = 'failed' WHERE row_key = 'r1'")
    second_batch(ledger)
    ledger.sync_rows("b2", [sheet_row("s1", 2, ref="REF-1")], retry_failed=False)
    assert ledger.save_plan("b2", [("d1", "GBP", 1, ["s1"], b"y")]) == set()
    assert claims(ledger) == {"REF-1": ("b2", "s1")}


def _as_version_2(ledger: Ledger) -> None:
    """Back to schema 2: no claims table."""
    ledger._db.execute("DROP TABLE reference_claims")
    ledger._db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")


def test_the_migration_fills_claims_and_holds_a_later_unsent_duplicate(
    ledger: Ledger, tmp_path: Path
) -> None:
    """Two ledgers merged before version 4 can hold one reference in two batches: the
    sent row keeps it, a duplicate still only planned is held, a sent one is named."""
    ledger.sync_rows("b", [sheet_row("r1", 2, ref="REF-1")], retry_failed=False)
    ledger.save_plan("b", [("c1", "GBP", 1, ["r1"], b"x")])  # planned only
    for name in ("b2", "b3"):
        second_batch(ledger, name)
        ledger.sync_rows(name, [sheet_row(f"{name}-1", 2, ref="REF-1")], retry_failed=False)
    _as_version_2(ledger)
    # As version 2 could leave them: b2 sent and succeeded, b3 accepted, both REF-1.
    for name, state in (("b2", "succeeded"), ("b3", "accepted")):
        ledger._db.execute(
            "UPDATE rows SET state = ? WHERE batch = ?", (state, name)
        )  # fmt: skip
    again = Ledger(ledger.location, migrate=True)  # SQLite migrates on open anyway
    try:
        assert again.migrated_from == 2
        # b2 and b3 were sent; b2 is the earlier batch (created first) and wins
        assert claims(again) == {"REF-1": ("b2", "b2-1")}
        planned = again.rows_by_key("b", ["r1"])["r1"]
        assert planned.state == "held" and planned.error_code == HELD_ELSEWHERE
        assert "batch 'b2'" in (planned.error_message or "")
        assert again.rows_by_key("b3", ["b3-1"])["b3-1"].state == "accepted"  # left alone
        assert [e["row_key"] for e in again.events("b3", "reference_claim_duplicate")] == ["b3-1"]
        assert again.discard_unsent_plans("b", stale_only=True) == 1  # its chunk goes
    finally:
        again.close()


def test_recovery_asks_for_the_pending_rows_whose_reference_another_batch_holds(
    ledger: Ledger,
) -> None:
    """`pending_taken_elsewhere` (recovery's one read of its rows' references) names what
    `references_taken_elsewhere` names for the batch's pending rows in the sheet: rows of
    other states, rows that left the sheet and references held by another account's
    batch, or only by this batch, are not among them."""
    second_batch(ledger, "b2")
    second_batch(ledger, "other-account", account="z")
    ledger.sync_rows(
        "b2", [sheet_row("x1", 2, ref="REF-1"), sheet_row("x2", 3, ref="REF-2")], retry_failed=False
    )
    ledger.save_plan("b2", [("c-b2", "GBP", 1, ["x1", "x2"], b"x")])  # b2 claims both
    ledger.sync_rows("other-account", [sheet_row("y3", 2, ref="REF-3")], retry_failed=False)
    ledger.save_plan("other-account", [("c-z", "GBP", 1, ["y3"], b"z")])
    rows = [
        sheet_row("r1", 2, ref="REF-1"),  # pending, held by b2: named
        sheet_row("r2", 3, ref="REF-2"),  # held by b2 but planned here: not pending
        sheet_row("r3", 4, ref="REF-3"),  # held by another account's batch only
        sheet_row("r4", 5, ref="REF-4"),  # held by nobody
        sheet_row("k5", 6),  # no reference
        sheet_row("r6", 7, ref="REF-1 "),  # the same reference spelled with a space
    ]
    ledger.sync_rows("b", rows, retry_failed=False)
    ledger._db.execute("UPDATE rows SET state = 'planned' WHERE batch = 'b' AND row_key = 'r2'")
    ledger.sync_rows("b", rows[:-1], retry_failed=False)  # r6 leaves the sheet
    pending = ledger.row_keys("b", "pending")
    assert sorted(pending) == ["k5", "r1", "r3", "r4"]
    assert ledger.pending_taken_elsewhere("b") == {"r1"}
    assert ledger.pending_taken_elsewhere("b") == ledger.references_taken_elsewhere("b", pending)
    assert ledger.pending_taken_elsewhere("not-recorded") == set()
