"""A full disk for fault tests: a small tmpfs mounted by the test, filled until writes fail with ENOSPC.

Needs root (CI runs as root, like the cluster tests); it fails, never skips, elsewhere. Unmounted on exit.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def full_tmpfs(where: Path, size: str = "2m") -> Iterator[Path]:
    """``where`` as a mounted tmpfs of ``size``, filled to the last byte."""
    if os.geteuid() != 0:
        pytest.fail("the full-disk fault test mounts a tmpfs and needs root (CI runs as root)")
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)], check=True)
    try:
        for name in ("log", "pairs"):
            (where / name).mkdir()
        with open(where / "filler", "wb", buffering=0) as out:
            try:
                while out.write(b"\0" * 65536):
                    pass
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
