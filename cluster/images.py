"""Container images for the local cluster, built without a registry and cached by content.

- ``pause`` and ``coredns``: one static Go binary each (built by scripts/cluster-tools.sh), packed as a
  one-layer image.
- the base rootfs layer: a Debian bookworm rootfs from ``mmdebstrap`` with MLServer, the project's runtimes
  and the router's stack pip-installed in a virtualenv at ``/opt/mlserver``, at the versions pinned in
  constraints.txt (so a pod serves what the local target serves). Built once, cached as
  ``rootfs-<tag>.tar``.
- ``mlserver``: that layer alone, starting ``mlserver start /models``.
- ``mlrelease``: that layer plus one small layer with the project's ``serving`` package and its
  ``automation.stores`` package at ``/opt/mlrelease``. One image serves every role of the Kubernetes target,
  the router pods, the model-server pods and their init step that fetches an ``s3://`` model directory: they
  share the pinned stack and the code (``python -m serving.modelserver``, ``python -m
  automation.stores.pod_fetch``), so there is one image to import and one to pull; the pod sets the command. A
  code change rebuilds only the code layer, in about two seconds.

Each image is a docker-archive tarball (``manifest.json``, a config, its layers) that ``ctr images import``
loads into containerd's ``k8s.io`` namespace; both images carry the same rootfs layer bytes, so containerd
stores it once. The tag is a digest of everything that goes into the image, so an unchanged input never
rebuilds and a changed one never reuses a stale image. docker/router.Dockerfile and
docker/modelserver.Dockerfile build the equivalent images for a registry.
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
from pathlib import Path, PurePosixPath

from cluster.layout import ROOT, binary, cache_dir
from cluster.netns import ClusterError

REGISTRY = "mlrelease.local"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("MLRELEASE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# The runtimes the model-server image carries: the local target's model server, version for version.
MLSERVER_PACKAGES = ("mlserver", "mlserver-sklearn", "mlserver-lightgbm", "scikit-learn", "xgboost-cpu", "lightgbm")
# What the ``serving`` package imports at module level besides the standard library: the router's stack. Most
# come with MLServer already; naming them all keeps the image right if MLServer's dependencies change.
SERVING_PACKAGES = (
    "aiohttp", "httpx", "orjson", "uvloop", "prometheus-client", "pyarrow", "pydantic", "numpy", "pandas", "psutil",
    "joblib",
)  # fmt: skip
# What the model pods' init step imports to fetch an ``s3://`` model directory (automation/stores).
FETCH_PACKAGES = ("boto3", "botocore")
MLSERVER_NODEPS = ROOT / "requirements-nodeps.txt"
# The code layer: the ``serving`` package, and the object-store code the init step runs (no other module of
# ``automation``: those need the engine). Paths relative to the repository, which is /opt/mlrelease in the image.
CODE_PATTERNS = ("serving/**/*.py", "automation/__init__.py", "automation/stores/*.py")
CODE_ROOT = "opt/mlrelease"
IMAGE_RECIPE_VERSION = "2"  # bump when the way an image is built changes


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


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _write_archive(out: Path, ref: str, layers: list[Path], config: dict) -> None:
    """Write a docker-archive tarball of ``layers``, bottom first; ``config`` is the image's runtime config."""
    image_config = json.dumps(
        {
            "architecture": "amd64" if os.uname().machine == "x86_64" else "arm64",
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{_file_sha256(layer)}" for layer in layers]},
        },
        sort_keys=True,
    ).encode()
    names = [f"layer{i}.tar" for i in range(len(layers))]
    manifest = json.dumps([{"Config": "config.json", "RepoTags": [ref], "Layers": names}]).encode()
    tmp = out.with_suffix(".partial")
    with tarfile.open(tmp, "w") as archive:
        for name, data in (("manifest.json", manifest), ("config.json", image_config)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, layer in zip(names, layers, strict=True):
            archive.add(layer, arcname=name)
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
        _write_archive(out, image.ref, [layer], {"Entrypoint": entrypoint, "User": "65534:65534"})
    return image


def pause_image() -> Image:
    return _binary_image("pause", "mlrelease-pause", ["/pause"])


def coredns_image() -> Image:
    return _binary_image("coredns", "coredns", ["/coredns"])


def _mlserver_requirements() -> tuple[list[str], list[str]]:
    """Pins for the base rootfs, read from constraints.txt and requirements-nodeps.txt."""
    wanted = {p.replace("-", "_").lower() for p in MLSERVER_PACKAGES + SERVING_PACKAGES + FETCH_PACKAGES}
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


def _rootfs_tag() -> str:
    """The base rootfs's tag, a digest of what goes into it; computing it builds nothing."""
    pins, nodeps = _mlserver_requirements()
    constraints = (ROOT / "constraints.txt").read_bytes()
    return _digest(IMAGE_RECIPE_VERSION.encode(), DEBIAN_SUITE.encode(), "\n".join(pins + nodeps).encode(), constraints)


def _rootfs_layer(tag: str) -> Path:
    """The base rootfs layer tarball of ``tag``, built on first use and cached: every image built on it shares it."""
    out = _images_dir() / f"rootfs-{tag}.tar"
    if out.exists():
        return out
    pins, nodeps = _mlserver_requirements()
    constraints = (ROOT / "constraints.txt").read_bytes()
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
        log = _images_dir() / "rootfs-build.log"
        done = subprocess.run(cmd, capture_output=True, text=True)
        log.write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            cause = next((ln for ln in lines if ln.startswith("ERROR:")), lines[-1] if lines else "no output")
            raise ClusterError(
                f"building the base rootfs failed: {cause} (log: {log}): check that {DEBIAN_MIRROR} and PyPI "
                "are reachable"
            )
        layer.replace(out)
    return out


def mlserver_image() -> Image:
    rootfs = _rootfs_tag()
    tag = _digest(IMAGE_RECIPE_VERSION.encode(), b"mlserver", rootfs.encode())
    out = _images_dir() / f"mlserver-{tag}.tar"
    image = Image("mlserver", tag, out)
    if out.exists():
        return image
    config = {
        "Entrypoint": ["/opt/mlserver/bin/mlserver"],
        "Cmd": ["start", "/models"],
        "Env": ["PATH=/opt/mlserver/bin:/usr/sbin:/usr/bin:/sbin:/bin", "MLSERVER_PARALLEL_WORKERS=0"],
        "WorkingDir": "/",
    }
    _write_archive(out, image.ref, [_rootfs_layer(rootfs)], config)
    return image


def _code_layer() -> bytes:
    """The ``CODE_PATTERNS`` sources as a layer at /opt/mlrelease, byte for byte the same for the same code.

    Sorted names, mtime 0, owner 0:0, modes 0644/0755: nothing of the checkout but the sources' content and
    names reaches the bytes, so the tag changes exactly when the code does.
    """
    files = sorted(
        {p for pattern in CODE_PATTERNS for p in ROOT.glob(pattern) if "__pycache__" not in p.relative_to(ROOT).parts}
    )
    entries: dict[str, Path | None] = {}
    for path in files:
        name = PurePosixPath(CODE_ROOT, path.relative_to(ROOT).as_posix())
        entries[str(name)] = path
        for parent in name.parents:
            if parent.is_relative_to(CODE_ROOT):
                entries.setdefault(str(parent), None)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(entries):
            info = tarfile.TarInfo(name)
            info.uid = info.gid = 0
            info.mtime = 0
            source = entries[name]
            if source is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                data = source.read_bytes()
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def mlrelease_image() -> Image:
    """The router's and the model server's image: the base rootfs plus the ``serving`` package; pods set the command.

    Older ``mlrelease`` archives are removed when a new one is written: each is the size of the rootfs and a
    code change makes a new one, while rebuilding any of them from the cached rootfs takes seconds.
    """
    rootfs = _rootfs_tag()
    code = _code_layer()
    tag = _digest(IMAGE_RECIPE_VERSION.encode(), rootfs.encode(), code)
    out = _images_dir() / f"mlrelease-{tag}.tar"
    image = Image("mlrelease", tag, out)
    if out.exists():
        return image
    base = _rootfs_layer(rootfs)
    config = {
        "Cmd": ["python", "-m", "serving.router", "--help"],
        "Env": [
            "PATH=/opt/mlserver/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            f"PYTHONPATH=/{CODE_ROOT}",
            "MLSERVER_PARALLEL_WORKERS=0",
            "OMP_NUM_THREADS=1",
        ],
        "WorkingDir": f"/{CODE_ROOT}",
    }
    with tempfile.TemporaryDirectory(dir=_images_dir()) as tmp:
        layer = Path(tmp) / "code.tar"
        layer.write_bytes(code)
        _write_archive(out, image.ref, [base, layer], config)
    for old in _images_dir().glob("mlrelease-*.tar"):
        if old != out:
            old.unlink(missing_ok=True)
    return image


def all_images() -> list[Image]:
    return [pause_image(), coredns_image(), mlserver_image(), mlrelease_image()]
