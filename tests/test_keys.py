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
