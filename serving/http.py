"""httpx clients for mlrelease's own plain-HTTP listeners (router, model servers, Prometheus on loopback).

httpx builds a TLS context from certifi's CA bundle for every client it creates, ``httpx.get`` included:
65-80 ms of CPU each, paid by every readiness poll and by a rollback's first router call, for a context a
plain ``http://`` URL never uses. These helpers build none for ``http://``; any other URL (a firm's
Prometheus behind TLS) gets httpx's default, verifying client.
"""

from __future__ import annotations

from typing import Any

import httpx


def _tls(url: str) -> dict[str, Any]:
    return {"verify": False} if url.startswith("http://") else {}  # no TLS on http://: no context to verify


def client(base_url: str, **kwargs: Any) -> httpx.Client:
    """A client for ``base_url`` (redirects are not followed, so requests stay on that scheme)."""
    return httpx.Client(base_url=base_url, **_tls(base_url), **kwargs)


def get(url: str, **kwargs: Any) -> httpx.Response:
    with httpx.Client(**_tls(url)) as http:
        return http.get(url, **kwargs)


def post(url: str, **kwargs: Any) -> httpx.Response:
    with httpx.Client(**_tls(url)) as http:
        return http.post(url, **kwargs)
