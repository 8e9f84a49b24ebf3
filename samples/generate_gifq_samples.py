"""Write the GIFQ sample sheets deterministically: `python samples/generate_gifq_samples.py`.

- gifq-orders.csv: one gift card per row; `Product` is GIFQ's brand slug, `Country`
  is required, and a few rows pay from another wallet (`Payment currency`).
- gifq-payouts.csv: recipients who choose their own card (payouts mode).
Both match the GIFQ sandbox catalog and its seeded active campaign (101).
"""

from __future__ import annotations

import csv
import random
from decimal import Decimal
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIRST = ["Amelia", "Oliver", "Sofia", "Mateo", "Aisha", "Kenji", "Zoë", "Luca", "Priya", "Émile",
         "Chloé", "Tomasz", "Ingrid", "Kwame", "Mei", "Rafael", "Freya", "Omar", "Hana", "Björn"]  # fmt: skip
LAST = ["Smith", "García", "Müller", "Okafor", "Tanaka", "Rossi", "Kowalski", "Dubois", "Patel",
        "Nguyen", "O'Brien", "Johansson", "Haddad", "Silva", "Kim"]  # fmt: skip
# (brand, currency, country, min, max): open-range options of the GIFQ sandbox catalog
OPEN = [
    ("amazon", "GBP", "GB", 5, 500),
    ("asos", "GBP", "GB", 10, 500),
    ("john-lewis", "GBP", "GB", 10, 1000),
    ("ikea", "EUR", "DE", 10, 500),
    ("amazon", "USD", "US", 1, 2000),
    ("starbucks", "USD", "US", 5, 100),
]


def person(rnd: random.Random, i: int) -> tuple[str, str]:
    first, last = rnd.choice(FIRST), rnd.choice(LAST)
    slug = f"{first}.{last}".lower().replace("'", "").encode("ascii", "ignore").decode()
    return f"{first} {last}", f"{slug}.{i}@example.com"


def orders(rnd: random.Random, n: int = 40) -> list[dict[str, str]]:
    rows = []
    for i in range(n):
        brand, currency, country, low, high = rnd.choice(OPEN)
        amount = Decimal(rnd.randrange(max(low, 10), min(high, 80) + 1))
        name, email = person(rnd, i)
        paying = "GBP" if currency == "USD" and i % 4 == 0 else ""
        rows.append({
            "Reference": f"GQ-2026-{i + 1:05d}", "Email": email, "Name": name, "Product": brand,
            "Amount": f"{amount:.2f}", "Currency": currency, "Country": country,
            "Payment currency": paying, "Cost centre": f"CC-{100 + i % 5}",
        })  # fmt: skip
    return rows


def payouts(rnd: random.Random, n: int = 30) -> list[dict[str, str]]:
    rows = []
    for i in range(n):
        name, email = person(rnd, 1000 + i)
        rows.append({
            "Reference": f"PO-2026-{i + 1:05d}", "Email": email, "Name": name,
            "Amount": f"{rnd.choice([10, 20, 25, 50]):.2f}", "Currency": "GBP",
            "Cost centre": f"CC-{200 + i % 3}",
        })  # fmt: skip
    return rows


def write(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    rnd = random.Random(2026)
    write(HERE / "gifq-orders.csv", orders(rnd))
    write(HERE / "gifq-payouts.csv", payouts(rnd))


if __name__ == "__main__":
    main()
