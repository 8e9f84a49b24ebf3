"""What reading returns: the `Sheet` of text cells and the `SheetIssue`s only reading can see."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl

from batcher.intake.hashing import FileDigest


@dataclass(frozen=True)
class SheetIssue:
    """A cell problem only the reader can see (merged cells, surplus CSV values).

    Validation reports these with the other row errors, so the row is invalid.
    """

    source_row: int
    column: str  # the user's header text, or a description when there is none
    code: str
    message: str
    hint: str = ""
    field: str = ""  # canonical field, when the cell belongs to one
    value: str = ""


@dataclass(frozen=True)
class SheetSource:
    """The file a sheet was read from, and what reading it found out about its format."""

    path: Path
    digest: FileDigest = field(repr=False, compare=False)  # see `Sheet.sha256`
    file_format: Literal["csv", "xlsx"]
    sheet_name: str | None = None  # XLSX worksheet name
    encoding: str | None = None  # CSV encoding detected
    delimiter: str | None = None  # CSV delimiter detected

    @property
    def decimal_comma(self) -> bool:
        """Amounts use a decimal comma: a ';' CSV."""
        return self.delimiter == ";"

    @property
    def label(self) -> str:
        """'recipients.xlsx' or 'recipients.xlsx [Sheet2]' for messages."""
        if self.sheet_name:
            return f"{self.path.name} [{self.sheet_name}]"
        return self.path.name


@dataclass(frozen=True)
class Sheet:
    """A sheet read into text cells, with everything needed to explain it back.

    `frame` columns: `source_row` (Int64), then every canonical field in
    `CANONICAL_FIELDS` order (String; all-null when the sheet has no such
    column), then the pass-through columns under their header text (String).
    Cells are exactly as read: validation trims and normalises them.
    """

    frame: pl.DataFrame
    source: SheetSource
    header_row: int  # the header's row number as the user sees it
    headers: tuple[str, ...]  # header text of every column, in file order
    columns: dict[str, str]  # canonical field -> the user's header text
    passthrough: tuple[str, ...]  # pass-through column names in `frame`, in file order
    required: frozenset[str]
    # From a header such as "Amount (GBP)": fills blank currency cells, and a
    # currency cell that says otherwise is an error (never silently overridden).
    implied_currency: str | None = None
    issues: tuple[SheetIssue, ...] = ()
    blank_rows: int = 0  # wholly empty rows between data rows, ignored
    # Worth telling the user but not errors: hidden rows and columns, formula
    # problems outside the columns batcher uses. Callers print them.
    warnings: tuple[SheetIssue, ...] = ()

    @property
    def sha256(self) -> str:
        """sha256 of the file's bytes (waits for the background hash, if still running)."""
        return self.source.digest.hexdigest()

    @property
    def row_count(self) -> int:
        return self.frame.height

    def header_for(self, field_name: str) -> str:
        """The user's header for a field, for messages; the field name when absent."""
        return self.columns.get(field_name, field_name)

    @property
    def label(self) -> str:
        return self.source.label
