"""A ``file://`` backend's own files, read without the engine.

Every engine call costs a process start and a backend load (0.5-1 s each on a CI runner); a rollback's first
traffic move must not wait for three of them. Pulumi's DIY backend keeps a stack's latest checkpoint at
``.pulumi/stacks/<project>/<stack>.json`` (``.json.gz`` under ``PULUMI_SELF_MANAGED_STATE_GZIP``) and, per
update, a history record and checkpoint under ``.pulumi/history/<project>/<stack>/``. Reading them is a file
read; what they say is what ``pulumi stack output`` would say, because the engine reads the same file.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote

STACK_TYPE = "pulumi:pulumi:Stack"
PROJECT_NAME = "mlrelease"  # Pulumi.yaml's name: the backend keeps the project's stacks under it


def backend_root(backend_url: str) -> Path | None:
    """The directory a ``file://`` backend URL names (None for any other backend)."""
    if not backend_url.startswith("file://"):
        return None
    return Path(unquote(backend_url.removeprefix("file://").split("?", 1)[0])).expanduser()


def stack_outputs(backend_url: str, project: str, stack: str) -> dict[str, Any] | None:
    """The stack's outputs as its latest checkpoint holds them, or None when there is no readable checkpoint
    (another kind of backend, a stack never updated, a file being replaced): the caller then asks the engine."""
    root = backend_root(backend_url)
    if root is None:
        return None
    base = root / ".pulumi" / "stacks" / project / stack.rsplit("/", 1)[-1]
    for path in (base.with_name(base.name + ".json"), base.with_name(base.name + ".json.gz")):
        try:
            with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as file:
                checkpoint = json.load(file)
        except FileNotFoundError:
            continue
        except (OSError, ValueError):
            return None
        resources = ((checkpoint.get("checkpoint") or {}).get("latest") or {}).get("resources") or []
        root_resource = next((r for r in resources if r.get("type") == STACK_TYPE), None)
        return dict((root_resource or {}).get("outputs") or {})
    return None
