"""One UGiftMe business account's data: wallets, orders, order requests, webhooks."""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from batcher.core.money import round_money
from batcher.sandbox.common import iso_now, object_id
from batcher.sandbox.ugiftme.config import KEPT_ORDER_SEARCHES, UGiftMeSandboxConfig


@dataclass
class Wallet:
    id: str
    user_id: str
    currency: str
    balance: Decimal
    created_at: str
    updated_at: str
    holds: dict[str, Decimal] = field(default_factory=dict)  # order request id -> amount
    held: Decimal = Decimal(0)
    transactions: list[dict[str, Any]] = field(default_factory=list)  # oldest first

    @property
    def available(self) -> Decimal:
        return self.balance - self.held

    def place_hold(self, request_id: str, amount: Decimal) -> None:
        self.holds[request_id] = amount
        self.held += amount
        self.updated_at = iso_now()

    def release_hold(self, request_id: str) -> Decimal:
        amount = self.holds.pop(request_id, Decimal(0))
        self.held -= amount
        self.updated_at = iso_now()
        return amount

    def balance_json(self) -> dict[str, Any]:
        """The wallet's balance as UGiftMe names it, in the wallet, its webhook and the controls."""
        return {
            "currency": self.currency,
            "balance": self.balance,
            "availableBalance": self.available,
        }

    def as_json(self, recent: int = 20) -> dict[str, Any]:
        return {
            "_id": self.id,
            "userID": self.user_id,
            **self.balance_json(),
            "transactions": list(reversed(self.transactions[-recent:])),
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
        }


@dataclass
class StoredOrder:
    seq: int
    body: dict[str, Any]  # the full order, voucher code included
    cost: Decimal
    api_key: str
    idempotency_key: str | None
    order_request_id: str | None
    _created: tuple[str, datetime] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def listing(self) -> dict[str, Any]:
        """The order as list endpoints show it: bearer credentials removed."""
        merchant = {
            k: v
            for k, v in self.body["merchant"].items()
            if k not in {"voucherCode", "redemptionUrl"}
        }
        return {**self.body, "merchant": merchant}

    @property
    def created(self) -> datetime:
        """`createdAt` as an aware datetime, parsed again only if the string changed."""
        raw = self.body["createdAt"]
        if self._created is None or raw != self._created[0]:
            self._created = (raw, datetime.fromisoformat(raw.replace("Z", "+00:00")))
        return self._created[1]


OrderSearchKey = tuple[
    str, str, str, bool | None, bool | None, datetime | None, datetime | None
]  # sortBy, merchant, status, isActive, isPaid, startDate, endDate


class OrderListings:
    """One account's orders sorted for the listing endpoints, kept between page requests.

    Every list is in ascending ``(body[sortBy], seq)`` order; ``seq`` is unique, so
    the descending listing is exactly this list read backwards. Everything is
    dropped as soon as ``(account.orders_version, len(account.orders))`` moves: an
    order added, or `Account.orders_changed` called after an order's body changed.
    Only read and rebuilt from synchronous code on the event loop, like all state.
    """

    def __init__(self) -> None:
        self._stamp: tuple[int, int] | None = None
        self._ascending: dict[str, list[StoredOrder]] = {}
        self._searches: OrderedDict[OrderSearchKey, list[StoredOrder]] = OrderedDict()

    def _sync(self, account: Account) -> None:
        stamp = (account.orders_version, len(account.orders))
        if stamp != self._stamp:
            self._stamp = stamp
            self._ascending.clear()
            self._searches.clear()

    def ascending(self, account: Account, sort_by: str) -> list[StoredOrder]:
        """Every order by ``(body[sort_by], seq)``; shared, so never change the list."""
        self._sync(account)
        ordered = self._ascending.get(sort_by)
        if ordered is None:
            ordered = sorted(account.orders, key=lambda o: (o.body[sort_by], o.seq))
            self._ascending[sort_by] = ordered
        return ordered

    def search(
        self,
        account: Account,
        key: OrderSearchKey,
        compute: Callable[[], list[StoredOrder]],
    ) -> list[StoredOrder]:
        """The ascending result of one search, kept for its next pages (least recently
        used dropped first); shared, so never change the list."""
        self._sync(account)
        found = self._searches.get(key)
        if found is None:
            found = compute()
            self._searches[key] = found
            if len(self._searches) > KEPT_ORDER_SEARCHES:
                self._searches.popitem(last=False)
        else:
            self._searches.move_to_end(key)
        return found


RequestType = Literal["single", "bulk"]
RequestStatus = Literal["queued", "processing", "succeeded", "failed"]


@dataclass
class OrderRequest:
    id: str
    type: RequestType
    payload: Any
    currency: str | None
    hold: Decimal
    api_key: str
    idempotency_key: str | None
    order_count: int
    created_at: str
    updated_at: str
    status: RequestStatus = "queued"
    result: Any = None
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        # UGiftMe leaves out a result or an error it does not have yet, never sends null
        known = {"result": self.result, "error": self.error}
        return {
            "orderRequestId": self.id,
            "status": self.status,
            "type": self.type,
            **{key: value for key, value in known.items() if value is not None},
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
        }


@dataclass
class Webhook:
    id: str
    url: str
    events: list[str]
    description: str | None
    secret: str
    created_at: str
    updated_at: str
    is_active: bool = True

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "events": list(self.events),
            "description": self.description,
            "isActive": self.is_active,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
        }


@dataclass
class Account:
    api_key: str
    business_id: str
    user_id: str
    name: str
    email: str
    wallets: dict[str, Wallet] = field(default_factory=dict)
    orders: list[StoredOrder] = field(default_factory=list)
    orders_by_id: dict[str, StoredOrder] = field(default_factory=dict)
    transactions: list[dict[str, Any]] = field(default_factory=list)  # every currency
    requests: dict[str, OrderRequest] = field(default_factory=dict)
    webhooks: dict[str, Webhook] = field(default_factory=dict)
    ip_allow_list: list[str] | None = None
    profile_complete: bool = True
    # Bumped by `orders_changed`; the listings are rebuilt when it or len(orders) moves.
    orders_version: int = 0
    listings: OrderListings = field(default_factory=OrderListings, repr=False, compare=False)

    def orders_changed(self) -> None:
        """Call after adding an order or changing one's body: listings re-sort lazily."""
        self.orders_version += 1

    def wallet(self, currency: str) -> Wallet:
        """The wallet for a currency, created empty on first use."""
        wallet = self.wallets.get(currency)
        if wallet is None:
            now = iso_now()
            wallet = Wallet(object_id(), self.user_id, currency, Decimal(0), now, now)
            wallet.balance = round_money(Decimal(0), currency)
            self.wallets[currency] = wallet
        return wallet

    def ip_allowed(self, address: str) -> bool:
        if self.ip_allow_list is None:
            return True
        try:
            client = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(
            client in ipaddress.ip_network(entry, strict=False) for entry in self.ip_allow_list
        )


def new_account(api_key: str, index: int, config: UGiftMeSandboxConfig) -> Account:
    suffix = "" if index == 0 else f" #{index + 1}"
    account = Account(
        api_key=api_key,
        business_id=object_id(),
        user_id=object_id(),
        name=f"{config.business_name}{suffix}",
        email=f"finance+{index + 1}@sandbox-business.example",
    )
    for currency, amount in config.funding.items():
        account.wallet(currency).balance = round_money(Decimal(str(amount)), currency)
    return account
