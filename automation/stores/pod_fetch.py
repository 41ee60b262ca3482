"""The init step of a Kubernetes model pod whose model directory is in object storage.

``python -m automation.stores.pod_fetch URL SHA256 DIR`` fetches the directory the way a runner does
(``artifacts.fetch_model_dir``: into a partial directory, the artifact's sha256 checked before anything is renamed
into place) and moves it to DIR, which the pod's model server serves (and checks once more before serving). So a
pod never depends on the runner's disk, and a tampered object never reaches a model server. On failure it exits 2
with the one-line error on stderr, which the pod's termination message carries (``kubectl describe pod``).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from automation.stores.artifacts import fetch_model_dir, location
from serving.artifacts import ArtifactDigestError, ModelDirError

USAGE = "usage: python -m automation.stores.pod_fetch s3://BUCKET/PREFIX/ SHA256 DIR"


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(USAGE, file=sys.stderr)
        return 2
    url, sha256, target = argv[0], argv[1], Path(argv[2])
    try:
        entry = fetch_model_dir(url, sha256, target.parent / ".fetch")
    except (ModelDirError, ArtifactDigestError, ValueError) as exc:
        print(f"mlrelease: error: {exc}", file=sys.stderr)
        return 2
    shutil.rmtree(target, ignore_errors=True)  # a restarted init step: the last attempt's copy
    entry.rename(target)
    print(f"mlrelease: {location(url)} fetched into {target}, sha256 {sha256} verified")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
