"""Signature checks over the raw body: HMAC-SHA256, lowercase hex, constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from batcher.core.secrets import SecretStr

#: an order event for 100 orders is ~60 KiB; anything far larger is not the provider
MAX_BODY_BYTES = 1024 * 1024


def signature(secret: SecretStr, body: bytes) -> str:
    return hmac.new(secret.get_secret_value().encode("utf-8"), body, hashlib.sha256).hexdigest()


def verified(secrets: Sequence[SecretStr], body: bytes, header: str | None) -> bool:
    """True when `header` is the signature of `body` under one of `secrets` (more than
    one while a secret is being rotated). Every secret is tried, so the time taken
    does not tell which one matched or how much of the signature was right."""
    if not header:
        return False
    given = header.strip().lower().encode("ascii", "replace")
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(signature(secret, body).encode("ascii"), given)
    return matched
