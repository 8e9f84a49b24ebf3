"""Write the example sheets in samples/ deterministically (same bytes on every run).

    .venv/bin/python samples/generate_samples.py

- recipients.xlsx / recipients.csv: 300 valid rows matching the sandbox catalog
  (batcher/sandbox/data/ugiftme_catalog.json), affordable with the sandbox's
  10,000 per currency wallets (about 3,000 per currency).
- recipients-with-errors.xlsx: one sheet with a realistic mistake of each kind
  `batcher validate` catches, between valid rows.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
import zipfile
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import openpyxl
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter

HERE = Path(__file__).resolve().parent
CATALOG = HERE.parent / "batcher" / "sandbox" / "data" / "ugiftme_catalog.json"
SEED = 2026
ROWS = 300
BUDGET_PER_CURRENCY = Decimal("3200")  # face value; the sandbox wallets hold 10,000
FIXED_TIME = datetime(2026, 1, 15, 9, 0, 0)  # zip entry times, so the bytes never change

HEADERS = [
    "Reference",
    "Employee ID",
    "Recipient name",
    "Email",
    "Product code",
    "Amount",
    "Currency",
    "Country",
    "Gift message",
    "Cost centre",
]

# (given name, family name, ascii email local part): many cultures, real Unicode.
PEOPLE = [
    ("Zoë", "Ångström", "zoe.angstrom"),
    ("José", "Álvarez", "jose.alvarez"),
    ("Siobhán", "Ní Bhriain", "siobhan.nibhriain"),
    ("Łukasz", "Wójcik", "lukasz.wojcik"),
    ("Søren", "Kierkegaard", "soren.kierkegaard"),
    ("Aarav", "Sharma", "aarav.sharma"),
    ("美琳", "陈", "meilin.chen"),
    ("Yuki", "田中", "yuki.tanaka"),
    ("Olumide", "Adébáyọ̀", "olumide.adebayo"),
    ("فاطمة", "السيد", "fatima.alsayed"),
    ("Nguyễn", "Văn An", "an.nguyen"),
    ("Björn", "Þórsson", "bjorn.thorsson"),
    ("Chloé", "Dubois", "chloe.dubois"),
    ("Дмитрий", "Иванов", "dmitri.ivanov"),
    ("Ngozi", "Okonkwo", "ngozi.okonkwo"),
    ("Kwame", "Mensah", "kwame.mensah"),
    ("Ana Lúcia", "Pereira", "analucia.pereira"),
    ("Hiroshi", "Satō", "hiroshi.sato"),
    ("Priya", "Patel", "priya.patel"),
    ("서연", "김", "seoyeon.kim"),
    ("Seán", "O'Brien", "sean.obrien"),
    ("Mónica", "Ruiz-Jiménez", "monica.ruizjimenez"),
    ("Ayşe", "Yılmaz", "ayse.yilmaz"),
    ("Γιώργος", "Παπαδόπουλος", "giorgos.papadopoulos"),
    ("Tūī", "Te Whare", "tui.tewhare"),
    ("Jürgen", "Müller", "juergen.mueller"),
    ("Amara", "Nwosu", "amara.nwosu"),
    ("Ingrid", "Bergström", "ingrid.bergstrom"),
    ("Rahul", "Iyer", "rahul.iyer"),
    ("Zainab", "Hussain", "zainab.hussain"),
    ("Mateus", "Conceição", "mateus.conceicao"),
    ("Kateřina", "Dvořáková", "katerina.dvorakova"),
    ("Oluwaseun", "Bakare", "oluwaseun.bakare"),
    ("Elif", "Şahin", "elif.sahin"),
    ("Miguel", "Peña", "miguel.pena"),
    ("Aroha", "Ngata", "aroha.ngata"),
]
DOMAINS = ["staff.example.com", "example.co.uk", "mail.example.org", "example.de"]
MESSAGES = [
    "",
    "Thank you for a brilliant year!",
    "Well done on the launch — from the whole team 🎉",
    "Merci pour tout !",
    "Danke für deinen großartigen Einsatz.",
    "¡Gracias por todo tu trabajo!",
    "ありがとうございました。",
    "Happy work anniversary!",
    "Congratulations on your promotion.",
    "With thanks from the Finance team",
]
COST_CENTRES = ["CC-100 Sales", "CC-210 Engineering", "CC-330 Support", "CC-450 Marketing"]
ROUND_AMOUNTS = [Decimal(v) for v in ("10", "15", "20", "25", "30", "40", "50")]


@dataclass(frozen=True)
class CatalogProduct:
    code: str
    currency: str
    countries: tuple[str, ...]
    allowed: tuple[Decimal, ...]  # amounts this sample may use


def load_products() -> list[CatalogProduct]:
    """Active products and the modest amounts each allows."""
    products = []
    for raw in json.loads(CATALOG.read_text(encoding="utf-8"), parse_float=Decimal):
        if not raw["isActive"]:
            continue
        low, high = Decimal(str(raw["minValue"])), Decimal(str(raw["maxValue"]))
        if raw["denominations"]:
            allowed = tuple(Decimal(str(d)) for d in raw["denominations"] if Decimal(str(d)) <= 60)
        else:
            allowed = tuple(a for a in ROUND_AMOUNTS if low <= a <= high)
        if allowed:
            products.append(
                CatalogProduct(
                    raw["productCode"], raw["currency"], tuple(raw["countries"]), allowed
                )
            )
    return products


def valid_rows(rng: random.Random, products: list[CatalogProduct]) -> list[list[object]]:
    """ROWS valid recipients; amounts are Decimal, everything else text."""
    rows: list[list[object]] = []
    spent: dict[str, Decimal] = {}
    for index in range(ROWS):
        given, family, local = PEOPLE[index % len(PEOPLE)]
        product = rng.choice(products)
        amount = rng.choice(product.allowed)
        if spent.get(product.currency, Decimal(0)) + amount > BUDGET_PER_CURRENCY:
            amount = min(product.allowed)
        spent[product.currency] = spent.get(product.currency, Decimal(0)) + amount
        rows.append(
            [
                f"RW-2026-{index + 123:06d}",
                f"{rng.randrange(1, 99999):06d}",  # leading zeros must survive
                f"{given} {family}",
                f"{local}{index}@{rng.choice(DOMAINS)}",
                product.code,
                amount,
                product.currency,
                rng.choice(product.countries),
                rng.choice(MESSAGES),
                rng.choice(COST_CENTRES),
            ]
        )
    return rows


def error_rows() -> list[list[object]]:
    """A realistic mistake of each kind, between valid rows (comments say which)."""
    long_message = "Thank you so much for everything this year. " * 14  # > 500 characters
    ok = "Thank you!"
    return [
        ["RW-2026-900001", "000101", "Zoë Ångström", "zoe@staff.example.com", "AMAZON_UK_STD", Decimal("25"), "GBP", "GB", ok, "CC-100 Sales"],
        ["RW-2026-900002", "000102", "José Álvarez", "jose.alvarez@", "AMAZON_UK_STD", Decimal("25"), "GBP", "GB", ok, "CC-100 Sales"],  # bad_email
        ["RW-2026-900003", "000103", "Siobhán Ní Bhriain", None, "TESCO_UK", Decimal("20"), "GBP", "GB", ok, "CC-100 Sales"],  # missing_value
        ["RW-2026-900004", "000104", "Łukasz Wójcik", "lukasz@example.de", "AMAZON_UK_STDD", Decimal("25"), "GBP", "GB", ok, "CC-210 Engineering"],  # unknown_product
        ["RW-2026-900005", "000105", "Søren Kierkegaard", "soren@example.de", "HMV_UK", Decimal("20"), "GBP", "GB", ok, "CC-210 Engineering"],  # product_inactive
        ["RW-2026-900006", "000106", "Aarav Sharma", "aarav@example.co.uk", "AMAZON_UK_STD", Decimal("25"), "EUR", "GB", ok, "CC-210 Engineering"],  # currency_mismatch
        ["RW-2026-900007", "000107", "陈美琳", "meilin@example.co.uk", "ARGOS_UK", Decimal("30"), "GBP", "GB", ok, "CC-330 Support"],  # amount_not_allowed (denominations)
        ["RW-2026-900008", "000108", "Yuki 田中", "yuki@example.co.uk", "TESCO_UK", Decimal("750"), "GBP", "GB", ok, "CC-330 Support"],  # amount_not_allowed (range)
        ["RW-2026-900009", "000109", "Olumide Adébáyọ̀", "olumide@example.co.uk", "AMAZON_UK_STD", Decimal("24.999"), "GBP", "GB", ok, "CC-330 Support"],  # amount_too_many_decimals
        ["RW-2026-900010", "000110", "Fatima Al-Sayed", "fatima@example.co.uk", "AMAZON_UK_STD", Decimal("0"), "GBP", "GB", ok, "CC-330 Support"],  # amount_not_positive
        ["RW-2026-900011", "000111", "Nguyễn Văn An", "an@example.co.uk", "AMAZON_UK_STD", datetime(2026, 2, 14), "GBP", "GB", ok, "CC-450 Marketing"],  # amount_is_date
        ["RW-2026-900012", "000112", "Björn Þórsson", "bjorn@example.co.uk", "AMAZON_UK_STD", "fifty", "GBP", "GB", ok, "CC-450 Marketing"],  # bad_amount
        ["RW-2026-900013", "000113", "Chloé Dubois", "chloe@example.co.uk", "AMAZON_UK_STD", "€20", "GBP", "GB", ok, "CC-450 Marketing"],  # amount_currency_conflict
        ["RW-2026-900014", "000114", "Дмитрий Иванов", "dmitri@example.de", "ZALANDO_EU", Decimal("50"), "EURO", "DE", ok, "CC-450 Marketing"],  # bad_currency
        ["RW-2026-900015", "000115", "Ngozi Okonkwo", "ngozi@example.co.uk", "TESCO_UK", Decimal("20"), "GBP", "UK", ok, "CC-100 Sales"],  # bad_country
        ["RW-2026-900016", "000116", "Kwame Mensah", "kwame@example.de", "FNAC_FR", Decimal("20"), "EUR", "DE", ok, "CC-100 Sales"],  # country_not_allowed
        ["RW-2026-900017", "000117", "Ana Lúcia Pereira", "ana@example.co.uk", "JOHNLEWIS_UK", Decimal("40"), "GBP", "GB", ok, "CC-100 Sales"],  # merchant_mismatch (Merchant column says Amazon)
        ["RW-2026-900018", "000118", "Hiroshi Satō", "hiroshi@example.co.uk", "SAINSBURYS_UK", Decimal("30"), "GBP", "GB", long_message, "CC-210 Engineering"],  # message_too_long
        ["RW-2026-900017", "000119", "Priya Patel", "priya@example.co.uk", "TESCO_UK", Decimal("20"), "GBP", "GB", ok, "CC-210 Engineering"],  # duplicate_reference
        [None, "000120", "Seán O'Brien", "sean@example.co.uk", "STARBUCKS_UK", Decimal("10"), "GBP", "GB", ok, "CC-330 Support"],  # valid (no reference)
        [None, "000121", "Seán O'Brien", "sean@example.co.uk", "STARBUCKS_UK", Decimal("10"), "GBP", "GB", ok, "CC-330 Support"],  # duplicate_row
        ["RW-2026-900022", "000122", "Mónica Ruiz-Jiménez", "monica@example.de", "IKEA_EU", Decimal("50"), "EUR", "ES", ok, "CC-450 Marketing"],  # valid
        ["RW-2026-900023", "000123", "Ayşe Yılmaz", "ayse@example.de", "ZALANDO_EU", Decimal("75"), "EUR", "DE", ok, "CC-450 Marketing"],  # valid
    ]  # fmt: skip


# Which error rows carry a merchant (mismatching) — set in the Merchant column.
MERCHANT_COLUMN_ROWS = {16: "Amazon"}  # row index 16 (JOHNLEWIS_UK) -> merchant_mismatch


def write_xlsx(path: Path, headers: list[str], rows: list[list[object]], title: str) -> None:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.title = title
    sheet.append(headers)
    for cell in sheet[1]:
        cell.font = Font(bold=True)
    for row in rows:
        sheet.append([float(v) if isinstance(v, Decimal) else v for v in row])
    amount_column = headers.index("Amount") + 1
    for (cell,) in sheet.iter_rows(min_row=2, min_col=amount_column, max_col=amount_column):
        if isinstance(cell.value, float):
            cell.number_format = "#,##0.00"
        elif isinstance(cell.value, datetime):
            cell.number_format = "dd/mm/yyyy"
    for index, header in enumerate(headers, start=1):
        sheet.column_dimensions[get_column_letter(index)].width = max(12, len(header) + 4)
    sheet.freeze_panes = "A2"
    workbook.properties.created = FIXED_TIME
    workbook.properties.modified = FIXED_TIME
    buffer = io.BytesIO()
    workbook.save(buffer)
    path.write_bytes(_stable_zip(buffer.getvalue()))


def _stable_zip(data: bytes) -> bytes:
    """Rewrite the archive with fixed entry times, so regenerating changes no bytes."""
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            info = zipfile.ZipInfo(item.filename, date_time=FIXED_TIME.timetuple()[:6])
            info.compress_type = zipfile.ZIP_DEFLATED
            content = source.read(item.filename)
            if item.filename == "docProps/core.xml":  # openpyxl stamps the save time here
                content = re.sub(
                    rb"(<dcterms:modified[^>]*>)[^<]*(</dcterms:modified>)",
                    rb"\g<1>2026-01-15T09:00:00Z\g<2>",
                    content,
                )
            target.writestr(info, content)
    return out.getvalue()


def write_csv(path: Path, headers: list[str], rows: list[list[object]]) -> None:
    """UTF-8 with BOM and CRLF, as Excel's "CSV UTF-8" writes it."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(headers)
    for row in rows:
        writer.writerow(["" if v is None else str(v) for v in row])
    path.write_bytes(buffer.getvalue().encode("utf-8-sig"))


def main() -> None:
    rng = random.Random(SEED)
    products = load_products()
    rows = valid_rows(rng, products)
    write_xlsx(HERE / "recipients.xlsx", HEADERS, rows, "Recipients")
    write_csv(HERE / "recipients.csv", HEADERS, rows)

    headers = [*HEADERS[:5], "Merchant", *HEADERS[5:]]
    bad = []
    for index, row in enumerate(error_rows()):
        bad.append([*row[:5], MERCHANT_COLUMN_ROWS.get(index), *row[5:]])
    write_xlsx(HERE / "recipients-with-errors.xlsx", headers, bad, "Recipients")
    totals: dict[str, Decimal] = {}
    for row in rows:
        totals[str(row[6])] = totals.get(str(row[6]), Decimal(0)) + Decimal(str(row[5]))
    print("wrote samples; face value per currency:", {k: str(v) for k, v in sorted(totals.items())})


if __name__ == "__main__":
    main()
