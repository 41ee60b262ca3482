"""Read every ``mlrelease:*`` key of the running stack, so misspelled keys are errors rather than ignored.

``pulumi.Config`` only answers for keys the program asks about; a typo such as ``mlrelease:modle`` would pass
unnoticed. The engine hands the program the whole config map (``PULUMI_CONFIG`` for CLI runs, the runtime's
config for Automation API inline programs); this module reads it and decodes structured values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pulumi.runtime.config import CONFIG, get_config_env

from components.spec import NAMESPACE


def namespace_config() -> dict[str, Any]:
    """The running stack's ``mlrelease:*`` config as ``{key without namespace: decoded value}``."""
    return namespaced({**get_config_env(), **CONFIG.get()})


def namespaced(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The ``mlrelease:*`` keys of a whole config map, without the namespace, structured values decoded."""
    prefix = f"{NAMESPACE}:"
    return {key[len(prefix) :]: decode_value(value) for key, value in raw.items() if key.startswith(prefix)}


def decode_value(value: Any) -> Any:
    """Structured values arrive as JSON text; plain strings stay strings."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value
