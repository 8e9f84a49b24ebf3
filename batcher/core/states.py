"""Row and chunk states, and the named groups of them every stage uses.

A row moves ``pending → planned → sending → accepted → succeeded | failed``;
``invalid`` rows never leave validation and ``skipped`` rows were already done
elsewhere. ``held`` rows were never sent because they may be orders already placed
(a possible duplicate, a reference another batch holds, an ambiguous provider
match): each carries its reason and the way out. A ``sending`` row that meets a crash becomes ``unknown`` and is
resolved only by replaying its chunk with the same key and bytes.

States are ``StrEnum`` members, so they compare equal to the plain strings the
ledger stores: ``RowState.SUCCEEDED == "succeeded"``.
"""

from __future__ import annotations

from enum import StrEnum


class RowState(StrEnum):
    INVALID = "invalid"
    PENDING = "pending"
    PLANNED = "planned"
    SENDING = "sending"
    UNKNOWN = "unknown"
    ACCEPTED = "accepted"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    HELD = "held"


class ChunkState(StrEnum):
    """A chunk moves with its rows, so it takes their names for the states it shares."""

    PLANNED = RowState.PLANNED.value
    SENDING = RowState.SENDING.value
    UNKNOWN = RowState.UNKNOWN.value
    ACCEPTED = RowState.ACCEPTED.value
    SUCCEEDED = RowState.SUCCEEDED.value
    FAILED = RowState.FAILED.value


#: every row state, in the order reports list them
ROW_STATES: tuple[RowState, ...] = tuple(RowState)

#: every chunk state
CHUNK_STATES: tuple[ChunkState, ...] = tuple(ChunkState)

#: sent, and frozen: resent only with the same key and bytes
IN_FLIGHT_STATES: tuple[RowState, ...] = (RowState.SENDING, RowState.UNKNOWN, RowState.ACCEPTED)

#: planned or in flight: the outcome is not yet known
UNSETTLED_STATES: tuple[RowState, ...] = (RowState.PLANNED, *IN_FLIGHT_STATES)

#: the run has work left for these rows; a rerun continues them
UNFINISHED_STATES: tuple[RowState, ...] = (RowState.PENDING, *UNSETTLED_STATES)

#: finished: nothing more will happen to these rows without a person
SETTLED_STATES: tuple[RowState, ...] = (RowState.SUCCEEDED, RowState.FAILED, RowState.SKIPPED)

#: a row a later plan may put into a chunk again
REPLANNABLE_STATES: tuple[RowState, ...] = (
    RowState.PENDING,
    RowState.PLANNED,
    RowState.FAILED,
    RowState.INVALID,
    RowState.HELD,
)

#: never sent, and not sent until released: `--release-held`, or (a reference another
#: batch holds) a rerun once that batch has finished
HELD_STATES: tuple[RowState, ...] = (RowState.HELD,)

#: error_code of a held row whose reference another batch of the same account holds
HELD_ELSEWHERE = "held_reference_in_another_batch"

#: a row in one of these states holds its reference for its account: planned, in
#: flight or ordered. Another batch of the account plans that reference only once the
#: row has left them (failed, pending again, held, skipped, invalid): the ledger's
#: `reference_claims` table (one claim per account and reference) follows exactly this.
CLAIMING_STATES: tuple[RowState, ...] = (*UNSETTLED_STATES, RowState.SUCCEEDED)


class QueueState(StrEnum):
    """A `batcher enqueue` item in the work queue (the `batch_queue` table)."""

    QUEUED = "queued"  # waiting for a worker (or for its retry's backoff to pass)
    RUNNING = "running"  # claimed: a worker's id and heartbeat are on it
    DONE = "done"  # the batch ran to the end and reconciled
    FAILED = "failed"  # a person must look: the message says why
    HELD = "held"  # rows held as possible duplicates (or not reconciled): a person decides


#: an item a worker may still claim (one per batch at a time)
OPEN_QUEUE_STATES: tuple[QueueState, ...] = (QueueState.QUEUED, QueueState.RUNNING)
