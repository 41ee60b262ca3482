"""Writing the cluster's config files without touching unchanged ones.

kube-proxy watches its config file and exits when it is written, to be restarted with the new settings; an
idempotent ``up`` must therefore leave a file alone when its content is already what it would write.
"""

from __future__ import annotations

from pathlib import Path


def write_if_changed(path: Path, text: str, mode: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    if mode is not None:
        path.chmod(mode)
    return path
