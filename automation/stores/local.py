"""A ``file://`` backend: its root directory on this machine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


class LocalStore:
    def __init__(self, url: str, root: Path) -> None:
        self.url, self.root = url, root

    def names(self, directory: str, start_after: str | None = None) -> Iterator[str]:
        try:
            names = sorted(entry.name for entry in (self.root / directory).iterdir())
        except (FileNotFoundError, NotADirectoryError):
            names = []
        return iter([name for name in names if start_after is None or name > start_after])

    def read(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def where(self, key: str) -> str:
        return str(self.root / key)
