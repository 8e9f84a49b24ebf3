"""The Orders sheet's lines by their fast paths, held to what they replace.

- `queries.line_fields`: a row's cells decoded by msgspec when they are all text,
  else by `json.loads`: the same value, or the same error, as `json.loads` for any text.
- `LedgerQueries.line_rows_in_pages` and `fact_rows_in_pages`: keys in report order
  read by one statement, the rows looking each up by key reads (`_by_key_pages`, the
  former reads, the oracles).
- `xlsx_stream._plain_but_for_markup`: first and last characters found by searching the
  texts joined with a mark, as the former check (`_former_plain_but_for_markup`) finds them.
- `LineContext.all_matched` (an early child's assumption): the lines a check of no
  problem per succeeded order, its debit the cost, gives (`_former_early_lines`, the
  former early child's way, kept here as the oracle).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from batcher.ledger import queries
from batcher.ledger.queries import LINE_COLUMNS, line_fields
from batcher.ledger.records import SettledRow
from batcher.ledger.store import Ledger, RowRecord
from batcher.reporting import xlsx_stream
from batcher.reporting.verdicts import OrderCheck
from batcher.reporting.workbook import LineContext, _Styles, line_of
from batcher.reporting.xlsx_stream import (
    _PLAIN_FIRST,
    MAX_CELL_CHARS,
    _first_character,
    _last_character,
)
from tests.test_report_pages import SPECS, ledger_of_odd_rows


def _outcome(decode: Any, text: Any) -> tuple[str, str]:
    """What decoding gives: the value's type and repr (NaN equals itself so), or the error."""
    try:
        value = decode(text)
    except Exception as exc:
        return "error", f"{type(exc).__name__}: {exc}"
    return type(value).__name__, repr(value)


# text of every kind: lone surrogates, controls, beyond the basic plane
_any_text = st.text(st.characters(codec=None, categories=None), max_size=12)
_values = st.one_of(
    _any_text,
    st.integers(),
    st.integers(min_value=10**18, max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.none(),
    st.booleans(),
    st.lists(_any_text, max_size=2),
)


@st.composite
def _cells_json(draw: st.DrawFn) -> str:
    """A JSON object as a sheet's cells are stored, or as they could be: text or other
    values, names repeated, ASCII or not, any spacing."""
    names = draw(st.lists(st.sampled_from(["reference", "recipient_email", "a"]) | _any_text))
    items = [(name, draw(st.one_of(_any_text, _values))) for name in names]
    ascii_only = draw(st.booleans())
    separator = draw(st.sampled_from([", ", ",", " ,\n", ",\t"]))
    colon = draw(st.sampled_from([": ", ":", " : "]))
    body = separator.join(
        json.dumps(name, ensure_ascii=ascii_only)
        + colon
        + json.dumps(value, ensure_ascii=ascii_only)
        for name, value in items
    )
    return (
        draw(st.sampled_from(["", " ", "\n"]))
        + "{"
        + body
        + "}"
        + draw(st.sampled_from(["", " ", "\r\n", "\ufeff", "x", ","]))
    )


@settings(max_examples=600, deadline=None)
@given(_cells_json())
@example('{"a": "\\ud800"}')  # an escaped lone surrogate: json.loads takes it
@example('{"\\udc00x": "b", "a": "\\ud83d\\ude00"}')
@example('{"a": "1", "a": "2"}')  # the last of a repeated name
@example('{"a": "x\ty"}')  # a raw control character: refused by both
@example('{"a": NaN}')
@example('{"a": 123456789012345678901234567890}')
@example('\ufeff{"a": "b"}')
@example("[]")
@example('{"a": "\ud800"}')  # a lone surrogate in the text itself
def test_line_fields_is_json_loads_for_cells(text: str) -> None:
    assert _outcome(line_fields, text) == _outcome(json.loads, text)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_any_text, st.binary(max_size=20), st.none(), st.integers()))
def test_line_fields_is_json_loads_for_any_text(text: Any) -> None:
    assert _outcome(line_fields, text) == _outcome(json.loads, text)


def test_line_fields_decodes_text_cells_in_c() -> None:
    """The fast path is taken (else the test above proves nothing of it)."""
    fields = line_fields('{"reference": "R-1", "recipient_name": "Zo\\u00eb"}')
    assert fields == {"reference": "R-1", "recipient_name": "Zoë"}


# ----- all_matched


def _former_early_lines(values: list[tuple[Any, ...]], passthrough: list[str]) -> list[Any]:
    """The former early child: a check of no problem made for each succeeded order."""
    styles = _styles()
    checks: dict[str, OrderCheck] = {}
    context = LineContext(checks, passthrough, "not checked")
    lines = []
    for v in values:
        checks.clear()
        if v[9] == "succeeded" and v[10]:
            checks[v[0]] = OrderCheck(v[0], True, v[7], v[8] or v[6], ())
        lines.append(line_of(v, context, styles))
    return lines


def _styles() -> _Styles:
    return _Styles(7, {"": 8, "GBP": 9, "EUR": 10, "JPY": 11})


_amounts = st.one_of(
    st.none(),
    st.sampled_from(
        [Decimal("0"), Decimal("-0"), Decimal("12.345"), Decimal("5"), Decimal("1E+2")]
    ),
    st.decimals(min_value=-1000, max_value=1000, places=3, allow_nan=False),
)
_moments = st.sampled_from(
    [None, "2026-01-02T03:04:05Z", "2025-12-31T23:59:59.123Z", "2026-03-04T05:06:07+00:00"]
)


@st.composite
def _line_values(draw: st.DrawFn, key: int) -> tuple[Any, ...]:
    currency = draw(st.sampled_from(["GBP", "EUR", "JPY", "USD"]))
    return (
        f"k{key}", key + 2, draw(st.sampled_from([None, "", "R-1"])),
        {"reference": "F-1", "recipient_email": "a@b.c", "product_code": "P"},
        draw(st.sampled_from([{}, {"Team": "x"}])), draw(_amounts) or Decimal("1"), currency,
        draw(_amounts), draw(st.sampled_from([None, "", "GBP", currency])),
        draw(st.sampled_from(["succeeded", "failed", "invalid", "skipped", "pending"])),
        draw(st.sampled_from([None, "", "ord-1"])), None, "req", "chunk", 1,
        draw(st.sampled_from([None, "1234"])), draw(st.sampled_from([None, "E1"])),
        draw(st.sampled_from([None, "boom"])), draw(st.sampled_from([None, "conflict"])),
        draw(st.booleans()), "2026-01-01T00:00:00Z", draw(_moments), draw(_moments),
    )  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_all_matched_lines_are_those_of_a_matched_check_per_order(data: st.DataObject) -> None:
    count = data.draw(st.integers(1, 8))
    values = [data.draw(_line_values(i)) for i in range(count)]
    passthrough = data.draw(st.sampled_from([[], ["Team"]]))
    context = LineContext({}, passthrough, "not checked", all_matched=True)
    styles = _styles()
    assert [line_of(v, context, styles) for v in values] == _former_early_lines(values, passthrough)


# ----- line_rows_in_pages and fact_rows_in_pages: one statement in report order, by
# key where they differ


def _by_key_pages(
    ledger: Ledger, batch: str, keys: Sequence[str], page: int, kind: str
) -> list[Any]:
    """The former reads (the oracles): each page's rows looked up by key."""
    rows: list[Any] = []
    for at in range(0, len(keys), page):
        part = keys[at : at + page]
        if kind == "line":
            found = {r[0]: r for r in ledger._by_key(batch, part, LINE_COLUMNS)}
        else:
            found, whole = {}, []
            for r in ledger._by_key(batch, part, queries._FACT_COLUMNS):
                if r[1] == "succeeded" and not r[2]:
                    found[r[0]] = queries.settled_row(r)
                else:
                    whole.append(r[0])
            if whole:
                found.update(ledger.rows_by_key(batch, whole))
        rows += [found[k] for k in part if k in found]
    return rows


def _read(ledger: Ledger, batch: str, keys: Sequence[str], page: int, kind: str) -> list[Any]:
    read = ledger.line_rows_in_pages if kind == "line" else ledger.fact_rows_in_pages
    return [row for rows in read(batch, keys, page) for row in rows]


@pytest.mark.parametrize("kind", ["line", "fact"])
@pytest.mark.parametrize("page", [1, 4, 6, 100])
def test_rows_in_report_order_are_the_rows_read_by_key(
    tmp_path: Path, page: int, kind: str
) -> None:
    ledger = ledger_of_odd_rows(tmp_path)
    try:
        keys, _ = ledger.report_keys("nightly")
        cases = {
            "all": keys,
            "first ones": keys[:7],
            "none": [],
            "other order": keys[::-1],
            "a middle part": keys[3:9],
            "one missing": keys[:5] + keys[6:],
            "an unknown key": [*keys[:5], "no-such-row", *keys[5:]],
            "repeated": keys[:3] + keys[2:],
        }
        read = {name: _read(ledger, "nightly", k, page, kind) for name, k in cases.items()}
        expected = {
            name: _by_key_pages(ledger, "nightly", k, page, kind) for name, k in cases.items()
        }
        # a row gone, and one added to the report, since the keys were read
        ledger._db.execute("DELETE FROM rows WHERE batch = 'nightly' AND row_key = ?", (keys[4],))
        ledger._db.execute(
            "UPDATE rows SET in_sheet = 1 WHERE batch = 'nightly' AND source_row = 13"
        )
        for name in ("gone or moved since", "gone or moved since, first ones"):
            wanted = keys if name.endswith("since") else keys[:6]
            read[name] = _read(ledger, "nightly", wanted, page, kind)
            expected[name] = _by_key_pages(ledger, "nightly", wanted, page, kind)
    finally:
        ledger.close()
    assert read == expected
    assert len(read["all"]) == len(SPECS) and read["none"] == []
    assert len(read["gone or moved since"]) == len(SPECS) - 1
    if kind == "fact":  # both kinds of row are read
        assert {type(r) for r in read["all"]} == {RowRecord, SettledRow}


@pytest.mark.parametrize("kind", ["line", "fact"])
def test_rows_in_report_order_are_read_by_one_statement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """The fast path is taken: no row looked up by key with the read's own columns
    (else the test above proves nothing of it); a fact read looks up only the rows it
    reads whole."""
    columns = LINE_COLUMNS if kind == "line" else queries._FACT_COLUMNS
    ledger = ledger_of_odd_rows(tmp_path)
    try:
        keys, _ = ledger.report_keys("nightly")
        looked_up: list[Sequence[str]] = []
        real = ledger._by_key

        def by_key(batch: str, wanted: Sequence[str], read_columns: str) -> Iterator[Any]:
            if read_columns == columns:
                looked_up.append(wanted)
            return real(batch, wanted, read_columns)

        monkeypatch.setattr(ledger, "_by_key", by_key)
        assert len(_read(ledger, "nightly", keys, 4, kind)) == len(SPECS)
        assert looked_up == []
        _read(ledger, "nightly", keys[:3] + keys[4:], 4, kind)
        assert looked_up and looked_up[0][0] == keys[4]
        looked_up.clear()
        monkeypatch.setattr(queries, "ORDERED_READ_MAX_ROWS", len(keys) - 1)
        assert _read(ledger, "nightly", keys, 4, kind) == _by_key_pages(
            ledger, "nightly", keys, 4, kind
        )
        assert looked_up and looked_up[0][0] == keys[0]  # too many: all by key
    finally:
        ledger.close()


# ----- _plain_but_for_markup: first and last characters found by searching


def _former_plain_but_for_markup(texts: Sequence[str], joined: str) -> bool:
    """The former check (the oracle): each text's first and last character taken out."""
    return (
        joined.isprintable()
        and " " not in map(_last_character, texts)
        and all(map(_PLAIN_FIRST.get, map(_first_character, texts)))
        and (len(joined) <= MAX_CELL_CHARS or max(map(len, texts)) <= MAX_CELL_CHARS)
    )


# what the check turns on: spaces, controls (the mark among them), formula triggers,
# markup, letters and digits, beyond ASCII (letters, digits, spaces of other kinds)
_cell_text = st.text(
    st.sampled_from(" \x00\x01\t\n=+-@&<>aZ09é٣\u00a0\u2028•'\"")
    | st.characters(codec=None, categories=None),
    min_size=1,
    max_size=6,
)


@settings(max_examples=1000, deadline=None)
@given(st.lists(_cell_text, min_size=1, max_size=8), st.integers(0, 2))
@example(["ab", "c "], 0)
@example(["a b", "=c"], 0)
@example(["a", "•-1"], 0)
@example(["a\x00", "b"], 0)
@example(["x" * 20_000, "y" * 20_000], 0)
@example(["x" * 40_000], 0)
def test_plain_but_for_markup_is_the_former_check(texts: list[str], long: int) -> None:
    texts = [t * (1 + long * 6_000) if long and i == 0 else t for i, t in enumerate(texts)]
    joined = "".join(texts)
    assert xlsx_stream._plain_but_for_markup(texts, joined) == _former_plain_but_for_markup(
        texts, joined
    )
