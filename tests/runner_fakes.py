"""In-memory doubles for driving `Runner` without HTTP: a provider and a clock.

`FakeProvider` keeps its own books, as a real provider does, so a test can check
the other side of exactly-once: how many orders exist per row. It deduplicates
by idempotency key (a resend with the same key and bytes replays the first
answer and creates nothing), refuses a key reused with other bytes, completes
order requests after a set number of polls, debits per-currency wallets, and
injects faults from scripts (one entry consumed per call, `None` = no fault).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Literal

from batcher.core.fields import BASE_REQUIRED
from batcher.core.models import AccountInfo, Balance, Product, WalletTransaction
from batcher.execute.plan import RowFields, row_keys
from batcher.ledger.store import SheetRow
from batcher.providers.base import (
    IncompleteResult,
    ItemResult,
    OrderItem,
    OutcomeUnknown,
    PollResult,
    ProviderOrder,
    Redemption,
    SubmitResult,
)


class ProcessDied(Exception):
    """Stands in for the process being killed: nothing in the runner handles it."""


class Fault(StrEnum):
    #: the request never reached the provider; the caller cannot tell
    DROP_REQUEST = "drop_request"
    #: the provider acted, but its answer was lost
    DROP_RESPONSE = "drop_response"
    #: the process dies before the request leaves (after the ledger wrote `sending`)
    DIE_BEFORE = "die_before"
    #: the process dies after the provider acted, before the answer is recorded
    DIE_AFTER = "die_after"
    #: the provider acted, but its answer accounts for only the first half of the items
    INCOMPLETE = "incomplete"
    #: a definite 4xx (out of stock): nothing is created and the key is not kept
    REJECT = "reject"


SUBMIT_FAULTS: tuple[Fault, ...] = tuple(Fault)
POLL_FAULTS: tuple[Fault, ...] = (Fault.DROP_REQUEST, Fault.DROP_RESPONSE, Fault.INCOMPLETE)


@dataclass
class FakeClock:
    """Monotonic time that only moves when someone sleeps; sleeping costs no real time."""

    now: float = 1000.0
    slept: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += max(0.0, seconds)


@dataclass
class _Line:
    ref: str
    product_code: str
    amount: Decimal
    currency: str
    wallet: str
    email: str
    name: str


@dataclass
class _Request:
    request_id: str
    key: str
    payload: bytes
    lines: list[_Line]
    polls_seen: int = 0
    results: tuple[ItemResult, ...] | None = None  # set when complete


@dataclass
class FakeProvider:
    name: str = "fake"
    submit_limit: int = 3
    #: 0: the submit answer carries the results; n: complete on the n-th poll
    polls_to_complete: int = 0
    wallets: dict[str, Decimal] = field(default_factory=dict)
    submit_faults: list[Fault | None] = field(default_factory=list)
    poll_faults: list[Fault | None] = field(default_factory=list)
    #: a definite rejection's code and text; the runner reads both to decide if it is retryable
    reject_code: str = "out_of_stock"
    reject_message: str = "out of stock"
    #: False: the provider cannot find a request by key (UGiftMe); the runner must resend
    lookup_finds: bool = True
    #: called with the key as each submission arrives (to spend fake time, or set a stop flag)
    on_submit: Callable[[str], None] | None = None
    required_fields: frozenset[str] = BASE_REQUIRED
    validates_catalog: bool = False
    idempotency_carrier: Literal["header", "body"] = "header"
    #: "pending" answers say they came from the client's memory (GIFQ's order board)
    pending_from_cache: bool = False
    #: "pending" answers ask to be polled again this soon (GIFQ's board in a run's tail)
    pending_ask_again_in: float | None = None
    #: completed answers say they brought news for the other polls (GIFQ's board in a tail)
    completed_news_for_others: bool = False

    # the provider's own books
    sent: list[tuple[str, bytes]] = field(default_factory=list)
    requests: dict[str, _Request] = field(default_factory=dict)
    by_key: dict[str, str] = field(default_factory=dict)
    created: list[ProviderOrder] = field(default_factory=list)
    ledger_entries: list[WalletTransaction] = field(default_factory=list)
    key_conflicts: list[str] = field(default_factory=list)
    polls: int = 0
    lookups: int = 0
    #: the `claimed` set each lookup was given
    claimed_seen: list[frozenset[str]] = field(default_factory=list)

    # ------------------------------------------------------------ what tests check

    def orders_per_row(self) -> Counter[str]:
        """Orders the provider holds, per row key (the `reference` each line carried)."""
        return Counter(o.reference for o in self.created if o.reference)

    def payloads_by_key(self) -> dict[str, set[bytes]]:
        seen: dict[str, set[bytes]] = {}
        for key, payload in self.sent:
            seen.setdefault(key, set()).add(payload)
        return seen

    # ------------------------------------------------------------ the protocol

    def account(self) -> AccountInfo:
        return AccountInfo(account_id="acct-fake", name="Fake Ltd", status="active")

    def preflight(self) -> None:
        return None

    def catalog(self) -> list[Product]:
        return []

    def balances(self) -> list[Balance]:
        return [
            Balance(currency=c, balance=v, available=v) for c, v in sorted(self.wallets.items())
        ]

    def transactions(self, since: datetime | None = None) -> list[WalletTransaction]:
        return [t for t in self.ledger_entries if since is None or (t.timestamp or since) >= since]

    def orders(self, since: datetime, until: datetime | None = None) -> list[ProviderOrder]:
        return [
            o
            for o in self.created
            if o.created_at is not None
            and o.created_at >= since
            and (until is None or o.created_at <= until)
        ]

    def redemption(self, order_id: str) -> Redemption | None:
        if not any(o.order_id == order_id for o in self.created):
            return None
        return Redemption(order_id=order_id, voucher_code=f"CODE-{order_id}")

    def encode(self, key: str, items: Sequence[OrderItem]) -> bytes:
        lines = [
            {
                "amount": str(i.amount),
                "currency": i.currency,
                "email": i.recipient_email,
                "name": i.recipient_name,
                "paymentCurrency": i.payment_currency,
                "product": i.product_code,
                "ref": i.row_key,
            }
            for i in items
        ]
        return json.dumps({"orders": lines}, sort_keys=True, separators=(",", ":")).encode()

    def submit(self, key: str, payload: bytes, items: Sequence[OrderItem]) -> SubmitResult:
        self.sent.append((key, payload))
        if self.on_submit is not None:
            self.on_submit(key)
        fault = self.submit_faults.pop(0) if self.submit_faults else None
        if fault is Fault.DROP_REQUEST:
            raise OutcomeUnknown("connection reset before the request was sent")
        if fault is Fault.DIE_BEFORE:
            raise ProcessDied(key)
        if fault is Fault.REJECT and key not in self.by_key:
            return SubmitResult(
                kind="rejected", error_code=self.reject_code, error_message=self.reject_message
            )
        answer = self._receive(key, payload, items)
        if fault is Fault.DROP_RESPONSE:
            raise OutcomeUnknown("read timeout")
        if fault is Fault.DIE_AFTER:
            raise ProcessDied(key)
        if fault is Fault.INCOMPLETE and answer.kind == "completed":
            raise IncompleteResult("result did not match every item", items=_half(answer.items))
        return answer

    def poll(self, request_id: str, items: Sequence[OrderItem]) -> PollResult:
        self.polls += 1
        fault = self.poll_faults.pop(0) if self.poll_faults else None
        if fault is Fault.DROP_REQUEST:
            raise OutcomeUnknown("poll: connection reset")
        request = self.requests.get(request_id)
        if request is None:
            raise OutcomeUnknown(f"order request {request_id} is unknown (HTTP 404)")
        if request.results is None:
            request.polls_seen += 1
            if request.polls_seen >= self.polls_to_complete:
                self._complete(request, items)
        if fault is Fault.DROP_RESPONSE:
            raise OutcomeUnknown("poll: read timeout")
        if request.results is None:
            return PollResult(kind="pending", provider_status="processing",
                              from_cache=self.pending_from_cache,
                              ask_again_in=self.pending_ask_again_in)  # fmt: skip
        if fault is Fault.INCOMPLETE:
            raise IncompleteResult("result did not match every item", items=_half(request.results))
        return PollResult(kind="completed", items=request.results, provider_status="succeeded",
                          news_for_others=self.completed_news_for_others)  # fmt: skip

    def lookup(
        self,
        key: str,
        items: Sequence[OrderItem],
        *,
        sent_after: datetime | None = None,
        claimed: frozenset[str] = frozenset(),
    ) -> SubmitResult | None:
        self.lookups += 1
        self.claimed_seen.append(claimed)
        if not self.lookup_finds or key not in self.by_key:
            return None
        return self._answer(self.requests[self.by_key[key]], items)

    def requests_in_progress(self, since: datetime) -> int:
        return sum(1 for r in self.requests.values() if r.results is None)

    def close(self) -> None:
        return None

    # ------------------------------------------------------------ the provider's side

    def _receive(self, key: str, payload: bytes, items: Sequence[OrderItem]) -> SubmitResult:
        known = self.by_key.get(key)
        if known is not None:
            request = self.requests[known]
            if request.payload != payload:
                # A real provider refuses a key reused with another body (HTTP 422).
                self.key_conflicts.append(key)
                return SubmitResult(kind="rejected", error_code="idempotency_key_reused")
            return self._answer(request, items)  # a replay: nothing new is created
        lines = [
            _Line(
                ref=d["ref"],
                product_code=d["product"],
                amount=Decimal(d["amount"]),
                currency=d["currency"],
                wallet=d["paymentCurrency"] or d["currency"],
                email=d["email"],
                name=d["name"],
            )
            for d in json.loads(payload)["orders"]
        ]
        needed: dict[str, Decimal] = {}
        for line in lines:
            needed[line.wallet] = needed.get(line.wallet, Decimal(0)) + line.amount
        for wallet, amount in sorted(needed.items()):
            available = self.wallets.get(wallet, Decimal(0))
            if amount > available:
                # A 402 creates nothing and keeps no key: a top-up and a resend may succeed.
                return SubmitResult(
                    kind="insufficient_funds",
                    error_code="insufficient_funds",
                    currency=wallet,
                    required=amount,
                    available=available,
                )
        for wallet, amount in needed.items():
            self.wallets[wallet] -= amount
        request = _Request(f"req-{len(self.requests) + 1}", key, payload, lines)
        self.requests[request.request_id] = request
        self.by_key[key] = request.request_id
        if self.polls_to_complete == 0:
            self._complete(request, items)
        return self._answer(request, items)

    def _answer(self, request: _Request, items: Sequence[OrderItem]) -> SubmitResult:
        if self.polls_to_complete == 0 and request.results is not None:
            return SubmitResult(kind="completed", items=request.results)
        return SubmitResult(kind="accepted", request_id=request.request_id)

    def _complete(self, request: _Request, items: Sequence[OrderItem]) -> None:
        now = datetime.now(UTC)
        results = []
        for line in request.lines:
            order_id = f"ord-{len(self.created) + 1}"
            self.created.append(
                ProviderOrder(
                    order_id=order_id,
                    product_code=line.product_code,
                    currency=line.currency,
                    face_value=line.amount,
                    status="completed",
                    created_at=now,
                    recipient_email=line.email,
                    recipient_name=line.name,
                    transaction_id=f"tx-{order_id}",
                    reference=line.ref,
                    cost=line.amount,
                )
            )
            self.ledger_entries.append(
                WalletTransaction(
                    transaction_type="purchase",
                    amount=-line.amount,
                    currency=line.wallet,
                    order_id=order_id,
                    transaction_id=f"tx-{order_id}",
                    timestamp=now,
                )
            )
            results.append(
                ItemResult(
                    row_key=line.ref,
                    status="succeeded",
                    order_id=order_id,
                    transaction_id=f"tx-{order_id}",
                    cost=line.amount,
                    cost_currency=line.wallet,
                    voucher_code=f"CODE-{order_id}",
                    provider_status="completed",
                )
            )
        wanted = {i.row_key for i in items}
        if wanted != {r.row_key for r in results}:
            raise AssertionError("the runner sent items that do not match the payload")
        request.results = tuple(results)


def _half(results: Iterable[ItemResult]) -> tuple[ItemResult, ...]:
    every = tuple(results)
    return every[: len(every) // 2]


def sheet_rows(spec: Sequence[tuple[str, str]]) -> list[SheetRow]:
    """Valid sheet rows from (currency, amount) pairs, keyed as intake keys them."""
    fields = [
        RowFields(
            recipient_email=f"person{n}@example.com",
            product_code=f"GC-{currency}",
            amount=Decimal(amount),
            currency=currency,
            recipient_name=f"Person {n}",
        )
        for n, (currency, amount) in enumerate(spec, start=1)
    ]
    keys = row_keys([(None, f) for f in fields])
    return [
        SheetRow(
            row_key=key,
            source_row=n,
            reference=None,
            content_hash=f.content_hash(),
            fields={
                "recipient_email": f.recipient_email,
                "product_code": f.product_code,
                "amount": str(f.amount),
                "currency": f.currency,
                "recipient_name": f.recipient_name,
            },
            passthrough={},
            currency=f.currency,
            face_value=f.amount,
            est_cost=None,
            valid=True,
        )
        for n, (key, f) in enumerate(zip(keys, fields, strict=True), start=2)
    ]
