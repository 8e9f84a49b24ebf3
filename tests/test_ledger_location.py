"""The ledger URL as shown in logs and errors: never with its password."""

from __future__ import annotations

import pytest

from batcher.ledger.location import mask_url


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:s3cret@h/db",
        "postgresql://u:s3cr?et@h/db",  # libpq takes "?" and "#" as part of the password
        "postgresql://u:s3cr#et@h:5432/db?sslmode=require",
        "postgresql://u@h/db?password=s3cret",
    ],
)
def test_the_password_never_shows(url: str) -> None:
    shown = mask_url(url)
    assert "s3cr" not in shown and "***" in shown
