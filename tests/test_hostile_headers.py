"""Headers that are repeated, misplaced or missing: every error says which and how to fix it."""

from __future__ import annotations

from pathlib import Path

import pytest

from batcher.cli.common import parse_mappings
from batcher.core.errors import InputFileError, UsageError
from batcher.intake.read import read_sheet

TWO_EMAILS = (
    "Reference,Name,Email,Product code,Email,Amount,Currency\n"
    "R-1,Ana,work@example.com,AMAZON_UK_STD,home@example.com,25,GBP\n"
)


def write(tmp_path: Path, text: str, name: str = "sheet.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_identical_headers_hint_offers_an_unambiguous_map(tmp_path: Path) -> None:
    with pytest.raises(InputFileError) as caught:
        read_sheet(write(tmp_path, TWO_EMAILS))
    assert str(caught.value).startswith(
        "sheet.csv: columns C ('Email') and E ('Email') both look like recipient_email"
    )
    assert caught.value.hint == (
        "choose one with --map recipient_email=@C or --map recipient_email=@E"
    )


def test_map_naming_an_ambiguous_header_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputFileError) as caught:
        read_sheet(write(tmp_path, TWO_EMAILS), mapping={"recipient_email": "Email"})
    assert "2 columns are headed 'Email' (C, E)" in str(caught.value)
    assert "--map recipient_email=@C or --map recipient_email=@E" in (caught.value.hint or "")


@pytest.mark.parametrize("wanted", ["@E", "@e", "Email#2"])
def test_identical_headers_are_addressable(tmp_path: Path, wanted: str) -> None:
    sheet = read_sheet(write(tmp_path, TWO_EMAILS), mapping={"recipient_email": wanted})
    assert sheet.frame["recipient_email"].to_list() == ["home@example.com"]
    # the other Email column passes through
    assert "Email" in sheet.passthrough
    assert sheet.frame["Email"].to_list() == ["work@example.com"]


def test_map_to_a_missing_letter_or_occurrence_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="there is no column Z; columns are A to G"):
        read_sheet(write(tmp_path, TWO_EMAILS), mapping={"recipient_email": "@Z"})
    with pytest.raises(InputFileError, match="there are only 2 columns headed 'Email'"):
        read_sheet(write(tmp_path, TWO_EMAILS), mapping={"recipient_email": "Email#3"})


def test_two_fields_mapped_to_one_column_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="both name column C"):
        read_sheet(
            write(tmp_path, TWO_EMAILS),
            mapping={"recipient_email": "@C", "recipient_name": "Email#1"},
        )


def test_parse_mappings_refuses_a_field_twice_and_a_header_twice() -> None:
    with pytest.raises(UsageError, match="--map amount is given twice"):
        parse_mappings(["amount=Value", "amount=Price"])
    with pytest.raises(UsageError, match="name the same column"):
        parse_mappings(["recipient_email=Email", "recipient_name=Email"])
    assert parse_mappings(["recipient_email=Email#2"]) == {"recipient_email": "Email#2"}


def test_notes_on_the_first_sheet_name_the_other_sheets(tmp_path: Path) -> None:
    import openpyxl

    book = openpyxl.Workbook()
    notes = book.active
    assert notes is not None
    notes.title = "Notes"
    notes.append(["These are the Q1 gift cards"])
    recipients = book.create_sheet("Recipients")
    recipients.append(["Email", "Product code", "Amount", "Currency"])
    recipients.append(["a@example.com", "AMAZON_UK_STD", 5, "GBP"])
    path = tmp_path / "notes.xlsx"
    book.save(path)
    with pytest.raises(InputFileError) as caught:
        read_sheet(path)
    assert str(caught.value).startswith("notes.xlsx [Notes]: no header row found")
    assert "choose it with --sheet NAME ('Recipients')" in (caught.value.hint or "")
    assert read_sheet(path, sheet="Recipients").row_count == 1


def test_header_below_the_searched_rows_says_only_ten_rows_are_searched(tmp_path: Path) -> None:
    titles = "".join(f"Title line {n}\n" for n in range(11))
    text = titles + "Email,Product code,Amount,Currency\na@example.com,X,5,GBP\n"
    with pytest.raises(InputFileError) as caught:
        read_sheet(write(tmp_path, text))
    assert str(caught.value).startswith(
        "sheet.csv: no header row found: batcher looks for it in the first 10 rows only, "
        "and row 1 reads 'Title line 0'"
    )
    assert "within the first 10 rows" in (caught.value.hint or "")


def test_sheet_without_a_header_row_is_told_to_add_one(tmp_path: Path) -> None:
    text = "a@example.com,AMAZON_UK_STD,5,GBP\nb@example.com,AMAZON_UK_STD,5,GBP\n"
    with pytest.raises(InputFileError) as caught:
        read_sheet(write(tmp_path, text))
    assert str(caught.value).startswith("sheet.csv: no header row: row 1 holds data")
    assert (caught.value.hint or "").startswith("add a header row above the data")


def test_users_own_batcher_named_columns_are_renamed(tmp_path: Path) -> None:
    text = (
        "Email,Product code,Amount,Currency,order_id,row_key,state,State\n"
        "a@example.com,AMAZON_UK_STD,5,GBP,PO-1,k1,NY,kept\n"
    )
    sheet = read_sheet(write(tmp_path, text))
    # names compare exactly, as the exported CSV headers do: 'State' is the user's own
    assert sheet.passthrough == ("order_id (2)", "row_key (2)", "state (2)", "State")
    assert sheet.frame["order_id (2)"].to_list() == ["PO-1"]


def test_batcher_columns_cover_every_column_the_rows_export_writes() -> None:
    from batcher.intake.header import BATCHER_COLUMNS
    from batcher.reporting.outputs import ROWS_CSV_COLUMNS

    assert set(ROWS_CSV_COLUMNS) <= BATCHER_COLUMNS
