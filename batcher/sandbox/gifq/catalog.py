"""The GIFQ catalog: brands, their product options and fresh redemption credentials."""

from __future__ import annotations

import importlib.resources
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from batcher.core.money import fits_currency
from batcher.sandbox.gifq.config import CODE_ALPHABET
from batcher.sandbox.jsonio import decode_json


@dataclass
class ProductOption:
    id: int
    brand: str
    currency: str
    countries: tuple[str, ...]
    min_face_value: Decimal
    max_face_value: Decimal
    discount: Decimal
    stock_count: int | None
    expiry: str | None
    balance_check_url: str | None

    @classmethod
    def from_json(cls, brand: str, raw: Mapping[str, Any]) -> ProductOption:
        return cls(
            id=int(raw["id"]),
            brand=brand,
            currency=raw["currency"],
            countries=tuple(raw["countries"]),
            min_face_value=Decimal(raw["min_face_value"]),
            max_face_value=Decimal(raw["max_face_value"]),
            discount=Decimal(raw["discount"]),
            stock_count=raw.get("stock_count"),
            expiry=raw.get("expiry"),
            balance_check_url=raw.get("balance_check_url"),
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "min_face_value": self.min_face_value,
            "max_face_value": self.max_face_value,
            "countries": list(self.countries),
            "currency": self.currency,
            "discount": self.discount,
            "stock_count": self.stock_count,
            "expiry": self.expiry,
            "balance_check_url": self.balance_check_url,
        }

    def admits(self, face_value: Decimal) -> bool:
        return self.min_face_value <= face_value <= self.max_face_value and fits_currency(
            face_value, self.currency
        )

    def describe_values(self) -> str:
        if self.min_face_value == self.max_face_value:
            return f"{self.min_face_value} {self.currency}"
        return f"{self.min_face_value}..{self.max_face_value} {self.currency}"


@dataclass
class Brand:
    slug: str
    title: str
    logo: str
    description: str
    terms: str
    redeem_instructions: str
    categories: tuple[str, ...]
    redemption_fields: tuple[str, ...]
    options: list[ProductOption]

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Brand:
        slug = raw["brand"]
        return cls(
            slug=slug,
            title=raw["title"],
            logo=raw["logo"],
            description=raw["description"],
            terms=raw["terms"],
            redeem_instructions=raw["redeem_instructions"],
            categories=tuple(raw["categories"]),
            redemption_fields=tuple(raw["redemption_fields"]),
            options=[ProductOption.from_json(slug, o) for o in raw["products"]],
        )

    @property
    def countries(self) -> list[str]:
        return sorted({c for option in self.options for c in option.countries})

    def as_json(self) -> dict[str, Any]:
        return {
            "brand": self.slug,
            "title": self.title,
            "logo": self.logo,
            "description": self.description,
            "terms": self.terms,
            "redeem_instructions": self.redeem_instructions,
            "categories": list(self.categories),
            "countries": self.countries,
            "products": [o.as_json() for o in self.options],
        }


def load_catalog() -> dict[str, Brand]:
    """The shipped catalog, sorted by brand, with money read as Decimal from the text."""
    text = (
        importlib.resources.files("batcher.sandbox")
        .joinpath("data/gifq_catalog.json")
        .read_text(encoding="utf-8")
    )
    brands = sorted((Brand.from_json(raw) for raw in decode_json(text)), key=lambda b: b.slug)
    return {brand.slug: brand for brand in brands}


def fresh_redemption(fields: Sequence[str]) -> dict[str, str]:
    """Fresh bearer credentials for the brand's redemption fields."""
    makers: dict[str, Callable[[], str]] = {
        "code": lambda: "-".join(
            "".join(secrets.choice(CODE_ALPHABET) for _ in range(4)) for _ in range(4)
        ),
        "pin": lambda: f"{secrets.randbelow(10**6):06d}",
        "link": lambda: f"https://redeem.gifq.com/c/{secrets.token_urlsafe(18)}",
        "link_challenge_code": lambda: f"{secrets.randbelow(10**6):06d}",
        "serial": lambda: f"{secrets.randbelow(10**16):016d}",
        "security_code": lambda: f"{secrets.randbelow(1000):03d}",
    }
    return {name: makers[name]() for name in fields}
