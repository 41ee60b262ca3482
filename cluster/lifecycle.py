"""``up``, ``down`` and ``status`` of the local cluster.

``up`` is idempotent: it starts what is not running and returns once the API server, the node and (on a real
node) CoreDNS are ready. ``down`` stops every process ``up`` started (by pid, then anything still in the
namespace), unmounts what kubelet and containerd mounted under the run directory, removes the pods' cgroups
and network namespaces, deletes the cluster's namespace and writes back the global sysctls recorded by the
first ``up``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cluster import api, control_plane, images, netns, node, probe, processes
from cluster.layout import MODES, NODE_NAME, Layout
from cluster.netns import ClusterError

CGROUP_ROOT = Path("/sys/fs/cgroup")
STOP_GRACE = 3.0
# Host paths containerd, the CNI plugins and kubelet create whatever they are configured with (containerd 1.6's
# shim sockets, libcni's result cache, kubelet's device-plugin directory). ``down`` removes those that did not
# exist before the first ``up``.
FIXED_HOST_PATHS = ("/run/containerd", "/var/lib/cni", "/var/lib/kubelet")
# kubelet links every container's log here, into the run directory; ``down`` removes the links that point there.
CONTAINER_LOG_LINKS = Path("/var/log/containers")


@dataclass
class State:
    mode: str = ""
    port: int = 0
    sysctls: dict[str, str] = field(default_factory=dict)
    netns_before: list[str] = field(default_factory=list)
    host_paths_created: list[str] = field(default_factory=list)
    images: dict[str, str] = field(default_factory=dict)
    fallback_reason: str = ""

    @classmethod
    def load(cls, layout: Layout) -> State | None:
        try:
            return cls(**json.loads(layout.state_file.read_text()))
        except FileNotFoundError:
            return None

    def save(self, layout: Layout) -> None:
        layout.state_file.write_text(json.dumps(asdict(self), indent=2))
        layout.state_file.chmod(0o600)


def _netns_names() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _requested_mode() -> str:
    mode = os.environ.get("MLRELEASE_CLUSTER_MODE", "auto")
    if mode not in (*MODES, "auto"):
        raise ClusterError(f"MLRELEASE_CLUSTER_MODE={mode!r} is not one of auto, real, kwok: unset it or pick one")
    return mode


def up(layout: Layout) -> State:
    requested = _requested_mode()
    layout.run.mkdir(parents=True, exist_ok=True)
    state = State.load(layout)
    if state is None and netns.pids_inside(layout):
        # Another cluster (another run directory) lives in this namespace: starting here would share its node
        # address and its pods' cgroups, and this run's ``down`` would stop it.
        raise ClusterError(
            f"network namespace {layout.netns} is in use by a cluster whose run directory is not {layout.run}: "
            "run 'down' with that MLRELEASE_CLUSTER_DIR first, or set another MLRELEASE_CLUSTER_NETNS"
        )
    if state is None:
        state = State(
            sysctls=netns.read_sysctls(),
            netns_before=_netns_names(),
            host_paths_created=[p for p in (*FIXED_HOST_PATHS, str(CONTAINER_LOG_LINKS)) if not Path(p).exists()],
        )
        state.save(layout)
    netns.create(layout)
    state.port = control_plane.up(layout)
    state.save(layout)
    mode = state.mode or requested
    if mode in ("auto", "real"):
        reason = probe.why_containers_cannot_run(layout)
        if not reason:
            # From here a failure (an image build, a node that never becomes Ready) is an error to fix, never a
            # reason to fall back: kwok would hide it.
            state.images = node.up_real(layout, images.all_images())
            state.mode = "real"
            mode = "real"
        else:
            if mode == "real":
                raise ClusterError(f"a real node cannot run here: {reason}; use MLRELEASE_CLUSTER_MODE=kwok")
            state.fallback_reason = reason
            print(f"cluster: containers cannot run on this machine ({reason}); using kwok nodes instead")
            mode = "kwok"
    if mode == "kwok":
        node.up_kwok(layout)
        state.mode = "kwok"
    state.save(layout)
    return state


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point.startswith(prefix):
            mounts.append(point)
    return sorted(set(mounts), key=len, reverse=True)


def _pod_cgroups() -> list[Path]:
    """Every ``kubepods`` cgroup directory kubelet made, deepest first."""
    found = []
    for controller in CGROUP_ROOT.iterdir():
        top = controller / "kubepods"
        if top.is_dir():
            found.extend(p for p in top.rglob("*") if p.is_dir())
            found.append(top)
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _pids_in_cgroups(dirs: list[Path]) -> list[int]:
    pids = set()
    for d in dirs:
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in (d / "cgroup.procs").read_text().split())
    return sorted(pids)


def down(layout: Layout) -> list[str]:
    """Stop everything; return the global sysctls that had to be written back."""
    state = State.load(layout)
    node.down_real(layout)
    # Everything down removes is discarded (etcd's data included), so a short grace is enough; the API server
    # otherwise waits out its watch clients for many seconds after SIGTERM.
    processes.stop(layout, list(reversed(processes.recorded(layout))), timeout=STOP_GRACE)
    cgroups = _pod_cgroups()
    processes.terminate(_pids_in_cgroups(cgroups) + netns.pids_inside(layout), timeout=STOP_GRACE)
    for point in _mounts_under(layout.run):
        subprocess.run(["umount", "-l", point], capture_output=True)
    for d in cgroups:
        with contextlib.suppress(OSError):
            d.rmdir()
    before = set(state.netns_before) if state else set()
    for name in _netns_names():
        if name.startswith("cni-") and name not in before:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
    netns.delete(layout)
    _remove_host_leftovers(layout, state)
    restored = netns.restore_sysctls(state.sysctls) if state else []
    shutil.rmtree(layout.run, ignore_errors=True)
    return restored


def _remove_host_leftovers(layout: Layout, state: State | None) -> None:
    run_dir = str(layout.run.resolve())
    if CONTAINER_LOG_LINKS.is_dir():
        for link in CONTAINER_LOG_LINKS.iterdir():
            if link.is_symlink() and os.readlink(link).startswith(run_dir):
                link.unlink()
    for path in state.host_paths_created if state else []:
        if Path(path).is_dir() and (path != str(CONTAINER_LOG_LINKS) or not any(Path(path).iterdir())):
            shutil.rmtree(path, ignore_errors=True)


def status(layout: Layout) -> dict:
    state = State.load(layout)
    procs = {name: processes.pid_of(layout, name) for name in processes.recorded(layout)}
    report = {
        "up": state is not None and netns.exists(layout) and layout.kubeconfig.exists() and api.ready(layout),
        "mode": state.mode if state else "",
        "netns": layout.netns if netns.exists(layout) else "",
        "kubeconfig": str(layout.kubeconfig) if layout.kubeconfig.exists() else "",
        "processes": procs,
        "images": state.images if state else {},
        "fallback_reason": state.fallback_reason if state else "",
        "sysctls_changed": {},
    }
    if state:
        now = netns.read_sysctls()
        report["sysctls_changed"] = {
            k: {"before": v, "now": now.get(k)} for k, v in state.sysctls.items() if now.get(k) != v
        }
        if report["up"] and state.mode == "real":
            report["node_ready"] = api.node_ready(layout, NODE_NAME)
        elif report["up"]:
            report["node_ready"] = api.node_ready(layout, node.KWOK_NODE)
    return report
