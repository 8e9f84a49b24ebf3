"""The TLS setting of a provider connection: full verification for https; for the
loopback-only plain http, a context that trusts no certificate (and costs nothing)."""

from __future__ import annotations

import ssl

import pytest

from batcher.transport.http import _tls_context


@pytest.mark.parametrize("url", ["https://api.example.com/v1", "HTTPS://api.example.com"])
def test_https_keeps_full_verification(url: str) -> None:
    assert _tls_context(url) is True  # httpx's default: the CA bundle, hostname checks


@pytest.mark.parametrize("url", ["http://127.0.0.1:8765/api", "HTTP://localhost"])
def test_plain_http_gets_a_context_that_trusts_nothing(url: str) -> None:
    context = _tls_context(url)
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.cert_store_stats()["x509_ca"] == 0  # no certificate could ever verify
