"""The domain models and SecretStr behave as the pydantic ones they replaced (pydantic's
import was a sixth of `batcher validate`'s start-up): checked, coerced, frozen, dumpable."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from batcher.config import ProviderSettings, provider_settings
from batcher.core.models import AccountInfo, Balance, Campaign, Product, WalletTransaction
from batcher.core.secrets import SecretStr


def test_fields_are_coerced_as_pydantic_lax_mode_did() -> None:
    product = Product(product_code="A", currency="GBP", min_value=5, denominations=[1, "2.50"])
    assert product.min_value == Decimal(5) and isinstance(product.min_value, Decimal)
    assert product.denominations == (Decimal(1), Decimal("2.50"))
    assert Balance(currency="GBP", balance="10.00", available=10).balance == Decimal("10.00")


@pytest.mark.parametrize(
    "fields",
    [
        {"product_code": 1, "currency": "GBP"},  # not a string
        {"product_code": "A", "currency": "GBP", "discount": Decimal("NaN")},
        {"product_code": "A", "currency": "GBP", "max_value": "Infinity"},
        {"product_code": "A", "currency": "GBP", "min_value": "ten"},
        {"product_code": "A", "currency": "GBP", "is_active": "maybe"},
        {"product_code": "A", "currency": "GBP", "countries": "GB"},  # a string is no tuple
        {"product_code": "A", "currency": "GBP", "min_value": True},  # a bool is no amount
    ],
)
def test_a_wrong_value_is_a_value_error_naming_model_and_field(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="validation error for Product") as caught:
        Product(**fields)  # type: ignore[arg-type]
    (bad,) = set(fields) - {"product_code", "currency"} or {"product_code"}
    assert f"\n{bad}\n" in str(caught.value)


def test_models_are_frozen_hashable_and_copied_with_updates() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    debit = WalletTransaction(transaction_type="purchase", amount=Decimal("-5"), currency="GBP")
    with pytest.raises(dataclasses.FrozenInstanceError):
        debit.amount = Decimal(0)  # type: ignore[misc]
    later = debit.model_copy(update={"timestamp": at, "order_id": "o-1"})
    assert (later.timestamp, later.order_id, later.amount) == (at, "o-1", Decimal("-5"))
    assert debit == WalletTransaction(
        transaction_type="purchase", amount=Decimal("-5"), currency="GBP"
    )
    assert len({debit, later, debit.model_copy()}) == 2
    with pytest.raises(TypeError):
        Balance("GBP", Decimal(1), Decimal(1))  # type: ignore[misc]  # keywords only


def test_json_dump_writes_what_pydantic_wrote() -> None:
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    debit = WalletTransaction(
        transaction_type="t", amount=Decimal("-1.0"), currency="GBP", timestamp=moment
    )
    assert debit.model_dump_json() == (
        '{"transaction_type":"t","amount":"-1.0","currency":"GBP","order_id":null,'
        '"transaction_id":null,"reference":null,"timestamp":"2026-01-01T00:00:00Z",'
        '"description":""}'
    )
    campaign = Campaign(campaign_id="c-1", brands=("amazon", "tesco"))
    assert campaign.model_dump(mode="json") == {
        "campaign_id": "c-1",
        "title": "",
        "status": "",
        "brands": ["amazon", "tesco"],
    }
    account = AccountInfo(account_id="a", extra={"host": "h"})
    assert json.loads(account.model_dump_json())["extra"] == {"host": "h"}
    assert str(Balance(currency="GBP", balance=Decimal(1), available=Decimal(1))) == (
        "currency='GBP' balance=Decimal('1') available=Decimal('1')"
    )


def test_secret_never_shows_itself() -> None:
    secret = SecretStr("sk-live-123")
    assert (str(secret), repr(secret), f"{secret}") == (
        "**********",
        "SecretStr('**********')",
        "**********",
    )
    assert str(SecretStr("")) == "" and len(secret) == 11
    assert secret == SecretStr("sk-live-123") and secret != SecretStr("other")
    assert secret.get_secret_value() == "sk-live-123"
    settings = provider_settings("ugiftme", environ={"UGIFTME_API_KEY": "sk-live-123"})
    assert isinstance(settings, ProviderSettings) and settings.api_key == secret
    assert "sk-live-123" not in repr(settings) and "sk-live-123" not in str(settings.api_key)
