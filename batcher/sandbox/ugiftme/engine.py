"""The UGiftMe business rules: ordering, funding, the async queue and its events."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from batcher.core.money import round_money
from batcher.sandbox.base import SandboxCore
from batcher.sandbox.common import iso_now, iso_timestamp, object_id, ulid
from batcher.sandbox.ugiftme.catalog import (
    AcceptedItem,
    CatalogProduct,
    RejectedItem,
    check_item,
    load_catalog,
    voucher_code,
)
from batcher.sandbox.ugiftme.config import UGiftMeSandboxConfig
from batcher.sandbox.ugiftme.errors import ApiError
from batcher.sandbox.ugiftme.state import (
    Account,
    OrderRequest,
    RequestType,
    StoredOrder,
    Wallet,
    new_account,
)
from batcher.sandbox.ugiftme.webhooks import Hostility, WebhookDispatcher


def _hostility(config: UGiftMeSandboxConfig) -> Hostility:
    return Hostility(config.webhook_duplicate_rate, config.webhook_jitter_seconds, config.seed)


class UGiftMeSandbox(SandboxCore):
    """All state of one sandbox server: accounts, catalog, limiter, faults, log."""

    # Set by `reset`, from the config or by the controls.
    catalog: dict[str, CatalogProduct]
    accounts: dict[str, Account]
    async_mode: bool
    bulk_limit: int
    replay_errors: bool

    def __init__(self, config: UGiftMeSandboxConfig) -> None:
        super().__init__(config)
        self.config = config
        self.webhooks = WebhookDispatcher(self.scheduler, config.webhook_timeout_seconds)
        self.reset()

    def reset(self) -> None:
        config = self.config
        self.reset_core(config)
        self.webhooks.clear()
        self.webhooks.time_scale = config.webhook_time_scale
        self.webhooks.configure(_hostility(config))
        self.catalog = load_catalog()
        self.accounts = {
            key: new_account(key, index, config) for index, key in enumerate(config.api_keys)
        }
        self.async_mode = config.async_mode
        self.bulk_limit = config.bulk_limit
        self.replay_errors = config.idempotency_replay_errors

    # -- orders --------------------------------------------------------------

    def _issue_order(
        self,
        account: Account,
        accepted: AcceptedItem,
        idempotency_key: str | None,
        request_id: str | None,
    ) -> StoredOrder:
        """Create one order and charge its cost: one `purchase` transaction."""
        product, item = accepted.product, accepted.item
        now = datetime.now(UTC)
        stamp = iso_timestamp(now)
        order_id = object_id()
        email = item.get("recipientEmail") or None
        body = {
            "_id": order_id,
            "productCode": product.code,
            "merchant": {
                "name": product.merchant,
                "distributionMethod": "email" if email else "link",
                "voucherCode": voucher_code(),
                "redemptionUrl": f"https://redeem.ugift.me/v/{secrets.token_urlsafe(18)}",
            },
            "currency": product.currency,
            "valuePurchased": accepted.value,
            "status": "active",
            "isPaid": True,
            "isActive": True,
            "usageLimit": 1,
            "expiryDate": iso_timestamp(now + timedelta(days=365)),
            "giftOrder": {
                "message": item.get("giftMessage"),
                "recipientEmail": email,
                "recipientName": item.get("recipientName"),
            },
            "transactionId": f"txn_{ulid()}",
            "createdAt": stamp,
            "updatedAt": stamp,
            "imageUrl": product.image_url,
        }
        order = StoredOrder(
            self.next_seq(), body, accepted.cost, account.api_key, idempotency_key, request_id
        )
        account.orders.append(order)
        account.orders_by_id[order_id] = order
        account.orders_changed()
        self._record_purchase(account, order, product, stamp)
        return order

    def _record_purchase(
        self, account: Account, order: StoredOrder, product: CatalogProduct, stamp: str
    ) -> None:
        wallet = account.wallet(product.currency)
        wallet.balance -= order.cost
        wallet.updated_at = stamp
        description = f"{product.name} {order.body['valuePurchased']} {product.currency}"
        self._append_transaction(
            account, wallet, "purchase", order.cost, order.body["_id"], description, stamp
        )

    def _append_transaction(
        self,
        account: Account,
        wallet: Wallet,
        kind: str,
        value: Decimal,
        order_id: str | None,
        description: str,
        stamp: str,
    ) -> dict[str, Any]:
        transaction = {
            "_id": object_id(),
            "transactionType": kind,
            "transactionValue": value,
            "currency": wallet.currency,
            "orderID": order_id,
            "timestamp": stamp,
            "details": {"type": kind, "currency": wallet.currency, "description": description},
        }
        wallet.transactions.append(transaction)
        account.transactions.append(transaction)
        return transaction

    @staticmethod
    def _ensure_funds(account: Account, currency: str, required: Decimal) -> None:
        """402 unless the available balance (balance minus holds) covers `required`."""
        wallet = account.wallets.get(currency)
        available = wallet.available if wallet else round_money(Decimal(0), currency)
        if available < required:
            raise ApiError(
                402,
                "Insufficient funds",
                message=f"Available balance {available} {currency} is less than {required}",
                required=required,
                available=available,
                currency=currency,
            )

    def place_single_sync(self, account: Account, payload: Any, key: str | None) -> tuple[int, Any]:
        checked = check_item(payload, self.catalog)
        if isinstance(checked, RejectedItem):
            raise ApiError(400, checked.error, message=checked.reason)
        self._ensure_funds(account, checked.product.currency, checked.cost)
        order = self._issue_order(account, checked, key, None)
        wallet = account.wallet(checked.product.currency)
        self._emit_wallet(account, wallet, "purchase", account.transactions[-1])
        return 201, order.body

    def place_bulk_sync(self, account: Account, payload: Any, key: str | None) -> tuple[int, Any]:
        items, currency = self._bulk_shape(payload)
        accepted, rejected = self._screen(items, with_faults=True)
        self._ensure_funds(account, currency, sum((a.cost for a in accepted), Decimal(0)))
        orders = [self._issue_order(account, a, key, None) for a in accepted]
        if orders:
            self._emit_wallet(account, account.wallet(currency), "purchase", None)
        return 201, self._bulk_result(account, orders, rejected, currency)

    def _bulk_shape(self, payload: Any) -> tuple[list[Any], str]:
        """Request-level checks: an `orders` array within the limit, one currency."""
        orders = payload.get("orders") if isinstance(payload, Mapping) else None
        if not isinstance(orders, list) or not orders:
            raise ApiError(400, "Validation failed", message="orders must be a non-empty array")
        if len(orders) > self.bulk_limit:
            raise ApiError(
                400,
                "Too many orders",
                message=f"A bulk request may hold at most {self.bulk_limit} orders; got {len(orders)}",
            )
        currencies = {
            o["currency"]
            for o in orders
            if isinstance(o, Mapping) and isinstance(o.get("currency"), str)
        }
        if len(currencies) > 1:
            raise ApiError(
                400,
                "Mixed currencies",
                message=f"All orders in a bulk request must share one currency; got {', '.join(sorted(currencies))}",
            )
        if not currencies:
            raise ApiError(400, "Validation failed", message="currency is required")
        return orders, currencies.pop()

    def _screen(
        self, items: Iterable[Any], *, with_faults: bool
    ) -> tuple[list[AcceptedItem], list[RejectedItem]]:
        accepted: list[AcceptedItem] = []
        rejected: list[RejectedItem] = []
        for item in items:
            checked = check_item(item, self.catalog)
            if isinstance(checked, RejectedItem):
                rejected.append(checked)
            elif with_faults and self.faults.roll("reject_item"):
                rejected.append(RejectedItem(checked.product.code, "Out of stock", "Out of stock"))
            else:
                accepted.append(checked)
        return accepted, rejected

    def _bulk_result(
        self,
        account: Account,
        orders: list[StoredOrder],
        rejected: list[RejectedItem],
        currency: str,
    ) -> dict[str, Any]:
        total = sum((o.body["valuePurchased"] for o in orders), Decimal(0))
        wallet = account.wallets.get(currency)
        return {
            "success": True,
            "orders": [o.body for o in orders],
            "summary": {
                "totalOrders": len(orders),
                "totalValue": round_money(total, currency),
                "currency": currency,
                "remainingBalance": wallet.balance if wallet else round_money(Decimal(0), currency),
            },
            "rejectedOrders": [
                {**r.as_json(), "reason": self.faults.echo(r.reason, account.api_key)}
                for r in rejected
            ],
        }

    # -- async order requests --------------------------------------------------

    def accept_async(
        self, account: Account, kind: RequestType, payload: Any, key: str | None
    ) -> tuple[int, Any]:
        """Queue an order request: shape checks and the hold happen now, the rest later."""
        currency: str | None
        if kind == "bulk":
            items, currency = self._bulk_shape(payload)
        else:
            if not isinstance(payload, Mapping):
                raise ApiError(400, "Validation failed", message="the order must be a JSON object")
            items = [payload]
            given = payload.get("currency")
            currency = given if isinstance(given, str) else None
        accepted, _ = self._screen(items, with_faults=False)
        hold = sum((a.cost for a in accepted), Decimal(0))
        if accepted:  # every accepted item has the product's (a real) currency
            currency = accepted[0].product.currency
            self._ensure_funds(account, currency, hold)
        now = iso_now()
        request = OrderRequest(
            object_id(), kind, payload, currency, hold, account.api_key, key, len(items), now, now
        )
        account.requests[request.id] = request
        wallet = account.wallet(currency) if accepted and currency else None
        if wallet is not None:
            wallet.place_hold(request.id, hold)
        self._emit_request(account, request, "order.queued")
        if wallet is not None:
            self._emit_wallet(account, wallet, "hold", None)
        self.schedule(lambda: self._start_processing(account, request.id))
        return 202, {"orderRequestId": request.id, "status": "queued"}

    def _start_processing(self, account: Account, request_id: str) -> None:
        request = account.requests[request_id]
        request.status = "processing"
        request.updated_at = iso_now()
        self._emit_request(account, request, "order.processing")
        self.schedule(lambda: self._finish(account, request_id))

    def _finish(self, account: Account, request_id: str) -> None:
        request = account.requests[request_id]
        wallet = account.wallets.get(request.currency or "")
        if wallet is not None:
            wallet.release_hold(request.id)
        if self.faults.roll("async_fail"):
            self._fail(
                account,
                request,
                wallet,
                "Upstream supplier error: the order could not be fulfilled",
            )
            return
        try:
            request.result = self._fulfil(account, request)
        except ApiError as exc:
            self._fail(account, request, wallet, exc.body.get("message") or exc.body["error"])
            return
        request.status = "succeeded"
        request.updated_at = iso_now()
        self._emit_request(account, request, "order.succeeded")
        if wallet is not None:
            self._emit_wallet(account, wallet, "purchase", None)

    def _fulfil(self, account: Account, request: OrderRequest) -> Any:
        if request.type == "single":
            checked = check_item(request.payload, self.catalog)
            if isinstance(checked, RejectedItem):
                raise ApiError(400, checked.error, message=checked.reason)
            self._require_available(account, checked.product.currency, checked.cost)
            return self._issue_order(account, checked, request.idempotency_key, request.id).body
        assert request.currency is not None
        accepted, rejected = self._screen(request.payload["orders"], with_faults=True)
        self._require_available(
            account, request.currency, sum((a.cost for a in accepted), Decimal(0))
        )
        orders = [
            self._issue_order(account, a, request.idempotency_key, request.id) for a in accepted
        ]
        return self._bulk_result(account, orders, rejected, request.currency)

    def _require_available(self, account: Account, currency: str, required: Decimal) -> None:
        """The worker's funding check, worded as the contract's `error` example."""
        try:
            self._ensure_funds(account, currency, required)
        except ApiError as exc:
            message = (
                f"Insufficient available balance: required {required} {currency}, "
                f"available {exc.body['available']} {currency}"
            )
            raise ApiError(402, "Insufficient funds", message=message) from None

    def _fail(
        self, account: Account, request: OrderRequest, wallet: Wallet | None, error: str
    ) -> None:
        request.status = "failed"
        request.error = self.faults.echo(error, account.api_key)
        request.updated_at = iso_now()
        self._emit_request(account, request, "order.failed")
        if wallet is not None and request.hold > 0:
            self._emit_wallet(account, wallet, "hold_release", None)

    # -- events ----------------------------------------------------------------

    def _emit_request(self, account: Account, request: OrderRequest, event: str) -> None:
        data: dict[str, Any] = {"orderRequestId": request.id, "status": request.status}
        if event != "order.failed":
            data["type"] = request.type
        if event == "order.queued":
            data["orderCount"] = request.order_count
        if event == "order.succeeded":
            data["result"] = request.result
        if event == "order.failed":
            data["error"] = request.error
        data["timestamp"] = iso_now()
        self.webhooks.emit(account, event, data)

    def _emit_wallet(
        self, account: Account, wallet: Wallet, source: str, transaction: Mapping[str, Any] | None
    ) -> None:
        data: dict[str, Any] = {
            "userId": account.user_id,
            **wallet.balance_json(),
            "source": source,
        }
        if transaction is not None:
            data["transaction"] = dict(transaction)
        data["timestamp"] = iso_now()
        self.webhooks.emit(account, "wallet.updated", data)

    def emit_product_updated(self, product: CatalogProduct, changes: list[str]) -> None:
        data = {
            "productCode": product.code,
            "changes": changes,
            "product": product.as_json(),
            "timestamp": iso_now(),
        }
        for account in self.accounts.values():
            self.webhooks.emit(account, "product.updated", data)

    # -- wallets (controls) ------------------------------------------------------

    def fund(self, account: Account, currency: str, amount: Decimal) -> Wallet:
        wallet = account.wallet(currency)
        wallet.balance += amount
        stamp = iso_now()
        wallet.updated_at = stamp
        transaction = self._append_transaction(
            account, wallet, "funding", amount, None, "Sandbox funding", stamp
        )
        self._emit_wallet(account, wallet, "funding", transaction)
        return wallet

    def set_balance(self, account: Account, currency: str, balance: Decimal) -> Wallet:
        wallet = account.wallet(currency)
        wallet.balance = balance
        wallet.updated_at = iso_now()
        self._emit_wallet(account, wallet, "adjustment", None)
        return wallet
