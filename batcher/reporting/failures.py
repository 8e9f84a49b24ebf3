"""Rows that need action, explained for someone who never ran batcher.

Each failure gets a plain-English reason, a next step for that row ("fix the
product code in row 17", "top up GBP wallet by £230.00 and rerun") and an
action that groups rows on the Summary. `refeed` marks the rows that belong in
failed_rows.csv: rows that were definitely never ordered and need the sheet
fixed (invalid rows, and rows the provider refused). Rows waiting for funds or
for an unconfirmed order are settled by rerunning the same batch instead:
putting them in a new sheet could order them twice.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from batcher.core.money import format_money, round_money
from batcher.core.states import UNSETTLED_STATES
from batcher.ledger.store import HELD_ELSEWHERE, RowRecord


@dataclass(frozen=True)
class Failure:
    """A row that needs action, explained for someone who never ran batcher."""

    row: RowRecord
    reason: str
    next_step: str
    action: str  # the next step, worded to group rows on the Summary
    refeed: bool  # fix it in failed_rows.csv and order it as a new batch
    #: not sent yet or still in flight: a rerun settles it, no person needs to act
    outstanding: bool = False
    #: the wallet short of funds for this row (its next step is that wallet's top-up)
    short_wallet: str | None = None


_FIELD_NOUNS = {
    "product_code": "product code",
    "merchant": "merchant",
    "amount": "amount",
    "currency": "currency",
    "country": "country",
    "payment_currency": "payment currency",
    "recipient_email": "email address",
    "recipient_name": "recipient name",
    "message": "gift message",
    "reference": "reference",
}
_CODE_FIELDS = {
    "unknown_product": "product_code",
    "product_inactive": "product_code",
    "currency_mismatch": "currency",
    "merchant_mismatch": "merchant",
    "amount_not_allowed": "amount",
    "bad_amount": "amount",
    "amount_is_date": "amount",
    "bad_email": "recipient_email",
    "bad_currency": "currency",
    "bad_payment_currency": "payment_currency",
    "bad_country": "country",
    "country_not_allowed": "country",
    "name_too_long": "recipient_name",
    "message_too_long": "message",
    "reference_too_long": "reference",
    "reference_mangled": "reference",
}
_REFEED_ACTION = "fix the rows in failed_rows.csv, then order it as a new batch"
_RERUN_ACTION = "rerun the batch: unconfirmed orders are settled, never sent twice"
_TOP_UP_ACTION = "top up the wallet and rerun"


def explain_failures(rows: Sequence[RowRecord], available: Mapping[str, Decimal]) -> list[Failure]:
    """Every row that needs someone to act, in source order."""
    top_ups = funding_steps(rows, available)
    failures = []
    for row in rows:
        failure = explain(row, top_ups)
        if failure is not None:
            failures.append(failure)
    return failures


def funding_steps(rows: Sequence[RowRecord], available: Mapping[str, Decimal]) -> dict[str, str]:
    """'top up GBP wallet by £230.00 and rerun', per currency short of funds."""
    tally = FailureTally()
    for row in rows:
        tally.need_funds(row)
    return tally.top_ups(available)


class FailureTally:
    """The failures of a batch, a row at a time: their keys and counts, never their rows.

    Fed every row in report order (`add`); the failures themselves are explained again
    from their rows when written (`explain`), once the top-ups are known."""

    def __init__(self) -> None:
        self.keys: list[str] = []  # the failing rows' keys, in report order
        self.outstanding = 0  # rows a rerun settles
        self.needing_action = 0  # rows a person must act on
        self.refeed = 0  # rows that go in failed_rows.csv
        self.waiting: Counter[str] = Counter()  # reasons of the outstanding rows
        self.actions: Counter[str] = Counter()  # actions of the others, top-ups aside
        self.short_of: Counter[str] = Counter()  # rows short of funds, by wallet
        self.needed: dict[str, Decimal] = defaultdict(Decimal)
        self.converted: set[str] = set()

    def add(self, row: RowRecord) -> None:
        self.need_funds(row)
        failure = explain(row, {})  # the top-ups are known once every row is read
        if failure is None:
            return
        self.keys.append(row.row_key)
        self.refeed += failure.refeed
        if failure.outstanding:
            self.outstanding += 1
            self.waiting[failure.reason] += 1
            return
        self.needing_action += 1
        if failure.short_wallet is not None:
            self.short_of[failure.short_wallet] += 1
        else:
            self.actions[failure.action] += 1

    def need_funds(self, row: RowRecord) -> None:
        if row.in_sheet and _short_of_funds(row):
            wallet = paying_wallet(row)
            if wallet != row.currency:
                self.converted.add(wallet)  # its cost is in the card's currency: no sum to show
                return
            self.needed[wallet] += row.est_cost if row.est_cost is not None else row.face_value

    def next_steps(self, top_ups: Mapping[str, str]) -> list[tuple[str, int]]:
        """The actions the failures needing a person call for (explained with `top_ups`),
        with how many rows each covers, most rows first."""
        counts = Counter(self.actions)
        for wallet, count in self.short_of.items():
            counts[top_ups.get(wallet, _TOP_UP_ACTION)] += count
        return sorted(counts.items(), key=lambda item: (-item[1], item[0]))

    def top_ups(self, available: Mapping[str, Decimal]) -> dict[str, str]:
        needed, converted = self.needed, self.converted
        steps: dict[str, str] = {
            wallet: f"top up the {wallet} wallet by the shortfall the reason gives and rerun"
            for wallet in sorted(converted)
        }
        for currency, amount in sorted(needed.items()):
            if currency in converted:
                continue
            have = available.get(currency)
            if have is None:
                steps[currency] = (
                    f"top up the {currency} wallet by at least {format_money(amount, currency)}"
                    " and rerun"
                )
                continue
            short = round_money(amount - have, currency)
            if short > 0:
                steps[currency] = (
                    f"top up {currency} wallet by {format_money(short, currency)} and rerun"
                )
            else:
                steps[currency] = f"rerun the batch (the {currency} wallet now has enough funds)"
        return steps


def paying_wallet(row: RowRecord) -> str:
    """The wallet that pays for the row: its payment currency, else its own currency."""
    return (row.fields.get("payment_currency") or "").strip().upper() or row.currency


def _short_of_funds(row: RowRecord) -> bool:
    return row.error_code == "insufficient_funds" and row.state in ("pending", "failed")


def explain(row: RowRecord, top_ups: Mapping[str, str]) -> Failure | None:
    if not row.in_sheet:
        return None
    if row.conflict:
        return _failure(
            row,
            f"the sheet changed this row after it was sent ({row.conflict})",
            "check the order; to send the new values, put them in a new sheet with a new reference",
            "review rows the sheet changed after they were sent",
        )
    if row.state == "invalid":
        return _invalid(row)
    if _short_of_funds(row):
        wallet = paying_wallet(row)
        step = top_ups.get(wallet, _TOP_UP_ACTION)
        why = f"the {wallet} wallet did not have enough funds"
        if row.error_message:
            why += f" ({row.error_message})"
        return Failure(row, why, step, step, refeed=False, short_wallet=wallet)
    if row.state in ("pending", "planned"):
        return _failure(
            row,
            "not sent yet: the run stopped before this row (deadline, interruption or an error)",
            "rerun the batch to order it",
            "rerun the batch to order the rows not sent yet",
            outstanding=True,
        )
    if row.state in UNSETTLED_STATES:
        return _failure(
            row,
            "sent, but the provider has not confirmed the order yet (in flight)",
            "rerun the batch to settle it; do not put this row in a new sheet (it may already be ordered)",
            _RERUN_ACTION,
            outstanding=True,
        )
    if row.state == "failed":
        return _failed(row)
    if row.state == "held":
        return _held(row)
    return None


def _held(row: RowRecord) -> Failure:
    """Never sent, because it may already be ordered: never refed (a new sheet could order
    it twice). A reference another batch holds settles by rerunning once that batch is
    done; a possible duplicate waits for a person's `--release-held`."""
    why = f"held, never sent: {row.error_message or row.error_code or 'possible duplicate'}"
    if row.error_code == HELD_ELSEWHERE:
        return _failure(
            row, why, "finish the other batch named, then rerun this one",
            "rerun once the other batch holding the reference has finished", outstanding=True,
        )  # fmt: skip
    return _failure(
        row,
        why,
        f"check it at the provider; to order it anyway rerun with --release-held {row.source_row}",
        "check possible duplicates; order them anyway with --release-held ROWS",
    )


def _invalid(row: RowRecord) -> Failure:
    message = row.error_message or row.error_code or "the row failed validation"
    noun = _FIELD_NOUNS.get(_CODE_FIELDS.get(row.error_code or "", ""), "")
    if noun:
        step = f"fix the {noun} in row {row.source_row}"
    elif (column := _column_of(message)) is not None:
        step = f"fix column '{column}' in row {row.source_row}"
    elif row.error_code in ("duplicate_reference", "duplicate_row"):
        step = f"remove row {row.source_row} or give it a reference of its own"
    else:
        step = f"fix row {row.source_row} as described"
    return _failure(
        row, f"the sheet's row is not valid: {message}", step, _REFEED_ACTION, refeed=True
    )


def _column_of(message: str) -> str | None:
    if message.startswith("column ") and ":" in message:
        return message[len("column ") : message.index(":")].strip() or None
    return None


def _failed(row: RowRecord) -> Failure:
    message = row.error_message or row.error_code or "the provider refused the order"
    if row.error_code == "idempotency_key_reused":
        return _failure(
            row,
            "the provider saw the same idempotency key with different content (a batcher bug)",
            "do not rerun; report it to the batcher maintainers with the idempotency key",
            "report an idempotency problem to the batcher maintainers",
        )
    if row.failure_kind == "retryable":
        return _failure(
            row,
            f"the provider could not complete it this time: {message}",
            "rerun the batch: batcher retries it automatically with a new key",
            "rerun the batch to retry temporary failures",
        )
    return _failure(
        row,
        f"the provider refused it: {message}",
        f"check row {row.source_row} against the catalog and fix it in failed_rows.csv",
        _REFEED_ACTION,
        refeed=True,
    )


def _failure(
    row: RowRecord,
    reason: str,
    step: str,
    action: str,
    *,
    refeed: bool = False,
    outstanding: bool = False,
) -> Failure:
    return Failure(row, reason, step, action, refeed, outstanding)
