"""The passes over every row: distinct orders, and cheap probes of the recipient cells."""

from __future__ import annotations

import math
import string
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeVar

import polars as pl

from batcher.core.fields import SOURCE_ROW
from batcher.intake.frames import chunked_like
from batcher.intake.sheet import Sheet

# A sound subset of RFC 5321 addresses: ASCII dot-atom local part, LDH domain
# labels, alphabetic TLD. Everything it accepts, email-validator accepts too
# (a property test checks this); anything else goes to email-validator, which
# decides (Unicode addresses included) and explains its refusal.
FAST_EMAIL = (
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)
# Text that sends an address the fast pattern accepts to email-validator anyway:
# special-use domains it refuses (.local covers .localhost), and '--', which it
# refuses in positions 3-4 of a domain label (reserved for IDNA, bar 'xn--').
_SLOW_PATH_MARKERS = [".arpa", ".invalid", ".local", ".onion", ".test", "--"]

#: cells that describe the order; checked once per distinct combination
ORDER_FIELDS: tuple[str, ...] = (
    "product_code", "merchant", "amount", "currency", "country", "payment_currency",
)  # fmt: skip
#: cells that describe the recipient; checked on every row
RECIPIENT_FIELDS: tuple[str, ...] = ("reference", "recipient_email", "recipient_name", "message")
_CODE_FIELDS = ("currency", "country", "payment_currency")  # trimmed and upper-cased
ORDER_ID = "order_id"
# Characters recipient text may not hold: C0 controls, DEL and C1 controls (terminal
# and printer commands, invisible or dropped in a workbook, so a cell would differ
# from what was ordered) and bidi embeddings, overrides and isolates (they make text
# read other than it is stored). A message may hold line breaks and tabs.
_ASCII_CONTROLS = (*range(0x20), 0x7F)
_CONTROL_POINTS = (
    *_ASCII_CONTROLS,
    *range(0x80, 0xA0),
    *range(0x202A, 0x202F),
    *range(0x2066, 0x206A),
)
_CONTROL_POINTS_BY_FIELD = {
    "reference": _CONTROL_POINTS,
    "recipient_name": _CONTROL_POINTS,
    "message": tuple(p for p in _CONTROL_POINTS if chr(p) not in "\t\n\r"),
}
#: The regex class of each field's refused characters, for the rule that names the rows.
CONTROL_CHARACTERS: dict[str, str] = {
    name: "[" + "".join(f"\\x{{{p:X}}}" for p in points) + "]"
    for name, points in _CONTROL_POINTS_BY_FIELD.items()
}
#: The same characters as literals, for the probes (`contains_any`)
_CONTROL_LITERALS = {n: [chr(p) for p in points] for n, points in _CONTROL_POINTS_BY_FIELD.items()}
_CONTROL_PROBE = "_control_"
ORDER_ROWS = "order_rows"
_T = TypeVar("_T")  # what the order checks handed to `scan_rows` return


def _trimmed(name: str) -> pl.Expr:
    """Outer whitespace (Unicode, NBSP included) removed; a blank cell becomes null."""
    value = pl.col(name).str.strip_chars()
    return pl.when(value != "").then(value).alias(name)


def scan_rows(sheet: Sheet, then: Callable[[pl.DataFrame], _T]) -> tuple[_T, Rows, RowFacts]:
    """The passes over every row: the distinct orders, and probes of the recipient cells.

    Returns what `then(orders)` returns (for the orders, see
    `_orders_from_groups`), the recipient side (`Rows`, built only as far as
    a check needs it), and the `RowFacts` that tell the later checks whether
    they can find anything at all.

    The two sides need nothing from each other, so they overlap: the orders
    are grouped and handed to `then` on a worker thread while this thread
    probes the recipient cells (polars lets go of the GIL while it computes).
    """
    frame = sheet.frame
    nulls = {n: frame[n].null_count() for n in ORDER_FIELDS}  # counts polars keeps
    filled = [n for n in ORDER_FIELDS if nulls[n] == 0]
    # Columns with no value at all (often merchant, payment currency) or the
    # same value on every row (often currency, country) cannot tell orders
    # apart; leaving them out of the grouping keys makes it cheaper. A column
    # whose first cells differ is not constant, so it needs no full look.
    maybe_constant = [n for n in filled if frame[n].head(_HEAD).n_unique() == 1]
    same = (
        frame.select((pl.col(n) == pl.col(n).first()).all() for n in maybe_constant).row(0)
        if maybe_constant
        else ()
    )
    constant: dict[str, str | None] = {n: None for n in ORDER_FIELDS if nulls[n] == frame.height}
    constant |= {n: frame[n][0] for n, hit in zip(maybe_constant, same, strict=True) if hit}
    keys = [n for n in ORDER_FIELDS if n not in constant] or [ORDER_FIELDS[0]]

    def order_side() -> tuple[pl.DataFrame, _T]:
        groups = _group_orders(frame, keys, nulls)
        return groups, then(_orders_from_groups(groups, keys, constant, sheet))

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="batcher-orders") as pool:
        pending = pool.submit(order_side)
        # One select for every probe: polars runs its expressions side by side,
        # where separate passes would each wait for their slowest column.
        probes = frame.select(_row_probes())
        found = probes.drop(_UNVOUCHED).row(0, named=True)
        facts = _row_facts(frame, found, unvouched=probes[_UNVOUCHED][0])
        groups, after = pending.result()
    return after, Rows(frame, groups.select(ORDER_ID, _POSITIONS)), facts


_HEAD = 64  # first cells looked at to tell that a column is not constant


def _numbered(name: str) -> pl.Expr:
    """Each cell's number among the column's distinct values (null stays null)."""
    return pl.col(name).cast(pl.Categorical(pl.Categories.random())).to_physical()


def _group_orders(
    frame: pl.DataFrame, keys: Sequence[str], nulls: Mapping[str, int]
) -> pl.DataFrame:
    """order_id, the `keys` cells, and `_positions` (the rows): one row per distinct combination.

    Grouping on several text columns makes polars encode every row's keys into
    one binary value first, which costs more than the grouping itself. So each
    key column is numbered instead (a categorical cast, which hashes each cell
    once), the numbers are combined into one exact UInt64 (mixed radix), and
    the rows are grouped on that. Equal keys get equal numbers and unequal
    keys different ones, so the groups are exactly those of grouping on the
    text. Too many distinct values to fit 64 bits (never in a real sheet)
    falls back to grouping on the text.
    """
    if not hasattr(pl, "Categories"):  # polars before 1.32: group on the text
        return _text_groups(frame, keys)
    numbered = frame.lazy().select(_numbered(n) for n in keys)
    # A column's numbers are UInt32 (a null takes 2**32): when those radices fit
    # 64 bits, whatever the numbers turn out to be, no look at them is needed.
    radices = [2**32 + (1 if nulls[n] else 0) for n in keys]
    if math.prod(radices) <= 2**64:
        grouped = _grouped(numbered, list(zip(keys, radices, strict=True))).collect()
        return _with_cells(frame, keys, grouped)
    codes = numbered.collect()
    # Otherwise from the numbers: a null takes the number after the column's largest.
    largest = codes.select(pl.col(keys).max()).row(0)
    radices = [
        (top if top is not None else -1) + 1 + (1 if codes[n].null_count() else 0)
        for n, top in zip(keys, largest, strict=True)
    ]
    if math.prod(radices) <= 2**64:
        grouped = _grouped(codes.lazy(), list(zip(keys, radices, strict=True))).collect()
        return _with_cells(frame, keys, grouped)
    return _text_groups(frame, keys)


def _text_groups(frame: pl.DataFrame, keys: Sequence[str]) -> pl.DataFrame:
    """What `_group_orders` returns, grouping on the text itself."""
    return (
        frame.lazy()
        .select(keys)
        .with_row_index(_POSITIONS)
        .group_by(keys)
        .agg(pl.col(_POSITIONS))
        .with_row_index(ORDER_ID)
        .collect()
    )


def _grouped(codes: pl.LazyFrame, radices: Sequence[tuple[str, int]]) -> pl.LazyFrame:
    """`_positions` of each distinct combination of `codes`, combined in mixed radix.

    Exact when every number (a null as radix - 1) is below its radix and the
    radices multiply to at most 2**64.
    """
    combined: pl.Expr = pl.lit(0, pl.UInt64)
    weight = 1
    for name, radix in radices:
        code = pl.col(name).cast(pl.UInt64).fill_null(radix - 1)
        combined = combined + code * pl.lit(weight, pl.UInt64)
        weight *= radix
    return (
        codes.select(combined.alias(_KEY))
        .with_row_index(_POSITIONS)
        .group_by(_KEY)
        .agg(pl.col(_POSITIONS))
        .select(_POSITIONS)
    )


def _with_cells(frame: pl.DataFrame, keys: Sequence[str], grouped: pl.DataFrame) -> pl.DataFrame:
    """order_id, each group's `keys` cells as read (from its first row), and `_positions`."""
    first = grouped[_POSITIONS].list.first()
    return pl.concat([frame.select(keys)[first], grouped], how="horizontal").with_row_index(
        ORDER_ID
    )


_KEY = "_key"


_POSITIONS = "_positions"  # an order's rows, as positions in the sheet's frame
_UNVOUCHED = "_unvouched"  # positions of the addresses FAST_EMAIL does not vouch for


class Rows:
    """The recipient side of a sheet, built only as far as the checks need it.

    Most sheets have every recipient cell filled and trimmed, no over-long text
    and no repeated reference. Then no check needs a trimmed copy of every
    recipient cell, nor every row's order id, and neither is built until
    `ValidationResult.valid` asks for them.
    """

    def __init__(self, frame: pl.DataFrame, groups: pl.DataFrame) -> None:
        self._frame = frame
        self._groups = groups  # order_id, _positions

    @cached_property
    def cells(self) -> pl.DataFrame:
        """source_row, the recipient cells trimmed (a blank cell as null), and order_id."""
        frame = self._frame
        trimmed = (
            frame.lazy()
            .select(pl.col(SOURCE_ROW), *(pl.col(n).str.strip_chars() for n in RECIPIENT_FIELDS))
            # Two steps: in one expression polars would strip every cell twice.
            .with_columns(
                pl.when(pl.col(n) != "").then(pl.col(n)).alias(n) for n in RECIPIENT_FIELDS
            )
            .collect()
        )
        return trimmed.with_columns(
            chunked_like(self.order_of_row, trimmed[SOURCE_ROW]).alias(ORDER_ID)
        )

    @cached_property
    def order_of_row(self) -> pl.Series:
        """Each row's order id, by position."""
        # Scatter each order's id to its rows: cheaper than joining a million rows back.
        members = self._groups.explode(_POSITIONS)
        return pl.zeros(self._frame.height, dtype=pl.UInt32, eager=True).scatter(
            members[_POSITIONS], members[ORDER_ID]
        )

    def of_orders(self, order_ids: pl.Series) -> pl.DataFrame:
        """source_row and order_id of every row of these orders."""
        members = self._groups.filter(pl.col(ORDER_ID).is_in(order_ids.implode())).explode(
            _POSITIONS
        )
        return pl.DataFrame(
            [self._frame[SOURCE_ROW].gather(members[_POSITIONS]), members[ORDER_ID].rechunk()]
        )


def _orders_from_groups(
    groups: pl.DataFrame, keys: Sequence[str], constant: Mapping[str, str | None], sheet: Sheet
) -> pl.DataFrame:
    """One row per distinct combination of order cells.

    The orders frame has `order_id`, `order_rows` (how many sheet rows share
    the order), the cells as read (`raw_<field>`) and the same cells normalised
    under the field names: trimmed, codes upper-cased, and the currency named
    by an "Amount (GBP)" header filled in.
    """
    raw = {name: f"raw_{name}" for name in ORDER_FIELDS}
    orders = groups.select(
        ORDER_ID,
        pl.col(_POSITIONS).list.len().alias(ORDER_ROWS),
        *(
            pl.col(n).alias(raw[n])
            if n in keys
            else pl.lit(constant.get(n), pl.String).alias(raw[n])
            for n in ORDER_FIELDS
        ),
    )
    normalised = [
        _trimmed(raw[n]).str.to_uppercase().alias(n)
        if n in _CODE_FIELDS
        else _trimmed(raw[n]).alias(n)
        for n in ORDER_FIELDS
    ]
    orders = orders.with_columns(normalised)
    if sheet.implied_currency:
        orders = orders.with_columns(pl.col("currency").fill_null(pl.lit(sheet.implied_currency)))
    return orders


@dataclass(frozen=True)
class RowFacts:
    """What the probes of the recipient cells found, for the checks that follow."""

    doubtful_emails: pl.DataFrame  # source_row, recipient_email: not vouched for by FAST_EMAIL
    longest_bytes: dict[str, int]  # longest message, name and reference, in bytes
    reference_has_e: bool  # some reference could be scientific notation
    references_may_repeat: bool  # some upper-cased references share a hash
    may_be_blank: dict[str, bool]  # a recipient field with a cell that is blank once trimmed
    may_hold_control: dict[str, bool]  # a field with a cell holding a CONTROL_CHARACTERS one


def _row_probes() -> list[pl.Expr]:
    """Cheap scans of the recipient cells as read, for `_row_facts`; one value each.

    They look at the raw cells so that they need not wait for the trimmed ones,
    and each of them errs only towards looking closer: a raw cell is never
    shorter than trimmed, and an untrimmed address is never vouched for.
    """
    email = pl.col("recipient_email")
    vouched = email.str.contains(FAST_EMAIL) & (email.str.len_bytes() <= 64)
    return [
        # Positions of the addresses the pattern does not vouch for: usually none.
        (email.is_not_null() & ~vouched.fill_null(False)).arg_true().implode().alias(_UNVOUCHED),
        # Found anywhere (cheap to look for): email-validator decides those.
        email.str.contains_any(_SLOW_PATH_MARKERS, ascii_case_insensitive=True)
        .any()
        .alias("_markers"),
        *(
            pl.col(name).str.len_bytes().max().fill_null(0).alias(name)
            for name in ("message", "recipient_name", "reference")
        ),
        _unusual_reference(pl.col("reference")).any().alias("_unusual"),
        _strictly_ascending(pl.col("reference")).alias("_ascending"),
        # As read: trimming may yet remove one (a trailing tab), which the rule decides.
        # Literals, not the regex class: a third cheaper. References need none: the
        # `_unusual` probe looks for their ASCII controls, and any other is not ASCII.
        *(
            pl.col(name)
            .str.contains_any(_CONTROL_LITERALS[name])
            .any()
            .alias(_CONTROL_PROBE + name)
            for name in ("recipient_name", "message")
        ),
    ]


# Text that upper-casing or trimming could change, that has an 'E', or that has a
# control character: a lower-case ASCII letter, a space or an ASCII control (white
# space among them) anywhere, or any non-ASCII character (Unicode case and white
# space, other controls). Cheaper to look for than with a regex.
_FOLDABLE = [*string.ascii_lowercase, "E", " ", *map(chr, _ASCII_CONTROLS)]


def _unusual_reference(reference: pl.Expr) -> pl.Expr:
    """True where upper-casing or trimming could change the reference, where it is
    blank (a quoted empty CSV field is read as empty text, not as null), or where
    it has an 'E' or may have a control character."""
    size = reference.str.len_bytes()
    return reference.str.contains_any(_FOLDABLE) | (size == 0) | (reference.str.len_chars() != size)


def _strictly_ascending(reference: pl.Expr) -> pl.Expr:
    """True when the references as read, blanks left out, rise strictly: then none repeats.

    Sheets often list their references in order, and this costs a tenth of hashing them.
    """
    present = reference.drop_nulls()
    return (present > present.shift(1)).all()


def _references_compared(reference: pl.Expr, *, folded: bool = False) -> pl.Expr:
    """A 64-bit hash per reference, as references compare (see `_row_facts`)."""
    if folded:
        reference = reference.str.strip_chars().str.to_uppercase()
    return reference.drop_nulls().hash()


def _references_may_repeat(frame: pl.DataFrame, *, folded: bool) -> bool:
    reference = pl.col("reference")
    compared = _references_compared(reference, folded=folded)
    return bool(frame.select(compared.n_unique() < reference.count()).item())


def _doubtful_emails(
    frame: pl.DataFrame, found: Mapping[str, Any], unvouched: pl.Series
) -> pl.DataFrame:
    """source_row and trimmed address of every address email-validator should judge."""
    positions = unvouched
    if found["_markers"]:
        # Found anywhere (cheap to look for): email-validator decides those.
        email = pl.col("recipient_email")
        marked = email.str.contains_any(_SLOW_PATH_MARKERS, ascii_case_insensitive=True)
        positions = pl.concat(
            [positions, frame.select(marked.fill_null(False).arg_true()).to_series()]
        )
        positions = positions.unique().sort()
    return frame[positions].select(SOURCE_ROW, pl.col("recipient_email").str.strip_chars())


def _row_facts(frame: pl.DataFrame, found: Mapping[str, Any], *, unvouched: pl.Series) -> RowFacts:
    """What the probes found (`found`, and the positions of the `unvouched` addresses)."""
    doubtful = _doubtful_emails(frame, found, unvouched)
    # References compare trimmed and case-insensitively, but upper-casing a
    # million cells is dear. When no reference is `_unusual`, comparing them
    # as read is the same, and references rising strictly cannot repeat. The
    # same look finds any 'E', which a reference that Excel wrote in
    # scientific notation has.
    has_e = False
    if found["_unusual"]:
        has_e = bool(frame.select(pl.col("reference").str.contains_any(["E", "e"]).any()).item())
        repeat = _references_may_repeat(frame, folded=True)
    else:
        repeat = not found["_ascending"] and _references_may_repeat(frame, folded=False)
    # A cell is blank once trimmed when it is null, empty or only spaces. polars
    # counts the nulls anyway; an empty or spaces-only address is not vouched
    # for, and an empty or spaces-only reference is `_unusual`.
    blank_email = doubtful["recipient_email"] == ""
    may_be_blank = {
        "reference": frame["reference"].null_count() > 0 or bool(found["_unusual"]),
        "recipient_email": frame["recipient_email"].null_count() > 0 or bool(blank_email.any()),
        # not probed: only the trimmed cells can tell
        "recipient_name": True,
        "message": True,
    }
    return RowFacts(
        doubtful_emails=doubtful.filter(~blank_email),  # a blank address is reported as missing
        longest_bytes={n: int(found[n]) for n in ("message", "recipient_name", "reference")},
        reference_has_e=has_e,
        references_may_repeat=repeat,
        may_be_blank=may_be_blank,
        may_hold_control={
            "reference": bool(found["_unusual"]),
            "recipient_name": bool(found[_CONTROL_PROBE + "recipient_name"]),
            "message": bool(found[_CONTROL_PROBE + "message"]),
        },
    )
