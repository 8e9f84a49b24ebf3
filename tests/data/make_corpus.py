"""Write the corpus of bad and awkward sheets that tests/test_sheets.py and
tests/test_validate.py hold batcher to.

    .venv/bin/python tests/data/make_corpus.py            # into tests/data/corpus/
    .venv/bin/python tests/data/make_corpus.py OUT_DIR

The output is deterministic (fixed zip times and document dates), so the
committed files equal a fresh build; a test checks that. Each file's purpose
is in `CORPUS` below; the expected outcome of each is asserted in the tests.
"""

from __future__ import annotations

import io
import re
import sys
import zipfile
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

import openpyxl

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "corpus"
FIXED_TIME = datetime(2026, 1, 15, 9, 0, 0)

HEADER = ["Reference", "Email", "Name", "Product code", "Amount", "Currency", "Country"]
Row = Sequence[object]


def ok_row(number: int, **changes: object) -> list[object]:
    """A valid row for the sandbox catalog; `changes` override single cells by field."""
    cells: dict[str, object] = {
        "reference": f"C-{number:04d}",
        "email": f"person{number}@example.com",
        "name": f"Person {number}",
        "product": "AMAZON_UK_STD",
        "amount": "25",
        "currency": "GBP",
        "country": "GB",
    }
    cells.update(changes)
    return list(cells.values())


# ---------------------------------------------------------------------------
# Writers.


def csv_text(rows: Sequence[Row], delimiter: str = ",") -> str:
    """Rows as CSV text with CRLF line ends; values with the delimiter, quotes or newlines quoted."""
    lines = []
    for row in rows:
        cells = []
        for value in row:
            text = "" if value is None else str(value)
            if any(ch in text for ch in (delimiter, '"', "\n", "\r")):
                text = '"' + text.replace('"', '""') + '"'
            cells.append(text)
        lines.append(delimiter.join(cells))
    return "\r\n".join(lines) + "\r\n"


def write_csv(
    path: Path, rows: Sequence[Row], *, delimiter: str = ",", encoding: str = "utf-8"
) -> None:
    path.write_bytes(csv_text(rows, delimiter).encode(encoding))


def workbook_bytes(
    build: Callable[[openpyxl.Workbook], None], formulas: dict[str, str] | None = None
) -> bytes:
    """An .xlsx built by `build`, with cached values for formula cells and fixed times.

    openpyxl cannot compute formulas, so `formulas` maps a cell (e.g. 'F2') to
    the cached value Excel would have stored; it is written into the sheet XML.
    """
    workbook = openpyxl.Workbook()
    build(workbook)
    workbook.properties.created = FIXED_TIME
    workbook.properties.modified = FIXED_TIME
    buffer = io.BytesIO()
    workbook.save(buffer)
    return _stable_zip(buffer.getvalue(), formulas or {})


def _stable_zip(data: bytes, formulas: dict[str, str]) -> bytes:
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            content = source.read(item.filename)
            if item.filename == "docProps/core.xml":
                content = re.sub(
                    rb"(<dcterms:modified[^>]*>)[^<]*(</dcterms:modified>)",
                    rb"\g<1>2026-01-15T09:00:00Z\g<2>",
                    content,
                )
            if item.filename == "xl/worksheets/sheet1.xml":
                for cell, value in formulas.items():
                    content = re.sub(
                        rb'(<c r="' + cell.encode() + rb'"[^>]*><f>[^<]*</f>)<v\s*/>',
                        rb"\g<1><v>" + value.encode() + rb"</v>",
                        content,
                    )
            info = zipfile.ZipInfo(item.filename, date_time=FIXED_TIME.timetuple()[:6])
            info.compress_type = zipfile.ZIP_DEFLATED
            target.writestr(info, content)
    return out.getvalue()


def sheet_of(rows: Sequence[Row], title: str = "Recipients") -> Callable[[openpyxl.Workbook], None]:
    def build(workbook: openpyxl.Workbook) -> None:
        sheet = workbook.active
        assert sheet is not None
        sheet.title = title
        for row in rows:
            sheet.append(list(row))

    return build


# ---------------------------------------------------------------------------
# The corpus: one function per file.


def utf8_bom_csv(out: Path) -> None:
    """UTF-8 with BOM (Excel's "CSV UTF-8"): the first header must not carry the BOM."""
    rows = [HEADER, ok_row(1, name="Zoë Ångström"), ok_row(2)]
    (out / "utf8_bom.csv").write_bytes(b"\xef\xbb\xbf" + csv_text(rows).encode("utf-8"))


def utf16_tab_txt(out: Path) -> None:
    """Excel's "Unicode text": UTF-16 LE with BOM, tab-delimited."""
    rows = [HEADER, ok_row(1, name="李小龍"), ok_row(2, name="Søren")]
    (out / "utf16_tab.txt").write_bytes(b"\xff\xfe" + csv_text(rows, "\t").encode("utf-16-le"))


def cp1252_pound_csv(out: Path) -> None:
    """Windows "CSV (Comma delimited)": cp1252, with £ in an amount and é in a name."""
    rows = [HEADER, ok_row(1, name="Renée Dubois", amount="£50"), ok_row(2, amount="£10.50")]
    write_csv(out / "cp1252_pound.csv", rows, encoding="cp1252")


def semicolon_decimal_comma_csv(out: Path) -> None:
    """A European export: ';' delimiter, decimal commas, and an ambiguous 1.000."""
    rows = [
        HEADER,
        ok_row(1, amount="50,00"),
        ok_row(2, amount="12,5"),
        ok_row(3, amount="1.000,00"),  # a thousands separator: refused
        ok_row(4, amount="1.000"),  # one or one thousand? refused
        ok_row(5, amount="49.99"),  # a point is still read as a decimal point
    ]
    write_csv(out / "semicolon_decimal_comma.csv", rows, delimiter=";")


def quoted_newlines_csv(out: Path) -> None:
    """A message with line breaks inside quotes: one record, one Excel row."""
    rows = [
        [*HEADER, "Message"],
        [*ok_row(1), "Dear Ana,\nthank you!\n— The team"],
        [*ok_row(2), "Single line"],
        [*ok_row(3), "Two\r\nlines"],
        [*ok_row(4, email="broken@"), ""],
    ]
    write_csv(out / "quoted_newlines.csv", rows)


def title_row_csv(out: Path) -> None:
    """A title line and a blank line above the header: the header is on row 3."""
    rows = [["Gift cards Q1 2026"], [], HEADER, ok_row(1), [], ok_row(2, email="bad@")]
    write_csv(out / "title_row.csv", rows)


def title_row_xlsx(out: Path) -> None:
    """A merged title above the header and a note row: the header is on row 3."""

    def build(workbook: openpyxl.Workbook) -> None:
        sheet = workbook.active
        assert sheet is not None
        sheet.title = "Recipients"
        sheet["A1"] = "Recipients — spring campaign"
        sheet.merge_cells("A1:G1")
        sheet["A2"] = "Prepared by HR"
        sheet.append(HEADER)
        sheet.append(ok_row(1))
        sheet.append(ok_row(2, amount="abc"))

    (out / "title_row.xlsx").write_bytes(workbook_bytes(build))


def merged_cells_xlsx(out: Path) -> None:
    """Currency merged down F2:F4: rows 3 and 4 show GBP but hold nothing."""

    def build(workbook: openpyxl.Workbook) -> None:
        sheet = workbook.active
        assert sheet is not None
        sheet.title = "Recipients"
        sheet.append(HEADER)
        for number in (1, 2, 3, 4):
            sheet.append(ok_row(number))
        sheet.merge_cells("F2:F4")

    (out / "merged_cells.xlsx").write_bytes(workbook_bytes(build))


def hidden_first_sheet_xlsx(out: Path) -> None:
    """The first sheet is hidden (an old list); the first visible one is read."""

    def build(workbook: openpyxl.Workbook) -> None:
        old = workbook.active
        assert old is not None
        old.title = "Old list"
        old.append(HEADER)
        old.append(ok_row(99, email="old@example.com"))
        old.sheet_state = "hidden"
        current = workbook.create_sheet("Current")
        current.append(HEADER)
        current.append(ok_row(1))
        current.append(ok_row(2))
        workbook.active = 1

    (out / "hidden_first_sheet.xlsx").write_bytes(workbook_bytes(build))


def scientific_notation_csv(out: Path) -> None:
    """Excel's scientific notation: refused in an amount (ambiguous), fatal for a reference."""
    rows = [
        HEADER,
        ok_row(1, amount="5E+01"),
        ok_row(2, amount="2.5E1"),
        ok_row(3, reference="1.23457E+17"),
    ]
    write_csv(out / "scientific_notation.csv", rows)


def excel_date_amount_xlsx(out: Path) -> None:
    """An amount column Excel turned into a date for one row."""

    def build(workbook: openpyxl.Workbook) -> None:
        sheet = workbook.active
        assert sheet is not None
        sheet.title = "Recipients"
        sheet.append(HEADER)
        sheet.append(ok_row(1, amount=25))
        sheet.append(ok_row(2, amount=datetime(2026, 3, 1)))
        sheet["E3"].number_format = "dd/mm/yyyy"

    (out / "excel_date_amount.xlsx").write_bytes(workbook_bytes(build))


def numbers_xlsx(out: Path) -> None:
    """Numeric cells: what Excel shows is what batcher reads, and text stays text."""

    def build(workbook: openpyxl.Workbook) -> None:
        sheet = workbook.active
        assert sheet is not None
        sheet.title = "Recipients"
        sheet.append([*HEADER, "Employee ID", "Doubled"])
        sheet.append([*ok_row(1, amount=49.99), "007", "=E2*2"])
        sheet.append([*ok_row(2, amount=50), "000123", "=E3*2"])
        sheet.append([*ok_row(3, amount=0.1 + 0.2), "42", None])  # 0.30000000000000004
        sheet.append([*ok_row(4, amount=1234.5), 12345, None])
        sheet.append([*ok_row(5, reference="123456789012345678901"), "x", None])

    formulas = {"I2": "99.98", "I3": "100"}
    (out / "numbers.xlsx").write_bytes(workbook_bytes(build, formulas))


def long_cells_csv(out: Path) -> None:
    """10,000-character cells: refused in the message and name, kept in a pass-through column."""
    huge = "x" * 10_000
    rows = [
        [*HEADER, "Message", "Notes"],
        [*ok_row(1), huge, huge],
        [*ok_row(2, name=huge), "ok", "short"],
        [*ok_row(3), "m" * 500, ""],  # exactly at the limit: fine
    ]
    write_csv(out / "long_cells.csv", rows)


def csv_renamed_xlsx(out: Path) -> None:
    """A CSV file someone renamed to .xlsx."""
    write_csv(out / "csv_renamed.xlsx", [HEADER, ok_row(1)])


def password_protected_xlsx(out: Path) -> None:
    """An encrypted workbook: an OLE compound file holding an EncryptionInfo stream."""
    header = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 16 + b"\x3e\x00\x03\x00\xfe\xff"
    body = header.ljust(512, b"\x00") + "EncryptionInfo".encode("utf-16-le").ljust(512, b"\x00")
    (out / "password_protected.xlsx").write_bytes(body)


def legacy_xls(out: Path) -> None:
    """An Excel 97-2003 workbook (also an OLE file)."""
    (out / "legacy.xls").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1".ljust(1024, b"\x00"))


def damaged_xlsx(out: Path) -> None:
    """Starts like a zip, is not one."""
    (out / "damaged.xlsx").write_bytes(b"PK\x03\x04" + b"\x00garbage" * 20)


def empty_csv(out: Path) -> None:
    (out / "empty.csv").write_bytes(b"")


def header_only_csv(out: Path) -> None:
    write_csv(out / "header_only.csv", [HEADER])


def header_only_xlsx(out: Path) -> None:
    (out / "header_only.xlsx").write_bytes(workbook_bytes(sheet_of([HEADER])))


def unsupported_extension(out: Path) -> None:
    (out / "recipients.pdf").write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")


def missing_amount_column_csv(out: Path) -> None:
    """The amount column is called 'Amt': the error suggests it."""
    header = ["Reference", "Email", "Product code", "Amt", "Currency"]
    rows = [header, ["C-1", "a@example.com", "AMAZON_UK_STD", "25", "GBP"]]
    write_csv(out / "missing_amount_column.csv", rows)


def ambiguous_columns_csv(out: Path) -> None:
    """Two columns that both look like the email."""
    header = ["Email", "E-mail address", "Product code", "Amount", "Currency"]
    rows = [header, ["a@example.com", "b@example.com", "AMAZON_UK_STD", "25", "GBP"]]
    write_csv(out / "ambiguous_columns.csv", rows)


def header_aliases_csv(out: Path) -> None:
    """Headers as other tools name them; extra columns pass through in order."""
    header = [
        "Order ref", "Cost centre", "E-mail Address", "Recipient", "SKU", "valuePurchased",
        "CCY", "Country code", "Gift message", "Employee ID",
    ]  # fmt: skip
    rows = [
        header,
        ["A-1", "CC-1", "a@example.com", "Ana", "AMAZON_UK_STD", "25", "GBP", "GB", "Hi", "0042"],
    ]
    write_csv(out / "header_aliases.csv", rows)


def amount_header_currency_csv(out: Path) -> None:
    """'Amount (GBP)' and no currency column: the header gives the currency."""
    header = ["Email", "Product code", "Amount (GBP)"]
    rows = [header, ["a@example.com", "AMAZON_UK_STD", "25"], ["b@example.com", "TESCO_UK", "£20"]]
    write_csv(out / "amount_header_currency.csv", rows)


def duplicate_references_csv(out: Path) -> None:
    rows = [
        HEADER,
        ok_row(1, reference="R-1"),
        ok_row(2, reference="R-2"),
        ok_row(3, reference="R-1"),
        ok_row(4, reference="r-2"),  # differs only in case: the same reference
        ok_row(5, reference="R-1"),
    ]
    write_csv(out / "duplicate_references.csv", rows)


def identical_rows_csv(out: Path) -> None:
    rows = [
        HEADER,
        ok_row(1, reference=""),
        ok_row(1, reference="", currency=" gbp "),  # the same order, spelled differently
        ok_row(2, reference=""),
        ok_row(1, reference="R-9"),  # a reference makes it a separate, deliberate order
    ]
    write_csv(out / "identical_rows.csv", rows)


def catalog_rules_csv(out: Path) -> None:
    """One row per catalog rule."""
    rows = [
        [*HEADER, "Merchant"],
        [*ok_row(1, product="AMAZON_UK_STDD"), ""],  # unknown_product, with suggestion
        [*ok_row(2, product="HMV_UK", amount="20"), ""],  # product_inactive
        [*ok_row(3, currency="EUR"), ""],  # currency_mismatch
        [*ok_row(4, product="ARGOS_UK", amount="30"), ""],  # amount_not_allowed (denominations)
        [*ok_row(5, product="TESCO_UK", amount="501"), ""],  # amount_not_allowed (range)
        [*ok_row(6, product="FNAC_FR", currency="EUR", country="DE"), ""],  # country_not_allowed
        [*ok_row(7), "Tesco"],  # merchant_mismatch
        [*ok_row(8), "amazon uk"],  # merchant agrees, ignoring case
        [*ok_row(9, product="amazon_uk_std"), ""],  # product code case-insensitive
        [*ok_row(10, country=""), ""],  # no country: fine for UGiftMe
    ]
    write_csv(out / "catalog_rules.csv", rows)


def bad_countries_csv(out: Path) -> None:
    rows = [
        HEADER,
        ok_row(1, country="UK"),
        ok_row(2, country="XX"),
        ok_row(3, country="gb"),  # upper-cased: fine
        ok_row(4, country="GBR"),
    ]
    write_csv(out / "bad_countries.csv", rows)


def minor_units_csv(out: Path) -> None:
    """JPY has no decimals, KWD three (products from the test catalog's extras)."""
    rows = [
        HEADER,
        ok_row(1, product="JPY_TEST", amount="1000", currency="JPY", country="JP"),
        ok_row(2, product="JPY_TEST", amount="1000.5", currency="JPY", country="JP"),
        ok_row(3, product="JPY_TEST", amount="1000.00", currency="JPY", country="JP"),
        ok_row(4, product="KWD_TEST", amount="10.125", currency="KWD", country="KW"),
        ok_row(5, product="KWD_TEST", amount="10.1255", currency="KWD", country="KW"),
        ok_row(6, amount="10.001"),
    ]
    write_csv(out / "minor_units.csv", rows)


def bad_values_csv(out: Path) -> None:
    """Cell values people get wrong."""
    rows = [
        [*HEADER, "Message"],
        [*ok_row(1, amount="-25"), ""],
        [*ok_row(2, amount="0"), ""],
        [*ok_row(3, amount="NaN"), ""],
        [*ok_row(4, amount="inf"), ""],
        [*ok_row(5, amount="twenty"), ""],
        [*ok_row(6, amount="1,000.50"), ""],  # a thousands separator: refused
        [*ok_row(7, amount="\u00a025.00\u00a0"), ""],  # non-breaking spaces: fine
        [*ok_row(8, email="not-an-email"), ""],
        [*ok_row(9, email="a@b@example.com"), ""],
        [*ok_row(10, email=""), ""],
        [*ok_row(11, currency="POUNDS"), ""],
        [*ok_row(12, currency="gbp"), ""],  # upper-cased: fine
        [*ok_row(13, email="  spaced@example.com  ", name="  Ana  "), "  hi  "],  # trimmed
        [*ok_row(14, email="jürgen@müller.de"), ""],  # internationalised: fine
        [*ok_row(15, amount="€25"), ""],  # EUR symbol on a GBP row
        [*ok_row(16, amount="GBP 25"), ""],  # fine
        [*ok_row(17, product=""), ""],
        [*ok_row(18, amount="2026-03-01"), ""],
        [*ok_row(19, email="x@example.test"), ""],
    ]
    write_csv(out / "bad_values.csv", rows)


def ragged_rows_csv(out: Path) -> None:
    """An unquoted comma in a message shifts a row: it has too many values."""
    text = (
        "Reference,Email,Name,Product code,Amount,Currency,Country,Message\r\n"
        "C-1,a@example.com,Ana,AMAZON_UK_STD,25,GBP,GB,Thanks\r\n"
        "C-2,b@example.com,Bo,AMAZON_UK_STD,25,GBP,GB,Thanks, Bo\r\n"
        "C-3,c@example.com,Cy,AMAZON_UK_STD,25,GBP\r\n"
    )
    (out / "ragged_rows.csv").write_bytes(text.encode("utf-8"))


def old_mac_newlines_csv(out: Path) -> None:
    """Lines ended by a bare CR (Excel for Mac's "CSV (Macintosh)")."""
    text = csv_text([HEADER, ok_row(1), ok_row(2)]).replace("\r\n", "\r")
    (out / "old_mac_newlines.csv").write_bytes(text.encode("utf-8"))


def blank_rows_xlsx(out: Path) -> None:
    """Blank rows between recipients and stray formatting far below and to the right."""

    def build(workbook: openpyxl.Workbook) -> None:
        sheet = workbook.active
        assert sheet is not None
        sheet.title = "Recipients"
        sheet.append(HEADER)
        sheet.append(ok_row(1))
        sheet.append([])
        sheet.append(ok_row(2))
        sheet["K40"].number_format = "0.00"  # formatting only: no value
        sheet["K40"].value = None

    (out / "blank_rows.xlsx").write_bytes(workbook_bytes(build))


def formula_injection_csv(out: Path) -> None:
    """Values that would run as formulas if echoed into a report unescaped."""
    rows = [
        HEADER,
        ok_row(1, email='=HYPERLINK("http://evil.example","x")'),
        ok_row(2, product="+SUM(1,2)"),
        ok_row(3, amount="@25"),
    ]
    write_csv(out / "formula_injection.csv", rows)


CORPUS: dict[str, Callable[[Path], None]] = {
    fn.__name__: fn
    for fn in (
        utf8_bom_csv, utf16_tab_txt, cp1252_pound_csv, semicolon_decimal_comma_csv,
        quoted_newlines_csv, title_row_csv, title_row_xlsx, merged_cells_xlsx,
        hidden_first_sheet_xlsx, scientific_notation_csv, excel_date_amount_xlsx, numbers_xlsx,
        long_cells_csv, csv_renamed_xlsx, password_protected_xlsx, legacy_xls, damaged_xlsx,
        empty_csv, header_only_csv, header_only_xlsx, unsupported_extension,
        missing_amount_column_csv, ambiguous_columns_csv, header_aliases_csv,
        amount_header_currency_csv, duplicate_references_csv, identical_rows_csv,
        catalog_rules_csv, bad_countries_csv, minor_units_csv, bad_values_csv,
        ragged_rows_csv, old_mac_newlines_csv, blank_rows_xlsx, formula_injection_csv,
    )
}  # fmt: skip


def build(out: Path = DEFAULT_OUT) -> list[Path]:
    """Write every corpus file into `out`; returns the files in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    for write in CORPUS.values():
        write(out)
    return sorted(out.iterdir())


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    print(f"wrote {len(build(target))} files into {target}")
