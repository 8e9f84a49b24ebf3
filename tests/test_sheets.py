"""Reading sheets: every awkward file in tests/data/corpus gives an exact outcome."""

from __future__ import annotations

import hashlib
import importlib.util
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from types import ModuleType

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batcher.core.errors import InputFileError, UsageError
from batcher.core.fields import BASE_REQUIRED
from batcher.intake.read import (
    CANONICAL_FIELDS,
    SOURCE_ROW,
    Sheet,
    SheetIssue,
    detect_delimiter,
    normalise_header,
    read_sheet,
)
from batcher.intake.xlsx import excel_number_text

DATA = Path(__file__).parent / "data"
CORPUS = DATA / "corpus"
STANDARD_COLUMNS = {
    "reference": "Reference",
    "recipient_email": "Email",
    "recipient_name": "Name",
    "product_code": "Product code",
    "amount": "Amount",
    "currency": "Currency",
    "country": "Country",
}


def load_make_corpus() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_corpus", DATA / "make_corpus.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read(name: str, **kwargs: object) -> Sheet:
    return read_sheet(CORPUS / name, **kwargs)  # type: ignore[arg-type]


def column(sheet: Sheet, name: str) -> list[object]:
    return sheet.frame[name].to_list()


def read_error(name: str, **kwargs: object) -> str:
    with pytest.raises(InputFileError) as caught:
        read(name, **kwargs)
    return str(caught.value)


# ---------------------------------------------------------------------------
# The corpus itself.


def test_committed_corpus_is_exactly_what_the_generator_writes(tmp_path: Path) -> None:
    written = load_make_corpus().build(tmp_path)
    committed = sorted(p.name for p in CORPUS.iterdir())
    assert [p.name for p in written] == committed
    for path in written:
        assert path.read_bytes() == (CORPUS / path.name).read_bytes(), path.name


def test_corpus_has_at_least_25_files() -> None:
    assert len(list(CORPUS.iterdir())) >= 25


# ---------------------------------------------------------------------------
# Encodings and delimiters.


def test_utf8_bom_leaves_no_junk_in_the_first_header() -> None:
    sheet = read("utf8_bom.csv")
    assert sheet.headers[0] == "Reference"
    assert sheet.columns == STANDARD_COLUMNS
    assert sheet.source.encoding == "utf-8-sig"
    assert column(sheet, "recipient_name") == ["Zoë Ångström", "Person 2"]
    assert column(sheet, "reference") == ["C-0001", "C-0002"]


def test_utf16_tab_file_from_excel_unicode_text() -> None:
    sheet = read("utf16_tab.txt")
    assert (sheet.source.encoding, sheet.source.delimiter, sheet.source.decimal_comma) == (
        "utf-16",
        "\t",
        False,
    )
    assert sheet.headers[0] == "Reference"
    assert column(sheet, "recipient_name") == ["李小龍", "Søren"]
    assert column(sheet, SOURCE_ROW) == [2, 3]


def test_cp1252_file_keeps_pound_signs_and_accents() -> None:
    sheet = read("cp1252_pound.csv")
    assert sheet.source.encoding == "cp1252"
    assert column(sheet, "amount") == ["£50", "£10.50"]
    assert column(sheet, "recipient_name") == ["Renée Dubois", "Person 2"]


def test_semicolon_file_implies_decimal_commas() -> None:
    sheet = read("semicolon_decimal_comma.csv")
    assert (sheet.source.delimiter, sheet.source.decimal_comma) == (";", True)
    assert column(sheet, "amount") == ["50,00", "12,5", "1.000,00", "1.000", "49.99"]


def test_old_mac_line_ends_are_split_into_rows() -> None:
    sheet = read("old_mac_newlines.csv")
    assert column(sheet, SOURCE_ROW) == [2, 3]
    assert column(sheet, "country") == ["GB", "GB"]


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        ("a,b,c\n1,2,3\n", ","),
        ("a;b;c\n1;2,5;3\n4;5,0;6\n", ";"),
        ("a\tb\n1\t2\n", "\t"),
        ('a,b\n"x;y;z",1\n"p;q;r",2\n', ","),  # delimiters inside quotes do not count
        ('a;b\n"line one\nline two";1\n', ";"),  # a quoted newline is not a record break
        ("Title\na,b\n1,2\n3,4\n", ","),  # a title line above the header
        ("email\nx@example.com\n", ","),  # one column: nothing to detect, default ','
    ],
)
def test_detect_delimiter(sample: str, expected: str) -> None:
    assert detect_delimiter(sample) == expected


# ---------------------------------------------------------------------------
# Row numbers as the user sees them.


def test_quoted_newlines_stay_in_one_row_and_later_rows_keep_their_numbers() -> None:
    sheet = read("quoted_newlines.csv")
    assert column(sheet, SOURCE_ROW) == [2, 3, 4, 5]
    assert column(sheet, "message") == [
        "Dear Ana,\nthank you!\n— The team",
        "Single line",
        "Two\r\nlines",
        None,
    ]


def test_csv_title_and_blank_lines_above_the_header() -> None:
    sheet = read("title_row.csv")
    assert sheet.header_row == 3
    assert column(sheet, SOURCE_ROW) == [4, 6]  # row 5 is blank and skipped
    assert sheet.blank_rows == 1


def test_xlsx_merged_title_above_the_header() -> None:
    sheet = read("title_row.xlsx")
    assert sheet.header_row == 3
    assert sheet.columns == STANDARD_COLUMNS
    assert column(sheet, SOURCE_ROW) == [4, 5]
    assert sheet.issues == ()  # the merged title is above the data


def test_xlsx_blank_rows_and_stray_formatting_are_ignored() -> None:
    sheet = read("blank_rows.xlsx")
    assert column(sheet, SOURCE_ROW) == [2, 4]
    assert sheet.blank_rows == 1
    assert sheet.headers == tuple(STANDARD_COLUMNS.values())
    assert sheet.passthrough == ()


# ---------------------------------------------------------------------------
# XLSX specifics.


def test_numbers_read_as_excel_shows_them_and_text_stays_text() -> None:
    sheet = read("numbers.xlsx")
    assert column(sheet, "amount") == ["49.99", "50", "0.3", "1234.5", "25"]
    assert column(sheet, "Employee ID") == ["007", "000123", "42", "12345", "x"]
    assert column(sheet, "Doubled") == ["99.98", "100", None, None, None]  # cached formula values
    assert column(sheet, "reference")[4] == "123456789012345678901"  # long text keeps every digit
    assert sheet.passthrough == ("Employee ID", "Doubled")


def test_excel_date_in_the_amount_column_is_read_as_a_date() -> None:
    sheet = read("excel_date_amount.xlsx")
    assert column(sheet, "amount") == ["25", "2026-03-01 00:00:00"]


def test_hidden_first_sheet_is_skipped_unless_named() -> None:
    assert read("hidden_first_sheet.xlsx").source.sheet_name == "Current"
    hidden = read("hidden_first_sheet.xlsx", sheet="Old list")
    assert column(hidden, "recipient_email") == ["old@example.com"]
    assert read("hidden_first_sheet.xlsx", sheet="current").source.sheet_name == "Current"


def test_unknown_sheet_name_lists_the_sheets() -> None:
    assert read_error("hidden_first_sheet.xlsx", sheet="Nope") == (
        "hidden_first_sheet.xlsx has no sheet 'Nope' (sheets: 'Old list', 'Current')"
    )


def test_merged_cells_in_a_required_column_are_reported_per_row() -> None:
    sheet = read("merged_cells.xlsx")
    assert column(sheet, "currency") == ["GBP", None, None, "GBP"]
    hint = "unmerge the cells and fill the value into every row"
    assert sheet.issues == (
        SheetIssue(
            3,
            "Currency",
            "merged_cell",
            "F3 is part of the merged cells F2:F4; only F2 holds a value",
            hint,
            "currency",
        ),
        SheetIssue(
            4,
            "Currency",
            "merged_cell",
            "F4 is part of the merged cells F2:F4; only F2 holds a value",
            hint,
            "currency",
        ),
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (49.99, "49.99"),
        (50.0, "50"),
        (0.1 + 0.2, "0.3"),
        (1 / 3, "0.333333333333333"),
        (1e-10, "0.0000000001"),
        (1e20, "100000000000000000000"),
        (-0.0, "0"),
        (-5.5, "-5.5"),
        (1234567.891, "1234567.891"),
    ],
)
def test_excel_number_text(value: float, expected: str) -> None:
    assert excel_number_text(value) == expected


def _excel_number_text_by_decimal(value: float) -> str:
    """excel_number_text's rule, every value through Decimal (its short cut must agree)."""
    number = Decimal(repr(value))
    if len(number.as_tuple().digits) > 15:
        number = number.quantize(Decimal(1).scaleb(number.adjusted() - 14), rounding=ROUND_HALF_UP)
    text = format(number.normalize(), "f")
    return "0" if text in {"-0", "0"} else text


@settings(max_examples=2000)
@given(
    st.floats(allow_nan=False, allow_infinity=False)
    | st.decimals(min_value=-(10**16), max_value=10**16, places=4).map(float)
    | st.integers(min_value=-(10**17), max_value=10**17).map(float)
)
def test_excel_number_text_agrees_with_decimal_rounding(value: float) -> None:
    assert excel_number_text(value) == _excel_number_text_by_decimal(value)


# ---------------------------------------------------------------------------
# Odd cells.


def test_scientific_notation_is_kept_as_typed() -> None:
    sheet = read("scientific_notation.csv")
    assert column(sheet, "amount") == ["5E+01", "2.5E1", "25"]
    assert column(sheet, "reference")[2] == "1.23457E+17"


def test_ten_thousand_character_cells_are_read_whole() -> None:
    sheet = read("long_cells.csv")
    assert sheet.passthrough == ("Notes",)
    assert [len(v or "") for v in column(sheet, "Notes")] == [10_000, 5, 0]
    assert len(column(sheet, "message")[0]) == 10_000
    assert len(column(sheet, "recipient_name")[1]) == 10_000


def test_rows_with_too_many_values_are_issues_not_a_failure() -> None:
    sheet = read("ragged_rows.csv")
    assert column(sheet, SOURCE_ROW) == [2, 3, 4]
    assert column(sheet, "country") == ["GB", "GB", None]
    assert sheet.issues == (
        SheetIssue(
            3,
            "(whole row)",
            "too_many_values",
            "row has more values than the header has columns (8)",
            "a value probably contains the delimiter; put that value in double quotes",
        ),
    )


def test_every_cell_is_text_and_source_row_an_integer() -> None:
    sheet = read("numbers.xlsx")
    assert sheet.frame.schema[SOURCE_ROW] == pl.Int64
    assert all(sheet.frame.schema[c] == pl.String for c in sheet.frame.columns[1:])
    assert sheet.frame.columns[: 1 + len(CANONICAL_FIELDS)] == [SOURCE_ROW, *CANONICAL_FIELDS]


def test_sha256_is_of_the_file_bytes() -> None:
    for name in ("utf8_bom.csv", "utf16_tab.txt", "numbers.xlsx"):
        expected = hashlib.sha256((CORPUS / name).read_bytes()).hexdigest()
        assert read(name).sha256 == expected


# ---------------------------------------------------------------------------
# Columns: aliases, mapping, missing and ambiguous columns.


def test_header_aliases_and_pass_through_columns_in_order() -> None:
    sheet = read("header_aliases.csv")
    assert sheet.columns == {
        "reference": "Order ref",
        "recipient_email": "E-mail Address",
        "recipient_name": "Recipient",
        "product_code": "SKU",
        "amount": "valuePurchased",
        "currency": "CCY",
        "country": "Country code",
        "message": "Gift message",
    }
    assert sheet.passthrough == ("Cost centre", "Employee ID")
    assert column(sheet, "Employee ID") == ["0042"]


def test_amount_header_naming_a_currency_stands_in_for_the_currency_column() -> None:
    sheet = read("amount_header_currency.csv")
    assert sheet.implied_currency == "GBP"
    assert sheet.columns["amount"] == "Amount (GBP)"
    assert "currency" not in sheet.columns


def test_missing_required_column_suggests_the_closest_header() -> None:
    assert read_error("missing_amount_column.csv") == (
        "missing_amount_column.csv: missing required column amount (closest header: 'Amt'; "
        "use --map amount='Amt'). Headers found: 'Reference', 'Email', 'Product code', 'Amt', "
        "'Currency' (rename the column, or tell batcher which one it is with --map FIELD=HEADER)"
    )


def test_map_overrides_the_alias_table() -> None:
    sheet = read("missing_amount_column.csv", mapping={"amount": "Amt"})
    assert sheet.columns["amount"] == "Amt"
    assert column(sheet, "amount") == ["25"]
    # Matching is case- and punctuation-insensitive when no header matches exactly.
    assert read("missing_amount_column.csv", mapping={"amount": " AMT "}).columns["amount"] == "Amt"


def test_map_to_a_header_that_is_not_there() -> None:
    message = read_error("missing_amount_column.csv", mapping={"amount": "Amont"})
    assert message.startswith("missing_amount_column.csv: --map amount=Amont: there is no column")
    assert "did you mean 'Amount'" not in message  # there is no Amount header
    assert "'Amt'" in message


def test_map_with_an_unknown_field_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="did you mean amount"):
        read("missing_amount_column.csv", mapping={"amout": "Amt"})


def test_two_columns_for_one_field_is_an_error() -> None:
    assert read_error("ambiguous_columns.csv") == (
        "ambiguous_columns.csv: columns A ('Email') and B ('E-mail address') both look like "
        "recipient_email (choose one with --map recipient_email='Email')"
    )
    sheet = read("ambiguous_columns.csv", mapping={"recipient_email": "E-mail address"})
    assert column(sheet, "recipient_email") == ["b@example.com"]
    assert sheet.passthrough == ("Email",)


def test_required_columns_depend_on_the_provider(tmp_path: Path) -> None:
    path = tmp_path / "no_country.csv"
    path.write_text("Email,Product code,Amount,Currency\na@example.com,amazon,25,GBP\n")
    assert read_sheet(path, required=BASE_REQUIRED).columns["amount"] == "Amount"
    with pytest.raises(InputFileError, match="missing required column country"):
        read_sheet(path, required=BASE_REQUIRED | {"country"})


def test_normalise_header() -> None:
    assert normalise_header(" E-mail Address ") == "emailaddress"
    assert normalise_header("recipientEmail") == "recipientemail"
    assert normalise_header("Währung") == "wahrung"


# ---------------------------------------------------------------------------
# Files that are not sheets: one clear error each, never a traceback.


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "csv_renamed.xlsx",
            "csv_renamed.xlsx is not an Excel workbook: it looks like a text or CSV file with an "
            ".xlsx name (rename it to csv_renamed.csv, or open it in Excel and save it as .xlsx)",
        ),
        (
            "password_protected.xlsx",
            "password_protected.xlsx is a password-protected or legacy .xls workbook, which "
            "batcher cannot read (open it in Excel, remove the password (File > Info > Protect "
            "Workbook) and save it as .xlsx (Excel Workbook))",
        ),
        (
            "legacy.xls",
            "legacy.xls is a password-protected or legacy .xls workbook, which batcher cannot "
            "read (open it in Excel, remove the password (File > Info > Protect Workbook) and "
            "save it as .xlsx (Excel Workbook))",
        ),
        (
            "damaged.xlsx",
            "damaged.xlsx is damaged or is not an Excel workbook "
            "(open it in Excel and save it again as .xlsx)",
        ),
        (
            "empty.csv",
            "empty.csv is empty "
            "(export the sheet again; it needs a header row and at least one data row)",
        ),
        (
            "header_only.csv",
            "header_only.csv has a header row (row 1) but no data rows "
            "(add at least one recipient below the header)",
        ),
        (
            "header_only.xlsx",
            "header_only.xlsx [Recipients] has a header row (row 1) but no data rows "
            "(add at least one recipient below the header)",
        ),
        (
            "recipients.pdf",
            "recipients.pdf: unsupported file type .pdf (save the sheet as .xlsx or .csv "
            "(supported: .csv, .tsv, .txt, .xlsm, .xlsx))",
        ),
    ],
)
def test_unreadable_files(name: str, expected: str) -> None:
    assert read_error(name) == expected


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="no such file"):
        read_sheet(tmp_path / "nope.csv")
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    with pytest.raises(InputFileError, match="is a folder"):
        read_sheet(folder)


def test_sheet_option_on_a_csv_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"--sheet only applies to \.xlsx"):
        read("utf8_bom.csv", sheet="Recipients")


def test_late_non_utf8_byte_falls_back_to_cp1252(tmp_path: Path) -> None:
    # The first 64 KiB are plain ASCII; the £ far down is a cp1252 byte.
    filler = "".join(f"C-{i},p{i}@example.com,AMAZON_UK_STD,25,GBP\n" for i in range(3000))
    data = ("Reference,Email,Product code,Amount,Currency\n" + filler).encode("ascii")
    path = tmp_path / "late.csv"
    path.write_bytes(data + b"C-x,x@example.com,AMAZON_UK_STD,\xa325,GBP\n")
    sheet = read_sheet(path)
    assert sheet.source.encoding == "cp1252"
    assert column(sheet, "amount")[-1] == "£25"
    assert column(sheet, SOURCE_ROW)[-1] == 3002


def test_the_reports_formula_guard_is_taken_back_on_read(tmp_path: Path) -> None:
    """failed_rows.csv neutralises `=...` as `'=...`; fed back in, the name is as it was."""
    path = tmp_path / "fixed.csv"
    path.write_text(
        "Email,Name,Product,Amount,Currency\n"
        'a@example.com,\'=HYPERLINK("x"),AMAZON_UK_STD,10,GBP\n'
        "b@example.com,'hello,AMAZON_UK_STD,10,GBP\n",
        encoding="utf-8",
    )
    names = read_sheet(path).frame["recipient_name"].to_list()
    assert names == ['=HYPERLINK("x")', "'hello"]
