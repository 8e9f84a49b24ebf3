"""One GIFQ account's data: balances, orders, campaigns, payout orders and payouts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any, Literal

from batcher.core.money import round_money
from batcher.sandbox.gifq.config import money_out


@dataclass(frozen=True)
class FxCharge:
    """A conversion into the paying currency: price x rate, plus the fee."""

    rate: Decimal
    fee_percentage: Decimal
    converted: Decimal
    fee_amount: Decimal
    currency: str

    @property
    def total_charged(self) -> Decimal:
        return self.converted + self.fee_amount

    def as_json(self) -> dict[str, Any]:
        return {
            "rate": str(self.rate),
            "fee_percentage": str(self.fee_percentage),
            "fee_amount": money_out(self.fee_amount, self.currency),
            "total_charged": money_out(self.total_charged, self.currency),
            "currency": self.currency,
        }


OrderStatus = Literal["pending", "completed", "failed"]


@dataclass(frozen=True)
class OrderParams:
    """What a reference is bound to; two requests match when these are equal
    (face values compare as numbers: 25 == 25.00)."""

    brand: str
    currency: str
    face_value: Decimal
    country: str
    payment_currency: str  # equals currency when there is no conversion


@dataclass
class Order:
    seq: int
    id: str
    reference: str
    params: OrderParams
    option_id: int
    price: Decimal
    discount: Decimal
    fx: FxCharge | None
    api_key: str
    request_id: str
    created_at: str
    updated_at: str
    status: OrderStatus = "pending"
    failure_reason: str | None = None
    redemption: dict[str, str] | None = None

    @property
    def charged(self) -> Decimal:
        return self.fx.total_charged if self.fx else self.price

    def as_json(self, *, with_redemption: bool) -> dict[str, Any]:
        p = self.params
        body: dict[str, Any] = {
            "id": self.id,
            "reference": self.reference,
            "status": self.status,
            "brand": p.brand,
            "currency": p.currency,
            "face_value": money_out(p.face_value, p.currency),
            "country": p.country,
            "price": money_out(self.price, p.currency),
            "discount": str(self.discount),
            "payment_currency": p.payment_currency,
        }
        if self.fx is not None:
            body["fx_fee"] = self.fx.as_json()
        body["created_at"] = self.created_at
        body["updated_at"] = self.updated_at
        if self.failure_reason is not None:
            body["failure_reason"] = self.failure_reason
        if with_redemption and self.redemption is not None:
            body["redemption"] = dict(self.redemption)
        return body


@dataclass
class Campaign:
    id: int
    title: str
    status: str
    brands: list[str]
    created_at: str
    updated_at: str

    def as_json(self) -> dict[str, Any]:
        # GIFQ names a campaign's keys as its fields are named, in the same order
        return asdict(self)


@dataclass(frozen=True)
class Recipient:
    email: str
    name: str | None
    amount: Decimal
    currency: str
    converted: Decimal  # in the wallet currency

    def as_json(self) -> dict[str, Any]:
        return {
            "email": self.email,
            "name": self.name,
            "amount": money_out(self.amount, self.currency),
            "currency": self.currency,
        }


PayoutOrderStatus = Literal["queued", "processing", "completed", "failed"]
PayoutStatus = Literal["sent", "redeemed", "expired", "failed"]


@dataclass
class Payout:
    seq: int
    id: str
    payout_order_id: str
    recipient: Recipient
    status: PayoutStatus
    api_key: str
    created_at: str
    updated_at: str
    expires_at: str

    def as_json(self) -> dict[str, Any]:
        r = self.recipient
        return {
            "id": self.id,
            "payout_order_id": self.payout_order_id,
            "email": r.email,
            "name": r.name,
            "amount": money_out(r.amount, r.currency),
            "currency": r.currency,
            "status": self.status,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "expires_at": self.expires_at,
        }


@dataclass
class PayoutOrder:
    seq: int
    id: str
    campaign_id: int
    wallet_currency: str
    recipients: list[Recipient]
    total_amount: Decimal  # converted sum, before the fee
    fee_amount: Decimal
    fx_rates: dict[str, Decimal]  # foreign currency -> rate into the wallet currency
    fee_percentage: Decimal
    expires_in_days: int
    callback_url: str | None
    api_key: str
    idempotency_key: str | None
    created_at: str
    updated_at: str
    status: PayoutOrderStatus = "queued"
    failure_reason: str | None = None
    payout_ids: list[str] = field(default_factory=list)

    @property
    def charged(self) -> Decimal:
        return self.total_amount + self.fee_amount

    def as_json(self) -> dict[str, Any]:
        cur = self.wallet_currency
        body: dict[str, Any] = {
            "id": self.id,
            "campaign_id": self.campaign_id,
            "status": self.status,
            "recipient_count": len(self.recipients),
            "total_amount": money_out(self.total_amount, cur),
            "wallet_currency": cur,
            "expires_in_days": self.expires_in_days,
            "callback_url": self.callback_url,
        }
        if self.fx_rates:
            body["fx_fee"] = {
                "rates": {c: str(r) for c, r in sorted(self.fx_rates.items())},
                "fee_percentage": str(self.fee_percentage),
                "fee_amount": money_out(self.fee_amount, cur),
                "total_charged": money_out(self.charged, cur),
                "currency": cur,
            }
        if self.failure_reason is not None:
            body["failure_reason"] = self.failure_reason
        body["created_at"] = self.created_at
        body["updated_at"] = self.updated_at
        return body


@dataclass
class Account:
    api_key: str
    balances: dict[str, Decimal] = field(default_factory=dict)
    transactions: list[dict[str, Any]] = field(default_factory=list)  # oldest first
    orders: list[Order] = field(default_factory=list)  # oldest first
    orders_by_id: dict[str, Order] = field(default_factory=dict)
    orders_by_reference: dict[str, Order] = field(default_factory=dict)
    payout_orders: list[PayoutOrder] = field(default_factory=list)
    payout_orders_by_id: dict[str, PayoutOrder] = field(default_factory=dict)
    payouts: list[Payout] = field(default_factory=list)
    payouts_by_id: dict[str, Payout] = field(default_factory=dict)
    campaigns: dict[int, Campaign] = field(default_factory=dict)

    def balance(self, currency: str) -> Decimal:
        return self.balances.get(currency, round_money(Decimal(0), currency))

    # Each record goes into its list and its indexes together, so lookups never miss one.
    def add_order(self, order: Order) -> None:
        self.orders.append(order)
        self.orders_by_id[order.id] = order
        self.orders_by_reference[order.reference] = order

    def add_payout_order(self, order: PayoutOrder) -> None:
        self.payout_orders.append(order)
        self.payout_orders_by_id[order.id] = order

    def add_payout(self, payout: Payout) -> None:
        self.payouts.append(payout)
        self.payouts_by_id[payout.id] = payout


def seed_campaigns(now: str) -> dict[int, Campaign]:
    seeds = [
        (101, "Employee thank-you", "active",
         ["amazon", "john-lewis", "netflix", "spotify", "starbucks", "uber", "zalando"]),
        (102, "Customer referral rewards", "active",
         ["amazon", "apple", "google-play", "ikea", "nike", "steam"]),
        (103, "Holiday gifts 2025", "paused", ["amazon", "argos", "boots", "tesco"]),
        (104, "Spring incentive", "draft", ["adidas", "decathlon", "nike"]),
        (105, "Summer promo 2024", "archived", ["airbnb", "uber"]),
    ]  # fmt: skip
    return {
        cid: Campaign(cid, title, status, brands, now, now) for cid, title, status, brands in seeds
    }
