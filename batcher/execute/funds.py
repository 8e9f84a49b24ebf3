"""The one funds rule: is each paying wallet funded for the rows about to be ordered?

`batcher validate` (through `check_sheet`) and `batcher run` both ask `check_funds`,
so a run refuses to start exactly when validate says "not funded", in the same
words. Pure: the caller fetches the balances and the FX quotes.

A row is paid from its **paying** wallet: `payment_currency` when set (a GIFQ
cross-currency order), else its own currency. A cross-currency cost is the
card's cost converted at the last rate the provider reported, plus its FX fee,
plus `FX_SAFETY_MARGIN` (the rate moves between the check and the order),
rounded up to the paying currency's minor unit. With no rate known (no such
order yet), the row's cost cannot be known: both commands say its funds are
*not verified*, never "OK"; neither refuses for it, since the provider refuses a
short wallet atomically (the run then holds the wallet's rows and exits 3).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import Protocol, runtime_checkable

from batcher.core.fields import SOURCE_ROW
from batcher.core.models import Balance, FxQuote
from batcher.core.money import format_money, quantum
from batcher.intake.validate import Funding, FundingError, ValidationResult

#: added on top of the last reported rate and fee: GIFQ converts at the rate of the
#: moment it charges, which may have moved since the last order that reported one
FX_SAFETY_MARGIN = Decimal("0.02")
ZERO = Decimal(0)


@runtime_checkable
class FxRateSource(Protocol):
    """A provider that can say the last FX rates it charged (GIFQ)."""

    def fx_rates(self) -> list[FxQuote]: ...


@dataclass(frozen=True)
class Need:
    """One row's claim on a wallet."""

    source_row: int
    row_key: str
    currency: str  # the card's currency
    cost: Decimal  # in the card's currency, after discount
    paying: str  # the wallet that pays: payment_currency, else the card's currency


def funds_need(
    source_row: int,
    row_key: str,
    currency: str,
    face_value: Decimal,
    est_cost: Decimal | None,
    paying: str | None,
) -> Need:
    """A ledger row's claim: its estimated cost (its face value when it has none, or
    none above zero), paid from its `payment_currency` wallet, else its own currency's."""
    return Need(source_row, row_key, currency, est_cost or face_value, paying or currency)


@dataclass(frozen=True)
class ShortWallet(FundingError):
    """A paying wallet short of funds; `basis` says how cross-currency costs were reckoned."""

    basis: str = ""

    @property
    def message(self) -> str:
        text = super().message
        return f"{text} ({self.basis})" if self.basis else text


@dataclass(frozen=True)
class RateUnknown:
    """Rows paid from a wallet in another currency, at a rate the provider never reported."""

    source: str
    wallet: str
    rows: int

    @property
    def message(self) -> str:
        return (
            f"funds not verified for {self.rows} {self.source} card(s) paid from the "
            f"{self.wallet} wallet: the provider has reported no {self.source}→{self.wallet} "
            "rate yet, so their cost is unknown"
        )


@dataclass(frozen=True)
class FundsCheck:
    """The verdict on every paying wallet, and which rows fit, in sheet order."""

    needed: dict[str, Decimal]  # per paying wallet, rows with a known cost only
    available: dict[str, Decimal]
    errors: tuple[FundingError, ...]
    unverified: tuple[RateUnknown, ...]  # rows whose cost no known rate gives
    #: per paying wallet, the known cost of the fundable part (what a run would spend)
    fundable_cost: dict[str, Decimal]
    #: row keys that fit their wallet, taking rows in sheet order (the fundable part)
    fundable: frozenset[str]
    #: rows left out of the fundable part: (source row, row key, paying wallet)
    left_out: tuple[Need, ...]

    @property
    def funded(self) -> bool:
        return not self.errors


def paying_cost(need: Need, quotes: Mapping[tuple[str, str], FxQuote]) -> Decimal | None:
    """What the paying wallet is charged for the row; None when no rate is known."""
    if need.paying == need.currency:
        return need.cost
    quote = quotes.get((need.currency, need.paying))
    if quote is None:
        return None
    factor = quote.rate * (1 + quote.fee_percent / 100) * (1 + FX_SAFETY_MARGIN)
    return (need.cost * factor).quantize(quantum(need.paying), rounding=ROUND_CEILING)


def check_funds(
    needs: Sequence[Need],
    balances: Iterable[Balance],
    quotes: Iterable[FxQuote] = (),
) -> FundsCheck:
    """Funds per paying wallet for `needs`, and the fundable part in sheet order."""
    available = {b.currency.upper(): b.available for b in balances}
    by_pair = {(q.source.upper(), q.paying.upper()): q for q in quotes}
    needed: dict[str, Decimal] = {}
    unknown: dict[tuple[str, str], int] = {}
    remaining = dict(available)
    fundable: set[str] = set()
    left_out: list[Need] = []
    cross: dict[str, set[tuple[str, str]]] = {}
    fundable_cost: dict[str, Decimal] = {}
    for need in sorted(needs, key=lambda n: n.source_row):
        cost = paying_cost(need, by_pair)
        if cost is None:
            pair = (need.currency, need.paying)
            unknown[pair] = unknown.get(pair, 0) + 1
            fundable.add(need.row_key)  # not refused: the provider refuses a short wallet
            continue
        if need.paying != need.currency:
            cross.setdefault(need.paying, set()).add((need.currency, need.paying))
        needed[need.paying] = needed.get(need.paying, ZERO) + cost
        # Sheet order, greedy: a row that does not fit is left out, later smaller ones may fit.
        if cost <= remaining.get(need.paying, ZERO):
            remaining[need.paying] -= cost
            fundable.add(need.row_key)
            fundable_cost[need.paying] = fundable_cost.get(need.paying, ZERO) + cost
        else:
            left_out.append(need)
    errors: list[FundingError] = []
    for wallet in sorted(needed):
        have = available.get(wallet, ZERO)
        if needed[wallet] > have:
            basis = _basis(sorted(cross.get(wallet, ())), by_pair)
            errors.append(
                ShortWallet(
                    wallet, needed[wallet], have, has_wallet=wallet in available, basis=basis
                )
            )
    return FundsCheck(
        needed=needed,
        available=available,
        errors=tuple(errors),
        unverified=tuple(RateUnknown(s, w, n) for (s, w), n in sorted(unknown.items())),
        fundable_cost=fundable_cost,
        fundable=frozenset(fundable),
        left_out=tuple(left_out),
    )


def _basis(pairs: Sequence[tuple[str, str]], quotes: Mapping[tuple[str, str], FxQuote]) -> str:
    parts = []
    for source, wallet in pairs:
        q = quotes[(source, wallet)]
        parts.append(
            f"{source} cards at the last reported rate {q.rate} {wallet}/{source} plus "
            f"{q.fee_percent}% FX fee and a {FX_SAFETY_MARGIN * 100:.0f}% safety margin"
        )
    return "; ".join(parts)


def left_out_message(check: FundsCheck) -> str:
    """What --order-fundable left out, per paying wallet, for the operator and the report."""
    per_wallet: dict[str, list[int]] = {}
    for need in check.left_out:
        per_wallet.setdefault(need.paying, []).append(need.source_row)
    parts = []
    for wallet, rows in sorted(per_wallet.items()):
        shown = ", ".join(str(r) for r in rows[:10]) + (" ..." if len(rows) > 10 else "")
        have = check.available.get(wallet, ZERO)
        parts.append(
            f"insufficient funds: {len(rows)} row(s) paid from the {wallet} wallet left out "
            f"(available {format_money(have, wallet)}; rows {shown})"
        )
    return "; ".join(parts)


def with_paying_wallets(result: ValidationResult, check: FundsCheck) -> ValidationResult:
    """`result` with its funds figures per paying wallet, as `check` found them."""
    cost_by_currency = dict(sorted(check.needed.items()))
    funding = Funding(cost_by_currency, result.funding.available_by_currency, check.errors)
    return dataclasses.replace(result, funding=funding)


def needs_of_valid_rows(result: ValidationResult) -> list[Need]:
    """The valid rows of a validated sheet as claims on their paying wallets.

    A validated sheet has no row keys yet (the ledger gives them): the source row
    stands in, which is all `batcher validate` needs.
    """
    frame = result.valid
    paying = (
        frame["payment_currency"].to_list()
        if "payment_currency" in frame.columns
        else [None] * frame.height
    )
    needs = []
    for source_row, currency, cost, pay in zip(
        frame[SOURCE_ROW].to_list(), frame["currency"].to_list(), frame["cost"].to_list(),
        paying, strict=True,
    ):  # fmt: skip
        needs.append(
            Need(int(source_row), str(source_row), currency, Decimal(cost), (pay or currency))
        )
    return needs
