"""The UGiftMe catalog and the check of one order item against it."""

from __future__ import annotations

import importlib.resources
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from batcher.core.money import cost_after_discount, fits_currency, round_money
from batcher.sandbox.common import iso_now
from batcher.sandbox.jsonio import decode_json
from batcher.sandbox.ugiftme.config import EMAIL_PATTERN, VOUCHER_ALPHABET


@dataclass(frozen=True)
class CatalogProduct:
    code: str
    name: str
    merchant: str
    currency: str
    countries: tuple[str, ...]
    category: str
    min_value: Decimal
    max_value: Decimal
    denominations: tuple[Decimal, ...]
    discount: Decimal
    is_active: bool
    image_url: str
    updated_at: str

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> CatalogProduct:
        return cls(
            code=raw["productCode"],
            name=raw["name"],
            merchant=raw["merchant"],
            currency=raw["currency"],
            countries=tuple(raw.get("countries", ())),
            category=raw["category"],
            min_value=Decimal(raw["minValue"]),
            max_value=Decimal(raw["maxValue"]),
            denominations=tuple(Decimal(d) for d in raw.get("denominations", ())),
            discount=Decimal(raw.get("discount", 0)),
            is_active=bool(raw.get("isActive", True)),
            image_url=raw.get("imageUrl", ""),
            updated_at=raw.get("updatedAt", iso_now()),
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "productCode": self.code,
            "name": self.name,
            "merchant": self.merchant,
            "currency": self.currency,
            "countries": list(self.countries),
            "category": self.category,
            "minValue": self.min_value,
            "maxValue": self.max_value,
            "denominations": list(self.denominations),
            "discount": self.discount,
            "isActive": self.is_active,
            "imageUrl": self.image_url,
            "updatedAt": self.updated_at,
        }

    def value_problem(self, value: Decimal) -> str | None:
        """Why a face value is not allowed for this product, or None when it is."""
        if value <= 0:
            return "valuePurchased must be positive"
        if not fits_currency(value, self.currency):
            return f"valuePurchased {value} has too many decimals for {self.currency}"
        if self.denominations:
            if value not in self.denominations:
                allowed = ", ".join(str(d) for d in self.denominations)
                return f"valuePurchased {value} is not an allowed denomination ({allowed})"
            return None
        if not self.min_value <= value <= self.max_value:
            return f"valuePurchased {value} is outside {self.min_value}..{self.max_value}"
        return None


def load_catalog() -> dict[str, CatalogProduct]:
    """The shipped catalog, with money read as Decimal from the raw JSON text."""
    text = (
        importlib.resources.files("batcher.sandbox")
        .joinpath("data/ugiftme_catalog.json")
        .read_text(encoding="utf-8")
    )
    products = [CatalogProduct.from_json(raw) for raw in decode_json(text)]
    return {product.code: product for product in products}


@dataclass(frozen=True)
class AcceptedItem:
    item: Mapping[str, Any]
    product: CatalogProduct
    value: Decimal
    cost: Decimal


@dataclass(frozen=True)
class RejectedItem:
    product_code: str | None
    error: str  # short category, the 400 `error`
    reason: str  # the detail, the 400 `message` and the bulk `reason`

    def as_json(self) -> dict[str, Any]:
        return {"productCode": self.product_code, "reason": self.reason}


ItemCheck = AcceptedItem | RejectedItem


def check_item(item: Any, catalog: Mapping[str, CatalogProduct]) -> ItemCheck:
    """Validate one order item against the contract and the catalog."""
    if not isinstance(item, Mapping):
        return RejectedItem(None, "Validation failed", "each order must be a JSON object")
    code = item.get("productCode")
    code_or_none = code if isinstance(code, str) else None
    shape = _shape_problem(item)
    if shape:
        return RejectedItem(code_or_none, "Validation failed", shape)
    assert isinstance(code, str)
    product = catalog.get(code)
    if product is None:
        return RejectedItem(code, "Product not found", f"Product {code} not found")
    if not product.is_active:
        return RejectedItem(code, "Product inactive", f"Product {code} is not active")
    if item["merchant"].strip().casefold() != product.merchant.casefold():
        reason = f"Merchant {item['merchant']!r} does not match product {code} ({product.merchant})"
        return RejectedItem(code, "Merchant mismatch", reason)
    if item["currency"] != product.currency:
        reason = f"Currency {item['currency']} does not match product {code} ({product.currency})"
        return RejectedItem(code, "Currency mismatch", reason)
    value = Decimal(item["valuePurchased"])
    problem = product.value_problem(value)
    if problem:
        return RejectedItem(code, "Invalid value", problem)
    value = round_money(value, product.currency)
    cost = cost_after_discount(value, product.discount, product.currency)
    return AcceptedItem(item, product, value, cost)


def _shape_problem(item: Mapping[str, Any]) -> str | None:
    for name in ("productCode", "merchant", "currency"):
        value = item.get(name)
        if not isinstance(value, str) or not value.strip():
            return f"{name} is required and must be a non-empty string"
    value = item.get("valuePurchased")
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        return "valuePurchased is required and must be a number"
    for name in ("recipientEmail", "recipientName", "giftMessage"):
        if item.get(name) is not None and not isinstance(item[name], str):
            return f"{name} must be a string"
    email = item.get("recipientEmail")
    if email and not EMAIL_PATTERN.match(email):
        return f"recipientEmail {email!r} is not a valid email address"
    return None


def voucher_code() -> str:
    groups = ("".join(secrets.choice(VOUCHER_ALPHABET) for _ in range(4)) for _ in range(4))
    return "-".join(groups)
