"""The store a backend URL names. The only module that names a concrete store."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

from automation.stores.base import BackendStore
from automation.stores.local import LocalStore


def backend_root(backend_url: str) -> Path | None:
    """The directory a ``file://`` backend URL names (None for any other backend)."""
    if not backend_url.startswith("file://"):
        return None
    return Path(unquote(backend_url.removeprefix("file://").split("?", 1)[0])).expanduser()


def backend_store(backend_url: str) -> BackendStore | None:
    """The store of a ``file://`` or ``s3://`` backend; None for one mlrelease cannot read (Pulumi Cloud, ...)."""
    root = backend_root(backend_url)
    if root is not None:
        return LocalStore(backend_url, root)
    if backend_url.startswith("s3://"):
        from automation.stores.s3 import S3Store  # boto3 is imported only where the backend is in S3

        return S3Store(backend_url)
    return None
