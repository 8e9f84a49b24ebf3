"""The GIFQ business rules: charging, FX, orders, payout orders and their lifecycle."""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from batcher.core.money import cost_after_discount, round_money
from batcher.sandbox.base import SandboxCore
from batcher.sandbox.common import iso_now, iso_timestamp, money_input
from batcher.sandbox.gifq.callbacks import CallbackSender
from batcher.sandbox.gifq.catalog import Brand, ProductOption, fresh_redemption, load_catalog
from batcher.sandbox.gifq.config import (
    PAYOUT_FAILURE,
    UPSTREAM_FAILURE,
    GifqSandboxConfig,
    money_out,
)
from batcher.sandbox.gifq.errors import ApiError
from batcher.sandbox.gifq.parsing import PayoutRequest
from batcher.sandbox.gifq.state import (
    Account,
    FxCharge,
    Order,
    OrderParams,
    Payout,
    PayoutOrder,
    PayoutStatus,
    Recipient,
    seed_campaigns,
)


class GifqSandbox(SandboxCore):
    """All state of one sandbox server: accounts, catalog, limiter, faults, log."""

    # Set by `reset`, from the config or by the controls.
    catalog: dict[str, Brand]
    accounts: dict[str, Account]
    fx_rates: dict[str, Decimal]
    fx_fee_percent: Decimal
    max_recipients: int
    clamp_page_limit: bool
    payout_redeem_rate: float
    day_seconds: float
    _payout_rng: random.Random

    def __init__(self, config: GifqSandboxConfig) -> None:
        super().__init__(config)
        self.config = config
        self.callbacks = CallbackSender(config.callback_timeout_seconds)
        self.reset()

    def reset(self) -> None:
        config = self.config
        self.reset_core(config)
        self.callbacks.clear()
        self.catalog = load_catalog()
        self.fx_rates = {pair: money_input(rate) for pair, rate in config.fx_rates.items()}
        self.fx_fee_percent = money_input(config.fx_fee_percent)
        self.max_recipients = config.max_recipients
        self.clamp_page_limit = config.clamp_page_limit
        self.payout_redeem_rate = config.payout_redeem_rate
        self.day_seconds = config.day_seconds
        self._payout_rng = random.Random(config.seed)
        self.accounts = {key: self.new_account(key) for key in config.api_keys}

    def new_account(self, api_key: str) -> Account:
        account = Account(api_key, campaigns=seed_campaigns(iso_now()))
        for currency, raw in self.config.funding.items():
            amount = money_input(raw)  # already Decimal after __post_init__
            account.balances[currency] = round_money(Decimal(0), currency)
            if amount > 0:
                self.fund(account, currency, round_money(amount, currency))
        return account

    # -- money -------------------------------------------------------------------

    def _post(
        self,
        account: Account,
        kind: str,
        amount: Decimal,
        currency: str,
        **links: str | None,
    ) -> dict[str, Any]:
        """Move a balance by a signed amount and record the transaction."""
        balance = account.balance(currency) + amount
        account.balances[currency] = balance
        transaction: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "type": kind,
            "amount": money_out(amount, currency),
            "currency": currency,
        }
        transaction.update({name: value for name, value in links.items() if value is not None})
        transaction["balance_after"] = money_out(balance, currency)
        transaction["created_at"] = iso_now()
        account.transactions.append(transaction)
        return transaction

    def fund(self, account: Account, currency: str, amount: Decimal) -> None:
        self._post(account, "top_up", amount, currency)

    def set_balance(self, account: Account, currency: str, amount: Decimal) -> None:
        account.balances[currency] = amount

    def rate(self, source: str, target: str) -> Decimal:
        rate = self.fx_rates.get(f"{source}/{target}")
        if rate is None:
            raise ApiError(422, f"No exchange rate from {source} to {target}")
        return rate

    @staticmethod
    def _ensure_funds(account: Account, currency: str, required: Decimal) -> None:
        available = account.balance(currency)
        if available < required:
            raise ApiError(
                422,
                f"Insufficient balance: {money_out(required, currency)} {currency} required, "
                f"{money_out(available, currency)} {currency} available",
            )

    # -- orders ------------------------------------------------------------------

    def match_option(self, params: OrderParams) -> ProductOption:
        """The catalog option for brand, country, currency and face value, or 422."""
        brand = self.catalog.get(params.brand)
        if brand is None:
            raise ApiError(422, f"No product matches brand {params.brand!r}")
        located = [
            o
            for o in brand.options
            if o.currency == params.currency and params.country in o.countries
        ]
        if not located:
            raise ApiError(
                422,
                f"No {params.brand} product for country {params.country} "
                f"and currency {params.currency}",
            )
        for option in located:
            if option.admits(params.face_value):
                return option
        sold = ", ".join(o.describe_values() for o in located)
        raise ApiError(
            422,
            f"No {params.brand} product for face value {params.face_value} {params.currency} "
            f"in {params.country}; available: {sold}",
        )

    def place_order(
        self, account: Account, reference: str, params: OrderParams, request_id: str
    ) -> tuple[int, Order]:
        """201 with a new pending order, 200 with the order a reference already made, or 422."""
        existing = account.orders_by_reference.get(reference)
        if existing is not None:
            if existing.params != params:
                raise ApiError(422, "Reference already used with different parameters")
            return 200, existing
        option = self.match_option(params)
        if option.stock_count is not None and option.stock_count <= 0:
            raise ApiError(422, f"Out of stock: {params.brand} {option.describe_values()}")
        if self.faults.roll("reject_item"):
            raise ApiError(422, f"Out of stock: {params.brand} {option.describe_values()}")
        price = cost_after_discount(params.face_value, option.discount, params.currency)
        fx = self._fx_charge(price, params.currency, params.payment_currency)
        charged = fx.total_charged if fx else price
        self._ensure_funds(account, params.payment_currency, charged)
        order = self._create_order(account, reference, params, option, price, fx, request_id)
        self.schedule(lambda: self._finish_order(account, order))
        return 201, order

    def _fx_charge(self, price: Decimal, currency: str, paying: str) -> FxCharge | None:
        if paying == currency:
            return None
        rate = self.rate(currency, paying)
        converted = round_money(price * rate, paying)
        fee = round_money(converted * self.fx_fee_percent / 100, paying)
        return FxCharge(rate, self.fx_fee_percent, converted, fee, paying)

    def _create_order(
        self,
        account: Account,
        reference: str,
        params: OrderParams,
        option: ProductOption,
        price: Decimal,
        fx: FxCharge | None,
        request_id: str,
    ) -> Order:
        now = iso_now()
        order = Order(
            seq=self.next_seq(),
            id=str(uuid.uuid4()),
            reference=reference,
            params=params,
            option_id=option.id,
            price=price,
            discount=option.discount,
            fx=fx,
            api_key=account.api_key,
            request_id=request_id,
            created_at=now,
            updated_at=now,
        )
        if option.stock_count is not None:
            option.stock_count -= 1
        account.add_order(order)
        paying = params.payment_currency
        links = {"order_id": order.id, "reference": reference}
        self._post(account, "order", -(fx.converted if fx else price), paying, **links)
        if fx is not None and fx.fee_amount:
            self._post(account, "fx_fee", -fx.fee_amount, paying, **links)
        return order

    def _finish_order(self, account: Account, order: Order) -> None:
        order.updated_at = iso_now()
        if self.faults.roll("async_fail"):
            order.status = "failed"
            order.failure_reason = self.faults.echo(UPSTREAM_FAILURE, account.api_key)
            self._post(
                account,
                "refund",
                order.charged,
                order.params.payment_currency,
                order_id=order.id,
                reference=order.reference,
            )
            option = self._option(order.params.brand, order.option_id)
            if option is not None and option.stock_count is not None:
                option.stock_count += 1
            return
        order.status = "completed"
        order.redemption = fresh_redemption(self.catalog[order.params.brand].redemption_fields)

    def _option(self, brand: str, option_id: int) -> ProductOption | None:
        entry = self.catalog.get(brand)
        return next((o for o in entry.options if o.id == option_id), None) if entry else None

    def find_option(self, option_id: int) -> ProductOption | None:
        return next(
            (o for brand in self.catalog.values() for o in brand.options if o.id == option_id),
            None,
        )

    # -- payouts -----------------------------------------------------------------

    def place_payout_order(
        self, account: Account, request: PayoutRequest, idempotency_key: str | None
    ) -> PayoutOrder:
        """Check, charge and queue a payout order atomically, or 422 with nothing done."""
        campaign = account.campaigns.get(request.campaign_id)
        if campaign is None:
            raise ApiError(422, f"Campaign {request.campaign_id} not found")
        if campaign.status != "active":
            raise ApiError(
                422,
                f"Campaign {campaign.id} is {campaign.status}; payout orders need an active campaign",
            )
        wallet = request.wallet_currency
        recipients, rates = self._convert_recipients(request.recipients, wallet)
        total = sum((r.converted for r in recipients), round_money(Decimal(0), wallet))
        foreign = sum((r.converted for r in recipients if r.currency != wallet), Decimal(0))
        fee = round_money(foreign * self.fx_fee_percent / 100, wallet)
        self._ensure_funds(account, wallet, total + fee)
        now = iso_now()
        order = PayoutOrder(
            seq=self.next_seq(),
            id=str(uuid.uuid4()),
            campaign_id=campaign.id,
            wallet_currency=wallet,
            recipients=recipients,
            total_amount=total,
            fee_amount=fee,
            fx_rates=rates,
            fee_percentage=self.fx_fee_percent,
            expires_in_days=request.expires_in_days,
            callback_url=request.callback_url,
            api_key=account.api_key,
            idempotency_key=idempotency_key,
            created_at=now,
            updated_at=now,
        )
        account.add_payout_order(order)
        self._post(account, "payout", -total, wallet, payout_order_id=order.id)
        if fee:
            self._post(account, "fx_fee", -fee, wallet, payout_order_id=order.id)
        self.schedule(lambda: self._start_payout_order(account, order))
        return order

    def _convert_recipients(
        self, given: list[tuple[str, str | None, Decimal, str]], wallet: str
    ) -> tuple[list[Recipient], dict[str, Decimal]]:
        rates: dict[str, Decimal] = {}
        recipients = []
        for email, name, amount, currency in given:
            if currency == wallet:
                converted = round_money(amount, wallet)
            else:
                rates[currency] = rate = self.rate(currency, wallet)
                converted = round_money(amount * rate, wallet)
            recipients.append(Recipient(email, name, amount, currency, converted))
        return recipients, rates

    def _start_payout_order(self, account: Account, order: PayoutOrder) -> None:
        order.status = "processing"
        order.updated_at = iso_now()
        self.schedule(lambda: self._finish_payout_order(account, order))

    def _finish_payout_order(self, account: Account, order: PayoutOrder) -> None:
        failed = self.faults.roll("payout_fail")
        order.status = "failed" if failed else "completed"
        order.updated_at = now = iso_now()
        if failed:
            order.failure_reason = self.faults.echo(PAYOUT_FAILURE, account.api_key)
            self._post(
                account, "refund", order.charged, order.wallet_currency, payout_order_id=order.id
            )
        expires_at = _later(now, order.expires_in_days * self.day_seconds)
        for recipient in order.recipients:
            payout = Payout(
                seq=self.next_seq(),
                id=str(uuid.uuid4()),
                payout_order_id=order.id,
                recipient=recipient,
                status="failed" if failed else "sent",
                api_key=account.api_key,
                created_at=now,
                updated_at=now,
                expires_at=expires_at,
            )
            account.add_payout(payout)
            order.payout_ids.append(payout.id)
        self.callbacks.send(order)
        if failed:
            return
        if self.payout_redeem_rate > 0:
            self.schedule(lambda: self._redeem_some(account, order))
        self.schedule(
            lambda: self._expire(account, order), order.expires_in_days * self.day_seconds
        )

    def _redeem_some(self, account: Account, order: PayoutOrder) -> None:
        for payout_id in order.payout_ids:
            payout = account.payouts_by_id[payout_id]
            if payout.status == "sent" and self._payout_rng.random() < self.payout_redeem_rate:
                self.set_payout_status(payout, "redeemed")

    def _expire(self, account: Account, order: PayoutOrder) -> None:
        for payout_id in order.payout_ids:
            payout = account.payouts_by_id[payout_id]
            if payout.status == "sent":
                self.set_payout_status(payout, "expired")

    @staticmethod
    def set_payout_status(payout: Payout, status: PayoutStatus) -> None:
        payout.status = status
        payout.updated_at = iso_now()


def _later(stamp: str, seconds: float) -> str:
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return iso_timestamp(moment + timedelta(seconds=seconds))
