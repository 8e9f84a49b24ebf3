"""Recovery from the provider, the second ledger: before a batch the ledger cannot vouch
for is planned, ask the provider which of its rows it already holds an order for.

A batch is asked once, when it is new to this ledger (a first run, a lost, deleted,
0-byte or replaced ledger): its orders over a lookback window are matched to the
pending rows by the one match key (`core/keys.match_key`; for payouts, which list no
product or name, by email, amount and currency). A matched row is recorded as
ordered, with its order id, and is never sent. Where the orders cannot be told
apart, the rows are held with the reason and the way out; nothing is guessed.

`match_orders` is pure; `recover_from_provider` does the reading and the recording.
What this guarantees, and under which assumptions, is in README "Exactly once".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from batcher.core.clock import utc_now
from batcher.core.errors import BatcherError, ExitCode, ProviderUnavailable
from batcher.core.keys import canonical_amount, normalise_text
from batcher.ledger.store import RowOutcome, RowRecord
from batcher.providers.base import ProviderOrder

if TYPE_CHECKING:
    from batcher.execute.runner import Runner

#: how far back the provider's orders are read when a batch is recovered
DEFAULT_LOOKBACK_DAYS = 30
#: how long recovery waits for order requests the provider is still processing
IN_PROGRESS_WAIT_SECONDS = 60.0
#: statuses of an order that holds no money and delivers nothing (refunded or refused)
_DEAD_STATUSES = frozenset({"failed", "refunded", "cancelled", "canceled", "rejected"})

HELD_AMBIGUOUS = "held_ambiguous_provider_match"


class RecoveryStopped(BatcherError):
    """Ctrl-C or SIGTERM while recovery waited for the provider: nothing was planned."""

    exit_code = ExitCode.INCOMPLETE


#: (product, amount, email, currency, name): name is "" when the provider lists none
_Key = tuple[str, str, str, str, str]


@dataclass(frozen=True)
class Recovery:
    """What the provider's orders say about the pending rows."""

    found: list[RowOutcome] = field(default_factory=list)
    held: list[RowOutcome] = field(default_factory=list)
    orders_read: int = 0


def _row_key(row: RowRecord, with_name: bool, with_product: bool) -> _Key:
    f = row.fields
    return (
        normalise_text(f.get("product_code", "")).upper() if with_product else "",
        canonical_amount(row.face_value),
        normalise_text(f.get("recipient_email", "")).lower(),
        row.currency.strip().upper(),
        normalise_text(f.get("recipient_name", "")) if with_name else "",
    )


def _order_key(order: ProviderOrder, with_name: bool, with_product: bool) -> _Key:
    return (
        normalise_text(order.product_code).upper() if with_product else "",
        canonical_amount(order.face_value),
        normalise_text(order.recipient_email).lower(),
        order.currency.strip().upper(),
        normalise_text(order.recipient_name) if with_name else "",
    )


def match_orders(
    rows: Sequence[RowRecord], orders: Iterable[ProviderOrder], claimed: set[str]
) -> Recovery:
    """Pair pending rows with live provider orders no row of the ledger stands for.

    Rows and orders are grouped by the match key plus currency (the recipient's name
    and the product only when the provider lists them: payouts list neither). In a group of n rows and m orders:
    - m >= n: every row is ordered (orders oldest first, rows in sheet order);
    - 0 < m < n and the rows are identical: m of them are ordered, the rest are not;
    - 0 < m < n and the rows differ (say, in their message): which rows the orders
      are cannot be told, so all n are held for a person to check.
    Orders without a recipient (GIFQ orders list none) never match anything.
    """
    live = [
        o
        for o in orders
        if o.recipient_email
        and o.order_id not in claimed
        and o.status.lower() not in _DEAD_STATUSES
    ]
    if not live:
        return Recovery()  # nothing to match: no need to group the rows
    # Payouts list neither product nor name: compare what the provider does list.
    with_name = any(o.recipient_name for o in live)
    with_product = any(o.product_code for o in live)
    by_key: dict[_Key, list[ProviderOrder]] = {}
    for order in sorted(live, key=lambda o: (o.created_at is None, o.created_at, o.order_id)):
        by_key.setdefault(_order_key(order, with_name, with_product), []).append(order)
    groups: dict[_Key, list[RowRecord]] = {}
    for row in sorted(rows, key=lambda r: (r.source_row, r.row_key)):
        groups.setdefault(_row_key(row, with_name, with_product), []).append(row)

    recovery = Recovery(orders_read=len(live))
    for key, members in groups.items():
        candidates = by_key.get(key, [])
        if not candidates:
            continue
        identical = len({r.content_hash for r in members}) == 1
        if len(candidates) >= len(members) or identical:
            for row, order in zip(members, candidates, strict=False):
                recovery.found.append(_found(row, order))
            continue
        ids = ", ".join(o.order_id for o in candidates)
        for row in members:
            recovery.held.append(
                RowOutcome(
                    row_key=row.row_key,
                    state="held",
                    error_code=HELD_AMBIGUOUS,
                    error_message=(
                        f"possible duplicate: the provider already holds {len(candidates)} "
                        f"order(s) ({ids}) for {len(members)} rows with this recipient, product "
                        "and amount, and batcher cannot tell which rows they are; check them at "
                        "the provider and remove the rows already ordered from the sheet, or "
                        f"order this one anyway: {release_command(row.source_row)}"
                    ),
                )
            )
    return recovery


def _found(row: RowRecord, order: ProviderOrder) -> RowOutcome:
    cost = order.cost if order.cost is not None else row.est_cost
    return RowOutcome(
        row_key=row.row_key,
        state="succeeded",
        order_id=order.order_id,
        transaction_id=order.transaction_id,
        cost=cost,
        cost_currency=row.currency if cost is not None else None,
        provider_status=order.status or None,
        # payout lines name their payout order here; other providers' orders stand alone
        provider_request_id=order.reference if order.reference != order.order_id else None,
    )


def recover_from_provider(
    runner: Runner,
    *,
    lookback: timedelta,
    wait_seconds: float = IN_PROGRESS_WAIT_SECONDS,
    sleep: Callable[[float], object] | None = None,
    now: Callable[[], datetime] | None = None,
) -> Recovery | None:
    """Ask the provider about a batch the ledger has not asked about before.

    Returns None when the batch was asked before. Raises ProviderUnavailable (before
    anything is planned or sent) while the provider is still processing requests
    whose orders it cannot list yet, and RecoveryStopped when the run's stop flag is
    set during that wait (by default the wait is the stop flag's own, so it ends at once).
    """
    pause = sleep or runner.stop.wait
    ledger, provider, batch = runner.ledger, runner.provider, runner.batch
    if not ledger.needs_recovery(batch):
        return None
    # Only the keys first: the rows themselves are read once there are orders to match.
    pending_keys = ledger.row_keys(batch, "pending")
    # A reference another batch holds is that batch's order, not this one's: those rows
    # are held at planning instead of being matched to that batch's orders here.
    elsewhere = ledger.pending_taken_elsewhere(batch)
    pending_keys = [k for k in pending_keys if k not in elsewhere]
    since = (now() if now else datetime.fromisoformat(utc_now())) - lookback
    if not pending_keys:
        ledger.mark_recovered(batch, rows=0, orders=0)
        runner.stats.recovery = _counts(lookback, since, Recovery(), rows=0, orders=0, calls=0)
        return Recovery()
    requests_before = _requests(provider)
    waited = 0.0
    while (busy := provider.requests_in_progress(since)) > 0:
        if waited == 0.0:
            # Said once, so an operator watching a silent run knows why and how to stop it.
            runner.listener.message(
                f"recovery: waiting up to {wait_seconds:.0f} s for the provider to finish "
                f"{busy} order request(s) before asking it about this batch "
                "(Ctrl-C stops the wait; nothing has been sent)"
            )
        if waited >= wait_seconds:
            raise ProviderUnavailable(
                f"this batch is new to the ledger, and the provider is still processing "
                f"{busy} order request(s) whose orders it cannot list yet; nothing was sent",
                hint="rerun in a few minutes, once they have finished",
            )
        pause(2.0)
        if runner.stop.is_set():
            raise RecoveryStopped(
                f"stopped on request while waiting for the provider to finish {busy} order "
                "request(s) before asking it about this batch; nothing was sent",
                hint="rerun to continue",
            )
        waited += 2.0
    orders = provider.orders(since)
    pending = (
        [row for page in ledger.rows_in_pages(batch, pending_keys) for row in page]
        if orders
        else []
    )
    window = f"{lookback.days} days"
    matched: list[Recovery] = []

    def decide(claimed: set[str]) -> tuple[list[RowOutcome], list[RowOutcome]]:
        # Called inside the ledger's write transaction that records the result: no
        # other run can tie one of these orders to its row in between.
        matched.append(match_orders(pending, orders, claimed))
        return matched[-1].found, matched[-1].held

    ledger.record_recovery(batch, provider.name, runner.account_id, decide, window)
    recovery = matched[-1]
    calls = _requests(provider) - requests_before
    ledger.mark_recovered(
        batch, rows=len(pending_keys), orders=len(orders), found=len(recovery.found),
        held=len(recovery.held), requests=calls,
    )  # fmt: skip
    runner.stats.recovery = _counts(
        lookback, since, recovery, rows=len(pending_keys), orders=len(orders), calls=calls
    )
    runner.listener.message(
        f"recovery: asked the provider about {len(pending_keys)} row(s) new to this ledger "
        f"({len(orders)} order(s) over {window}, {calls} request(s)): "
        f"{len(recovery.found)} already ordered, {len(recovery.held)} held"
    )
    return recovery


def _counts(
    lookback: timedelta, since: datetime, recovery: Recovery, *, rows: int, orders: int, calls: int
) -> dict[str, int | str]:
    """summary.json `recovery` (docs/operator.md, batcher.run/1)."""
    return {
        "window_days": lookback.days,
        "since": since.isoformat(timespec="seconds"),
        "requests": calls,
        "orders_read": orders,
        "rows_asked": rows,
        "rows_matched": len(recovery.found),
        "rows_held_ambiguous": len(recovery.held),
    }


def _requests(provider: object) -> int:
    limiter = getattr(provider, "limiter", None)
    return int(limiter.stats().requests) if limiter is not None else 0


HELD_POSSIBLE_EDIT = "held_possible_duplicate"


def possible_edits(rows: Sequence[RowRecord]) -> list[RowOutcome]:
    """New rows without a reference that look like an edit of a row already ordered.

    Without a reference a row is known by its content, so editing the amount or the
    name of a row that was ordered makes a new row, and the old one silently leaves
    the sheet. A new row (pending, first attempt) with the same recipient and product
    as a row that left the sheet after it was sent is held as a possible duplicate, and
    so is one like a row that left the sheet while held for a person (an edit of a row
    held as a possible duplicate or an ambiguous provider match is no release of it).
    """
    gone: dict[tuple[str, str, str], RowRecord] = {}
    for row in rows:
        if not row.in_sheet and _maybe_ordered(row):
            gone.setdefault(_recipient_product(row), row)
    held: list[RowOutcome] = []
    for row in rows:
        if not (row.in_sheet and row.state == "pending" and row.attempt == 1):
            continue
        if row.reference:
            continue  # a referenced row's edit keeps its key and is a conflict instead
        old = gone.get(_recipient_product(row))
        if old is None:
            continue
        amount = f"{old.face_value} {old.currency}"
        if old.state == "held":
            was = f"may already be ordered (it was held: {old.error_code}, {amount})"
        else:
            order = f"order {old.order_id}" if old.order_id else f"its order is {old.state}"
            was = f"was already ordered ({order}, {amount})"
        held.append(
            RowOutcome(
                row_key=row.row_key,
                state="held",
                error_code=HELD_POSSIBLE_EDIT,
                error_message=(
                    f"possible duplicate: sheet row {old.source_row} for this recipient and "
                    f"product {was} and has left the sheet; this row looks like an edit of"
                    " it. If a second "
                    f"card is really wanted: {release_command(row.source_row)}"
                ),
            )
        )
    return held


def _maybe_ordered(row: RowRecord) -> bool:
    """Sent, or held because it may have been ordered already."""
    if row.state in ("sending", "unknown", "accepted", "succeeded"):
        return True
    return row.state == "held" and row.error_code in (HELD_POSSIBLE_EDIT, HELD_AMBIGUOUS)


def release_command(source_row: int) -> str:
    """The way out of a hold, as the operator types it."""
    return f"rerun the same command with --release-held {source_row}"


def _recipient_product(row: RowRecord) -> tuple[str, str, str]:
    f = row.fields
    return (
        normalise_text(f.get("recipient_email", "")).lower(),
        normalise_text(f.get("product_code", "")).upper(),
        row.currency.strip().upper(),
    )


def before_planning(
    runner: Runner, *, lookback: timedelta, sleep: Callable[[float], object] | None = None
) -> None:
    """What `execute/run.py` runs between syncing the sheet and planning: recovery from
    the provider for a batch new to the ledger, then holds for rows that look like edits."""
    recover_from_provider(runner, lookback=lookback, sleep=sleep)
    if not runner.ledger.has_new_unreferenced_rows(runner.batch):
        return  # no row can be an edit: no need to read the whole batch
    held = possible_edits(runner.ledger.rows(runner.batch, in_sheet_only=False))
    if held:
        runner.ledger.hold_rows(runner.batch, held)
        runner.listener.message(
            f"{len(held)} row(s) held as possible duplicates of rows already ordered "
            "(see rows.csv); rerun with --release-held ROWS (or all) to order them anyway"
        )
