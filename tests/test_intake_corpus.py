"""Every file in tests/data/hostile gives exactly the outcome tests/data/make_hostile.py states."""

from __future__ import annotations

import importlib.util
import sys
from decimal import Decimal
from pathlib import Path
from types import ModuleType

import pytest

from batcher.core.errors import InputFileError, UsageError
from batcher.core.models import Balance, Product
from batcher.intake.read import read_sheet
from batcher.intake.validate import validate_rows

DATA = Path(__file__).parent / "data"
HOSTILE = DATA / "hostile"
PRODUCTS = [
    Product(product_code="SHOP_GB", merchant="Shop", currency="GBP", countries=("GB",)),
    Product(product_code="SHOP_EU", merchant="Shop", currency="EUR", countries=("DE",)),
]
WALLETS = [
    Balance(currency=c, balance=Decimal(10**6), available=Decimal(10**6)) for c in ("GBP", "EUR")
]


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_hostile", DATA / "make_hostile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


GENERATOR = load_generator()


def test_committed_files_are_exactly_what_the_generator_writes(tmp_path: Path) -> None:
    written = GENERATOR.build(tmp_path)
    assert sorted(p.name for p in HOSTILE.iterdir()) == sorted(p.name for p in written)
    for path in written:
        assert path.read_bytes() == (HOSTILE / path.name).read_bytes(), path.name


def test_the_corpus_has_at_least_60_files() -> None:
    assert len(GENERATOR.FILES) >= 60


@pytest.mark.parametrize("name", sorted(GENERATOR.FILES))
def test_outcome(name: str) -> None:
    expect = GENERATOR.FILES[name][1]
    path = HOSTILE / name
    if expect.refused:
        error_type = UsageError if expect.usage else InputFileError
        with pytest.raises(error_type) as caught:
            read_sheet(path, **expect.options)
        assert type(caught.value) is error_type
        assert expect.refused in caught.value.message
        assert expect.hint in (caught.value.hint or "")
        if not expect.usage:
            assert caught.value.hint, "every refusal says how to fix it"
        return
    sheet = read_sheet(path, **expect.options)
    result = validate_rows(sheet, PRODUCTS, WALLETS)
    errors = result.errors.select("source_row", "column", "code").rows()
    assert tuple(errors) == expect.errors
    assert result.valid_count == expect.valid
    assert tuple(w.code for w in sheet.warnings) == expect.warnings
