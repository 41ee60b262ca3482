"""Container images for the local cluster, built without a registry and cached by content.

- ``pause`` and ``coredns``: one static Go binary each (built by scripts/cluster-tools.sh), packed as a
  one-layer image.
- ``mlserver``: a Debian bookworm rootfs from ``mmdebstrap`` with MLServer and the project's runtimes
  pip-installed in a virtualenv, at the versions pinned in constraints.txt (so the pod serves what the local
  target serves).

Each image is a docker-archive tarball (``manifest.json``, a config, one layer) that ``ctr images import``
loads into containerd's ``k8s.io`` namespace. The tag is a digest of everything that goes into the image, so
an unchanged input never rebuilds and a changed one never reuses a stale image.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cluster.layout import ROOT, binary, cache_dir
from cluster.netns import ClusterError

REGISTRY = "mlrelease.local"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("MLRELEASE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# The runtimes the model-server image carries: the local target's model server, version for version.
MLSERVER_PACKAGES = ("mlserver", "mlserver-sklearn", "mlserver-lightgbm", "scikit-learn", "xgboost-cpu", "lightgbm")
MLSERVER_NODEPS = ROOT / "requirements-nodeps.txt"
IMAGE_RECIPE_VERSION = "1"  # bump when the way an image is built changes


@dataclass(frozen=True)
class Image:
    name: str
    tag: str
    tarball: Path

    @property
    def ref(self) -> str:
        return f"{REGISTRY}/{self.name}:{self.tag}"


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:16]


def _images_dir() -> Path:
    path = cache_dir() / "images"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_archive(out: Path, ref: str, layer: Path, config: dict) -> None:
    """Write a docker-archive tarball of one layer; ``config`` is the image's runtime config."""
    layer_digest = hashlib.sha256()
    with open(layer, "rb") as f:
        while chunk := f.read(1 << 20):
            layer_digest.update(chunk)
    image_config = json.dumps(
        {
            "architecture": "amd64" if os.uname().machine == "x86_64" else "arm64",
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest.hexdigest()}"]},
        },
        sort_keys=True,
    ).encode()
    manifest = json.dumps([{"Config": "config.json", "RepoTags": [ref], "Layers": ["layer.tar"]}]).encode()
    tmp = out.with_suffix(".partial")
    with tarfile.open(tmp, "w") as archive:
        for name, data in (("manifest.json", manifest), ("config.json", image_config)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        archive.add(layer, arcname="layer.tar")
    tmp.replace(out)


def _binary_image(name: str, binary_name: str, entrypoint: list[str]) -> Image:
    source = binary(binary_name)
    data = source.read_bytes()
    tag = _digest(IMAGE_RECIPE_VERSION.encode(), data, json.dumps(entrypoint).encode())
    out = _images_dir() / f"{name}-{tag}.tar"
    image = Image(name, tag, out)
    if out.exists():
        return image
    with tempfile.TemporaryDirectory() as tmp:
        layer = Path(tmp) / "layer.tar"
        with tarfile.open(layer, "w") as tar:
            info = tarfile.TarInfo(entrypoint[0].lstrip("/"))
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
        _write_archive(out, image.ref, layer, {"Entrypoint": entrypoint, "User": "65534:65534"})
    return image


def pause_image() -> Image:
    return _binary_image("pause", "mlrelease-pause", ["/pause"])


def coredns_image() -> Image:
    return _binary_image("coredns", "coredns", ["/coredns"])


def _mlserver_requirements() -> tuple[list[str], list[str]]:
    """Pins for the image, read from constraints.txt and requirements-nodeps.txt."""
    wanted = {p.replace("-", "_").lower() for p in MLSERVER_PACKAGES}
    pins = []
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==\S+", line.strip())
        if m and m.group(1).replace("-", "_").lower() in wanted:
            pins.append(line.strip())
    if len(pins) != len(wanted):
        raise ClusterError(f"constraints.txt pins only {pins} of {sorted(wanted)}: refresh constraints.txt")
    nodeps = [ln.strip() for ln in MLSERVER_NODEPS.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    return pins, nodeps


def _host_ca_bundle() -> Path:
    """The CA bundle the host's pip verifies PyPI with: PIP_CERT, else the system bundle."""
    for candidate in (
        os.environ.get("PIP_CERT"),
        os.environ.get("SSL_CERT_FILE"),
        "/etc/ssl/certs/ca-certificates.crt",
    ):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise ClusterError("no CA bundle for pip found: install ca-certificates or set PIP_CERT")


def mlserver_image() -> Image:
    pins, nodeps = _mlserver_requirements()
    constraints = (ROOT / "constraints.txt").read_bytes()
    tag = _digest(IMAGE_RECIPE_VERSION.encode(), DEBIAN_SUITE.encode(), "\n".join(pins + nodeps).encode(), constraints)
    out = _images_dir() / f"mlserver-{tag}.tar"
    image = Image("mlserver", tag, out)
    if out.exists():
        return image
    if shutil.which("mmdebstrap") is None:
        raise ClusterError("mmdebstrap is not installed: run 'make cluster-tools' (installs Debian's mmdebstrap)")
    with tempfile.TemporaryDirectory(dir=_images_dir()) as tmp:
        work = Path(tmp)
        (work / "constraints.txt").write_bytes(constraints)
        (work / "requirements.txt").write_text("\n".join(pins) + "\n")
        (work / "nodeps.txt").write_text("\n".join(nodeps) + "\n")
        # pip inside the chroot trusts what the host's pip trusts (a registry proxy may sign with its own CA);
        # the bundle is removed before the image is packed, so pods do not inherit the host's trust.
        shutil.copyfile(_host_ca_bundle(), work / "pip-ca.crt")
        # A clean environment: the host's PIP_*/REQUESTS_CA_BUNDLE point at host paths that mean other files here.
        index = os.environ.get("PIP_INDEX_URL")
        chroot = "env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root " + (f"PIP_INDEX_URL={index} " if index else "")
        chroot += 'chroot "$1"'
        pip = "/opt/mlserver/bin/pip install -q --disable-pip-version-check --no-cache-dir --cert /tmp/pip-ca.crt"
        hooks = [
            f'cp {work}/constraints.txt {work}/requirements.txt {work}/nodeps.txt {work}/pip-ca.crt "$1/tmp/"',
            f"{chroot} python3 -m venv /opt/mlserver",
            f"{chroot} {pip} -r /tmp/requirements.txt -c /tmp/constraints.txt",
            f"{chroot} {pip} --no-deps -r /tmp/nodeps.txt",
            'rm -f "$1/tmp/constraints.txt" "$1/tmp/requirements.txt" "$1/tmp/nodeps.txt" "$1/tmp/pip-ca.crt"',
            'rm -rf "$1/var/cache/apt/archives"/*.deb "$1/var/lib/apt/lists"/*',
        ]
        layer = work / "layer.tar"
        cmd = [
            "mmdebstrap", "--quiet", "--mode=root", "--variant=minbase",
            "--include=python3,python3-venv,libgomp1,ca-certificates",
            *(f"--customize-hook={hook}" for hook in hooks),
            DEBIAN_SUITE, str(layer), DEBIAN_MIRROR,
        ]  # fmt: skip
        log = _images_dir() / "mlserver-build.log"
        done = subprocess.run(cmd, capture_output=True, text=True)
        log.write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            cause = next((ln for ln in lines if ln.startswith("ERROR:")), lines[-1] if lines else "no output")
            raise ClusterError(
                f"building the MLServer image failed: {cause} (log: {log}): check that {DEBIAN_MIRROR} and PyPI "
                "are reachable"
            )
        _write_archive(
            out,
            image.ref,
            layer,
            {
                "Entrypoint": ["/opt/mlserver/bin/mlserver"],
                "Cmd": ["start", "/models"],
                "Env": ["PATH=/opt/mlserver/bin:/usr/sbin:/usr/bin:/sbin:/bin", "MLSERVER_PARALLEL_WORKERS=0"],
                "WorkingDir": "/",
            },
        )
    return image


def all_images() -> list[Image]:
    return [pause_image(), coredns_image(), mlserver_image()]
