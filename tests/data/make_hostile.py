"""Write the corpus of hostile and ambiguous input files that tests/test_intake_corpus.py checks.

    .venv/bin/python tests/data/make_hostile.py            # into tests/data/hostile/
    .venv/bin/python tests/data/make_hostile.py OUT_DIR

Each file comes with its expected outcome in `EXPECTED`: refused with an
InputFileError (or UsageError) whose message contains given text, or read
and validated into exact (row, column, code) errors, warnings and a valid-row
count. Workbooks are written as raw XML parts with fixed zip times, so the
output is deterministic and the committed files equal a fresh build.
"""

from __future__ import annotations

import gzip
import io
import struct
import sys
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

from batcher.intake.cellrefs import column_letter

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "hostile"
ZIP_TIME = (2026, 1, 15, 9, 0, 0)

HEADER = ["Reference", "Email", "Name", "Product code", "Amount", "Currency", "Country"]


@dataclass(frozen=True)
class Expect:
    """The outcome of read_sheet(file, **options) then validate_rows (when it reads)."""

    refused: str = ""  # text the InputFileError message contains; empty when it reads
    usage: bool = False  # refused with a UsageError rather than an InputFileError
    hint: str = ""  # text the refusal's hint contains
    errors: tuple[tuple[int, str, str], ...] = ()  # (row, column, code), in report order
    valid: int = 0  # valid rows, when it reads
    warnings: tuple[str, ...] = ()  # codes of Sheet.warnings, in order
    options: dict[str, object] = field(default_factory=dict)  # read_sheet keywords


def row(number: int, **cells: str) -> list[str]:
    values = {
        "reference": f"H-{number}",
        "email": f"p{number}@example.com",
        "name": f"Person {number}",
        "product": "SHOP_GB",
        "amount": "25",
        "currency": "GBP",
        "country": "GB",
    }
    values.update(cells)
    return list(values.values())


def csv_text(rows: Sequence[Sequence[str]], delimiter: str = ",") -> str:
    lines = []
    for cells in rows:
        quoted = []
        for cell in cells:
            if any(ch in cell for ch in (delimiter, '"', "\n")):
                cell = '"' + cell.replace('"', '""') + '"'
            quoted.append(cell)
        lines.append(delimiter.join(quoted))
    return "\n".join(lines) + "\n"


def plain_rows(count: int, start: int = 1) -> list[list[str]]:
    return [row(n) for n in range(start, start + count)]


# ---------------------------------------------------------------------------
# Workbooks as raw parts.

_MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"


def cell_xml(ref: str, value: object) -> str:
    if isinstance(value, int | float):
        return f'<c r="{ref}"><v>{value}</v></c>'
    return f'<c r="{ref}" t="inlineStr"><is><t>{escape(str(value))}</t></is></c>'


def rows_xml(
    rows: Sequence[Sequence[object]], first_row: int = 1, hidden: Sequence[int] = ()
) -> str:
    out = []
    for offset, cells in enumerate(rows):
        number = first_row + offset
        flag = ' hidden="1"' if number in hidden else ""
        body = "".join(
            cell_xml(f"{column_letter(i)}{number}", v) for i, v in enumerate(cells) if v != ""
        )
        out.append(f'<row r="{number}"{flag}>{body}</row>')
    return "".join(out)


def sheet_xml(data: str, dimension: str | None = None, cols: str = "", extra: str = "") -> bytes:
    dim = f'<dimension ref="{dimension}"/>' if dimension else ""
    return (
        f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        f'<worksheet xmlns="{_MAIN}">{dim}{cols}<sheetData>{data}</sheetData>{extra}</worksheet>'
    ).encode()


def workbook_bytes(
    sheets: Sequence[tuple[str, bytes]],
    *,
    shared_strings: Callable[[zipfile.ZipFile], None] | None = None,
    method: int = zipfile.ZIP_DEFLATED,
) -> bytes:
    names = "".join(
        f'<sheet name="{escape(name)}" sheetId="{i}" r:id="rId{i}"/>'
        for i, (name, _) in enumerate(sheets, start=1)
    )
    rels = "".join(
        f'<Relationship Id="rId{i}" Type="{_REL}/worksheet" Target="worksheets/sheet{i}.xml"/>'
        for i in range(1, len(sheets) + 1)
    )
    overrides = "".join(
        f'<Override PartName="/xl/worksheets/sheet{i}.xml" ContentType="application/'
        'vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
        for i in range(1, len(sheets) + 1)
    )
    parts = {
        "[Content_Types].xml": (
            '<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/'
            'package/2006/content-types"><Default Extension="rels" ContentType="application/'
            'vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" '
            'ContentType="application/xml"/><Override PartName="/xl/workbook.xml" ContentType='
            '"application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
            f"{overrides}</Types>"
        ).encode(),
        "_rels/.rels": (
            '<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.'
            f'openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="{_REL}'
            '/officeDocument" Target="xl/workbook.xml"/></Relationships>'
        ).encode(),
        "xl/workbook.xml": (
            f'<?xml version="1.0" encoding="UTF-8"?><workbook xmlns="{_MAIN}" xmlns:r="{_REL}">'
            f"<sheets>{names}</sheets></workbook>"
        ).encode(),
        "xl/_rels/workbook.xml.rels": (
            '<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.'
            f'openxmlformats.org/package/2006/relationships">{rels}</Relationships>'
        ).encode(),
    }
    for i, (_, xml) in enumerate(sheets, start=1):
        parts[f"xl/worksheets/sheet{i}.xml"] = xml
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, content in parts.items():
            info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
            info.compress_type = method
            archive.writestr(info, content)
        if shared_strings is not None:
            shared_strings(archive)
    return out.getvalue()


def simple_workbook(
    rows: Sequence[Sequence[object]], *, hidden: Sequence[int] = (), cols: str = "", **kw: object
) -> bytes:
    data = rows_xml(rows, hidden=hidden)
    width = max(len(r) for r in rows)
    dimension = f"A1:{column_letter(width - 1)}{len(rows)}"
    return workbook_bytes([("Recipients", sheet_xml(data, dimension, cols))], **kw)  # type: ignore[arg-type]


def padded_shared_strings(megabytes: int) -> Callable[[zipfile.ZipFile], None]:
    def write(archive: zipfile.ZipFile) -> None:
        info = zipfile.ZipInfo("xl/sharedStrings.xml", date_time=ZIP_TIME)
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w") as part:
            part.write(f'<?xml version="1.0"?><sst xmlns="{_MAIN}"><si><t>'.encode())
            block = b"A" * (1 << 20)
            for _ in range(megabytes):
                part.write(block)
            part.write(b"</t></si></sst>")

    return write


def claim_size(data: bytes, name: str, size: int) -> bytes:
    """Rewrite a member's uncompressed size in its local header and the central directory."""
    buffer = bytearray(data)
    info = zipfile.ZipFile(io.BytesIO(data)).getinfo(name)
    struct.pack_into("<L", buffer, info.header_offset + 22, size)
    start = 0
    while (start := buffer.find(b"PK\x01\x02", start)) != -1:
        length = struct.unpack_from("<H", buffer, start + 28)[0]
        if bytes(buffer[start + 46 : start + 46 + length]) == name.encode():
            struct.pack_into("<L", buffer, start + 24, size)
        start += 4
    return bytes(buffer)


# ---------------------------------------------------------------------------
# The corpus: file name -> (bytes, expected outcome).

FILES: dict[str, tuple[Callable[[], bytes], Expect]] = {}


def case(name: str, expect: Expect) -> Callable[[Callable[[], bytes]], Callable[[], bytes]]:
    def register(build: Callable[[], bytes]) -> Callable[[], bytes]:
        FILES[name] = (build, expect)
        return build

    return register


def amount_case(name: str, amount: str, delimiter: str = ",") -> None:
    """One row whose amount a person could have meant two ways."""
    text = csv_text([HEADER, row(1, amount=amount), row(2)], delimiter)
    FILES[name] = (
        lambda: text.encode("utf-8"),
        Expect(errors=((2, "Amount", "ambiguous_amount"),), valid=1),
    )


# Decoding.
_LONG = csv_text([HEADER, *plain_rows(1500)])  # past the 64 KiB head


@case("mixed_utf8_then_cp1252.csv", Expect(refused="line 1503 (byte offset"))
def _mixed() -> bytes:
    start = csv_text([HEADER, row(0, name="Zoë Ångström"), *plain_rows(1500)]).encode()
    return start + csv_text([row(9999, name="Renée")]).encode("cp1252")


@case("ascii_then_cp1252.csv", Expect(valid=1501))
def _ascii_cp1252() -> bytes:
    return _LONG.encode() + csv_text([row(9999, name="Renée")]).encode("cp1252")


@case("cp1252_then_utf8.csv", Expect(refused="line 3 (byte offset 122) is UTF-8"))
def _cp1252_utf8() -> bytes:
    return (
        csv_text([HEADER, row(1, name="Renée")]).encode("cp1252")
        + csv_text([row(2, name="Zoë")]).encode()
    )


@case("utf32_le_bom.csv", Expect(valid=2))
def _utf32_le() -> bytes:
    return b"\xff\xfe\x00\x00" + csv_text([HEADER, row(1, name="Zoë"), row(2)]).encode("utf-32-le")


@case("utf32_be_no_bom.csv", Expect(valid=1))
def _utf32_be() -> bytes:
    return csv_text([HEADER, row(1, name="Ångström")]).encode("utf-32-be")


@case("utf16_be_bom.csv", Expect(valid=1))
def _utf16_be() -> bytes:
    return b"\xfe\xff" + csv_text([HEADER, row(1, name="李小龍")]).encode("utf-16-be")


@case("gzip_named.csv", Expect(refused="gzip_named.csv is gzip-compressed, not a CSV text file"))
def _gzip() -> bytes:
    return gzip.compress(csv_text([HEADER, row(1)]).encode(), mtime=0)


@case("pdf_named.csv", Expect(refused="pdf_named.csv is a PDF document"))
def _pdf() -> bytes:
    return b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n"


@case("png_named.csv", Expect(refused="png_named.csv is a PNG image"))
def _png() -> bytes:
    return b"\x89PNG\r\n\x1a\n" + bytes(64)


@case("nul_bytes.csv", Expect(refused="not a text file (a NUL byte at offset 9)"))
def _nul() -> bytes:
    return b"Reference\x00,Email\n" + bytes(range(1, 120))


# Quotes.
@case("stray_quote.csv", Expect(refused="line 3, column 'Name': a double quote in the middle"))
def _stray() -> bytes:
    return (csv_text([HEADER, row(1)]) + 'H-2,p2@example.com,Ana "Bo,SHOP_GB,25,GBP,GB\n').encode()


@case("text_after_quote.csv", Expect(refused="line 2, column 'Name': text after the closing"))
def _after_quote() -> bytes:
    return (csv_text([HEADER]) + 'H-1,p1@example.com,"Ana" Bo,SHOP_GB,25,GBP,GB\n').encode()


@case("unclosed_quote.csv", Expect(refused="line 3, column 'Email': a double quote opens a value"))
def _unclosed() -> bytes:
    body = csv_text([HEADER, row(1)]) + 'H-2,"p2@example.com,Bo,SHOP_GB,25,GBP,GB\n'
    return (body + csv_text([row(3)])).encode()


# Amounts.
amount_case("amount_thousands_comma.csv", "1,500")
amount_case("amount_decimal_comma.csv", "1,5")
amount_case("amount_exponent.csv", "1e3")
amount_case("amount_fullwidth_digits.csv", "２５")
amount_case("amount_arabic_indic_digits.csv", "٢٥")
amount_case("amount_space_thousands.csv", "1 500")
amount_case("amount_apostrophe_thousands.csv", "1'500")
amount_case("amount_point_thousands_semicolon.csv", "1.500,00", delimiter=";")
amount_case("amount_both_marks.csv", "1,000.50")


@case("amount_plain_forms.csv", Expect(valid=4))
def _plain_amounts() -> bytes:
    rows = [HEADER, row(1, amount="25"), row(2, amount="25.00"), row(3, amount="£25.00")]
    return csv_text([*rows, row(4, amount="GBP 25")]).encode()


@case("amount_decimal_comma_semicolon.csv", Expect(valid=1))
def _semicolon_ok() -> bytes:
    return csv_text([HEADER, row(1, amount="25,00")], ";").encode()


# Currency named by the amount header.
def _header_currency(header: str, product: str) -> Callable[[], bytes]:
    return lambda: csv_text(
        [["Email", "Product code", header], ["a@example.com", product, "25"]]
    ).encode()


FILES["currency_value_pound.csv"] = (_header_currency("Value (£)", "SHOP_GB"), Expect(valid=1))
FILES["currency_value_euro.csv"] = (_header_currency("Value [€]", "SHOP_EU"), Expect(valid=1))
FILES["currency_amount_eur.csv"] = (_header_currency("Amount (EUR)", "SHOP_EU"), Expect(valid=1))


@case(
    "currency_header_conflict.csv",
    Expect(
        errors=((3, "Currency", "currency_conflict"), (3, "Currency", "currency_mismatch")), valid=2
    ),
)
def _conflict() -> bytes:
    rows = [["Email", "Product code", "Amount (EUR)", "Currency"]]
    rows += [["a@example.com", "SHOP_EU", "25", "EUR"], ["b@example.com", "SHOP_EU", "25", "GBP"]]
    return csv_text([*rows, ["c@example.com", "SHOP_EU", "25", ""]]).encode()


# Headers.
_TWO_EMAILS = csv_text(
    [
        ["Reference", "Name", "Email", "Product code", "Email", "Amount", "Currency"],
        ["H-1", "Ana", "work@example.com", "SHOP_GB", "home@example.com", "25", "GBP"],
    ]
).encode()
FILES["duplicate_email_headers.csv"] = (
    lambda: _TWO_EMAILS,
    Expect(refused="columns C ('Email') and E ('Email')", hint="--map recipient_email=@C"),
)
FILES["duplicate_email_map_ambiguous.csv"] = (
    lambda: _TWO_EMAILS,
    Expect(
        refused="2 columns are headed 'Email' (C, E)",
        options={"mapping": {"recipient_email": "Email"}},
    ),
)
FILES["duplicate_email_map_letter.csv"] = (
    lambda: _TWO_EMAILS,
    Expect(valid=1, options={"mapping": {"recipient_email": "@E"}}),
)
FILES["duplicate_email_map_nth.csv"] = (
    lambda: _TWO_EMAILS,
    Expect(valid=1, options={"mapping": {"recipient_email": "Email#2"}}),
)
FILES["duplicate_map_one_column_twice.csv"] = (
    lambda: _TWO_EMAILS,
    Expect(
        refused="both name column C",
        usage=True,
        options={"mapping": {"recipient_email": "@C", "recipient_name": "Email#1"}},
    ),
)


@case("header_on_row_12.csv", Expect(refused="looks for it in the first 10 rows only"))
def _row12() -> bytes:
    titles = [[f"Title line {n}"] for n in range(11)]
    return csv_text([*titles, HEADER, row(1)]).encode()


@case("no_header_row.csv", Expect(refused="no header row: row 1 holds data"))
def _no_header() -> bytes:
    return csv_text(plain_rows(2)).encode()


@case("batcher_named_columns.csv", Expect(valid=1))
def _batcher_names() -> bytes:
    return csv_text([[*HEADER, "order_id", "row_key"], [*row(1), "PO-7", "k"]]).encode()


@case(
    "notes_first_sheet.xlsx",
    Expect(refused="notes_first_sheet.xlsx [Notes]: no header row found", hint="('Recipients')"),
)
def _notes_first() -> bytes:
    notes = sheet_xml(rows_xml([["These are the Q1 gift cards"], ["Approved by HR"]]), "A1:A2")
    recipients = sheet_xml(rows_xml([HEADER, row(1)]), "A1:G2")
    return workbook_bytes([("Notes", notes), ("Recipients", recipients)])


FILES["notes_first_sheet_chosen.xlsx"] = (
    _notes_first,
    Expect(valid=1, options={"sheet": "Recipients"}),
)


# Workbooks that would make calamine allocate without bound.
@case("bomb_far_cell.xlsx", Expect(refused="declares column 16,384", hint="max_columns = ..."))
def _far_cell() -> bytes:
    data = rows_xml([HEADER, row(1)]) + '<row r="1048576">' + cell_xml("XFD1048576", "x") + "</row>"
    return workbook_bytes([("Recipients", sheet_xml(data, "A1:XFD1048576"))])


@case("bomb_far_cell_no_dimension.xlsx", Expect(refused="[Recipients] uses column 16,384"))
def _far_cell_hidden() -> bytes:
    data = rows_xml([HEADER, row(1)]) + '<row r="5">' + cell_xml("XFD5", "x") + "</row>"
    return workbook_bytes([("Recipients", sheet_xml(data, "A1:G2"))])


@case("bomb_row_beyond_excel.xlsx", Expect(refused="uses row 2,000,000", hint="max_rows = ..."))
def _far_row() -> bytes:
    data = rows_xml([HEADER, row(1)]) + '<row r="2000000">' + cell_xml("A2000000", "x") + "</row>"
    return workbook_bytes([("Recipients", sheet_xml(data, "A1:G2"))])


@case("bomb_declared_range.xlsx", Expect(refused="declares a range of 1,048,576 rows x 200"))
def _declared_range() -> bytes:
    return workbook_bytes([("Recipients", sheet_xml(rows_xml([HEADER, row(1)]), "A1:GR1048576"))])


@case("bomb_cells_without_positions.xlsx", Expect(refused="uses column 300"))
def _refless() -> bytes:
    cells = '<c t="inlineStr"><is><t>x</t></is></c>' * 300
    data = rows_xml([HEADER, row(1)]) + f'<row r="3">{cells}</row>'
    return workbook_bytes([("Recipients", sheet_xml(data))])


@case("bomb_shared_strings_ratio.xlsx", Expect(refused="xl/sharedStrings.xml is compressed"))
def _ratio() -> bytes:
    sheet = sheet_xml(rows_xml([HEADER, row(1)]), "A1:G2")
    return workbook_bytes([("Recipients", sheet)], shared_strings=padded_shared_strings(40))


@case("bomb_shared_strings_size_lie.xlsx", Expect(refused="larger than its zip entry says"))
def _size_lie() -> bytes:
    sheet = sheet_xml(rows_xml([HEADER, row(1)]), "A1:G2")
    data = workbook_bytes([("Recipients", sheet)], shared_strings=padded_shared_strings(40))
    return claim_size(data, "xl/sharedStrings.xml", 1024)


@case("unusual_compression.xlsx", Expect(refused="uses a compression Excel does not write"))
def _bzip2() -> bytes:
    sheet = sheet_xml(rows_xml([HEADER, row(1)]), "A1:G2")
    return workbook_bytes([("Recipients", sheet)], method=zipfile.ZIP_BZIP2)


# Excel writes a control character in a cell's text as _xHHHH_ (ESC is _x001B_);
# the reader decodes it, so it is refused like one typed in a CSV.
FILES["escaped_control_in_name.xlsx"] = (
    lambda: simple_workbook([HEADER, row(1, name="Ana_x001B_[2J"), row(2)]),
    Expect(errors=((2, "Name", "control_character"),), valid=1),
)


# Hidden rows and columns, formulas.
_HIDDEN_ROWS = [HEADER, row(1), row(2), row(3)]
FILES["hidden_row.xlsx"] = (
    lambda: simple_workbook(_HIDDEN_ROWS, hidden=[3]),
    Expect(valid=3, warnings=("hidden_row",)),
)
FILES["hidden_row_skipped.xlsx"] = (
    lambda: simple_workbook(_HIDDEN_ROWS, hidden=[3]),
    Expect(valid=2, warnings=("hidden_rows_skipped",), options={"skip_hidden": True}),
)
_HIDDEN_COL = '<cols><col min="8" max="8" hidden="1"/></cols>'
FILES["hidden_column.xlsx"] = (
    lambda: simple_workbook([[*HEADER, "Notes"], [*row(1), "secret"]], cols=_HIDDEN_COL),
    Expect(valid=1, warnings=("hidden_column",)),
)


def _with_cell(
    ref: str, cell: str, rows: Sequence[Sequence[object]] = (HEADER, row(1), row(2))
) -> bytes:
    data = rows_xml(rows).replace(cell_xml(ref, _value_at(rows, ref)), cell)
    assert cell in data
    return workbook_bytes([("Recipients", sheet_xml(data, "A1:H3"))])


def _value_at(rows: Sequence[Sequence[object]], ref: str) -> object:
    column = ord(ref[0]) - 65
    return rows[int(ref[1:]) - 1][column]


FILES["formula_without_value.xlsx"] = (
    lambda: _with_cell("E2", '<c r="E2"><f>SUM(J2:J9)</f></c>'),
    Expect(errors=((2, "Amount", "formula_not_calculated"),), valid=1),
)
FILES["error_cell_div0.xlsx"] = (
    lambda: _with_cell("E3", '<c r="E3" t="e"><f>E2/0</f><v>#DIV/0!</v></c>'),
    Expect(errors=((3, "Amount", "formula_error"),), valid=1),
)
FILES["error_cell_na.xlsx"] = (
    lambda: _with_cell("B2", '<c r="B2" t="e"><f>VLOOKUP(A2,X,2)</f><v>#N/A</v></c>'),
    Expect(errors=((2, "Email", "formula_error"),), valid=1),
)
FILES["error_cell_in_passthrough.xlsx"] = (
    lambda: _with_cell(
        "H2",
        '<c r="H2" t="e"><v>#REF!</v></c>',
        ([*HEADER, "Notes"], [*row(1), "n"], [*row(2), "n"]),
    ),
    Expect(valid=2, warnings=("formula_error",)),
)


# ---------------------------------------------------------------------------
# Text a terminal or a spreadsheet would act on, and shapes of nearly-empty files.
# Pass-through cells reach the reports neutralised (reporting/cells.py); cells with
# escape sequences are shown escaped on the terminal (cli/terminal.py).

_FORMULA_NOTES = [" =1+1", "\n=1+1", "\u00a0=SUM(A1)", "\u200b=1", "＝1+1"]


@case("passthrough_formulas.csv", Expect(valid=5))
def _passthrough_formulas() -> bytes:
    rows = [[*row(n), note] for n, note in enumerate(_FORMULA_NOTES, 1)]
    return csv_text([[*HEADER, "Note"], *rows]).encode()


@case("escape_in_email.csv", Expect(errors=((3, "Email", "bad_email"),), valid=1))
def _escape_in_email() -> bytes:
    return csv_text([HEADER, row(1), row(2, email="evil\x1b[2J@example.com")]).encode()


@case("osc_in_name.csv", Expect(errors=((2, "Name", "control_character"),), valid=1))
def _osc_in_name() -> bytes:
    return csv_text([HEADER, row(1, name="Ana\x1b]0;pwned\x07"), row(2)]).encode()


@case("bidi_override_name.csv", Expect(errors=((2, "Name", "control_character"),), valid=1))
def _bidi_override_name() -> bytes:
    return csv_text([HEADER, row(1, name="Ana \u202egnp.exe"), row(2)]).encode()


@case(
    "controls_in_reference_and_message.csv",
    Expect(
        errors=((2, "Reference", "control_character"), (4, "Message", "control_character")),
        valid=2,
    ),
)
def _controls_in_reference_and_message() -> bytes:
    # A C1 control in a reference and a BEL in a message are refused; a message's line
    # break and tab, and a name's tab that trimming removes, are text.
    return csv_text(
        [
            [*HEADER, "Message"],
            [*row(1, reference="CTL\x9b31mX"), "Happy birthday"],
            [*row(2, name="Person 2\t"), "Dear Ana,\r\nwith\tthanks"],
            [*row(3), "Ding\x07"],
            [*row(4), "Thanks!"],
        ]
    ).encode()


@case("empty_file.csv", Expect(refused="is empty", hint="export the sheet again"))
def _empty_file() -> bytes:
    return b""


@case("header_only.csv", Expect(refused="but no data rows", hint="add at least one recipient"))
def _header_only() -> bytes:
    return csv_text([HEADER]).encode()


@case("crlf_and_lf_mixed.csv", Expect(valid=2))
def _crlf_and_lf_mixed() -> bytes:
    return (csv_text([HEADER, row(1)]).replace("\n", "\r\n") + csv_text([row(2)])).encode()


@case("bom_utf8_semicolon.csv", Expect(valid=2))
def _bom_utf8_semicolon() -> bytes:
    return b"\xef\xbb\xbf" + csv_text([HEADER, row(1), row(2)], delimiter=";").encode()


@case("blank_rows_between.csv", Expect(valid=2))
def _blank_rows_between() -> bytes:
    return (csv_text([HEADER, row(1)]) + ",,,,,,\n\n" + csv_text([row(2)])).encode()


def build(out: Path = DEFAULT_OUT) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (make, _) in FILES.items():
        path = out / name
        path.write_bytes(make())
        written.append(path)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    for path in build(target):
        print(path)
