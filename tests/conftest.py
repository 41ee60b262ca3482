"""Session-wide fixtures: one real object store (SeaweedFS, ``automation.s3server``) for every shared-state test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from automation.s3server import S3Server, start_s3_server, stop_s3_server


@pytest.fixture(scope="session")
def s3_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("s3-run")
    yield path
    stop_s3_server(path)


@pytest.fixture(scope="session")
def s3(s3_run_dir: Path) -> S3Server:
    """The object store, started once; its state bucket exists."""
    return start_s3_server(s3_run_dir)


@pytest.fixture
def s3_env(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This process signs for the store (as a runner's environment would), and child processes inherit it."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    return s3.env()
