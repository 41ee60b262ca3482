"""The loopback HTTP clients skip only what plain HTTP never uses: a TLS URL still gets a verifying client."""

from __future__ import annotations

import ssl

from serving import http


def _context(client) -> ssl.SSLContext:
    return client._transport._pool._ssl_context  # httpx keeps the context it built on its connection pool


def test_plain_http_gets_no_ca_bundle_and_https_is_verified() -> None:
    with http.client("http://127.0.0.1:9090") as plain, http.client("https://prometheus.example:9090") as tls:
        assert _context(plain).verify_mode == ssl.CERT_NONE  # never used: http:// has no handshake
        assert _context(tls).verify_mode == ssl.CERT_REQUIRED and _context(tls).check_hostname
