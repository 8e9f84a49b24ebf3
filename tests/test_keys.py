"""The one match key: every stage that recognises an order by content agrees on it."""

from __future__ import annotations

import unicodedata
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from batcher.core import keys
from batcher.core.keys import canonical_amount, match_key

names = st.text(alphabet=st.characters(codec="utf-8", categories=("L", "M", "Zs")), max_size=20)
amounts = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("100000"), places=2)


@given(name=names, amount=amounts)
def test_nfc_and_nfd_spellings_of_a_name_match(name: str, amount: Decimal) -> None:
    nfc = unicodedata.normalize("NFC", name)
    nfd = unicodedata.normalize("NFD", name)
    assert match_key("P1", amount, "a@x.io", nfc) == match_key("P1", amount, "a@x.io", nfd)


@given(amount=amounts, zeros=st.integers(min_value=0, max_value=4))
def test_equal_amounts_in_different_spellings_match(amount: Decimal, zeros: int) -> None:
    padded = Decimal(f"{amount:f}" + ("0" * zeros if "." in f"{amount:f}" else ""))
    scientific = Decimal(f"{amount.normalize():E}")
    assert canonical_amount(amount) == canonical_amount(padded) == canonical_amount(scientific)
    assert match_key("p", amount, " A@X.io", "Zoë  Å") == match_key(
        "P ", scientific, "a@x.io", "Zoë Å"
    )


@given(a=amounts, b=amounts)
def test_different_amounts_never_match(a: Decimal, b: Decimal) -> None:
    assert (canonical_amount(a) == canonical_amount(b)) == (a == b)


def test_hundred_and_one_e_two_are_one_amount() -> None:
    assert canonical_amount(Decimal("100")) == canonical_amount(Decimal("1E+2")) == "100"
    assert canonical_amount(Decimal("-0.00")) == "0"


def test_every_stage_uses_the_one_key() -> None:
    from batcher.execute import runner
    from batcher.providers import ugiftme
    from batcher.reporting import reconcile

    for module in (runner, ugiftme, reconcile):
        assert module.match_key is keys.match_key, module.__name__


def _normalized(amount: Decimal) -> str:
    """canonical_amount's definition: the amount normalised, in plain notation."""
    text = format(amount.normalize(), "f")
    return "0" if text in {"-0", "0"} else text


@given(
    amount=st.decimals(allow_nan=False, allow_infinity=False)
    | st.integers(0, 12).flatmap(lambda p: st.decimals(min_value=-1000, max_value=1000, places=p))
    | st.integers(-(10**30), 10**30).map(Decimal)
    | st.tuples(st.integers(-(10**9), 10**9), st.integers(-12, 12)).map(
        lambda p: Decimal(p[0]).scaleb(p[1])
    )
)
def test_canonical_amount_is_the_normalised_plain_spelling(amount: Decimal) -> None:
    assert canonical_amount(amount) == _normalized(amount)


def test_canonical_amount_spellings() -> None:
    for text, want in [("14.60", "14.6"), ("100.00", "100"), ("-0.00", "0"), ("0E-7", "0"),
                       ("1E+2", "100"), ("0.000001", "0.000001"), ("1E-7", "0.0000001"),
                       ("-12.340", "-12.34"), ("100", "100"), ("12345678901234567890.50", "12345678901234567890.5"),
                       ("1234567890123456789012345678.90", "1234567890123456789012345679")]:  # fmt: skip
        assert canonical_amount(Decimal(text)) == want == _normalized(Decimal(text)), text


@given(st.text())
def test_normalised_text_is_nfc_trimmed_and_collapsed_on_either_path(text: str) -> None:
    """ASCII skips the NFC call (it changes nothing there): the same text either way."""
    assert keys.normalise_text(text) == " ".join(unicodedata.normalize("NFC", text).split())


@given(st.text(alphabet=st.characters(max_codepoint=127)))
def test_ascii_text_is_normalised_without_calling_nfc(text: str) -> None:
    from unittest import mock

    with mock.patch.object(keys.unicodedata, "normalize", side_effect=AssertionError):
        assert keys.normalise_text(text) == " ".join(text.split())
