"""Can this machine run containers? Asked once, before a real node is started, by running one.

The answer decides between a real node and kwok, so it must be definitive: a real node that fails later (a
timeout on a loaded machine, a bad setting) is an error to fix, never a silent switch to kwok that would hide
it. The probe runs a one-file container with runc itself, in the cluster's network namespace, with the
settings the node will use; anything that stops it (missing runtime, cgroups not writable, runc refused by the
kernel or the sandbox this machine runs in) is the reason given for kwok.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from cluster.layout import Layout, binary
from cluster.netns import inside

CGROUP_ROOT = Path("/sys/fs/cgroup")
RUNC = "/usr/sbin/runc"
PROBE_TIMEOUT = 30.0


def why_containers_cannot_run(layout: Layout) -> str:
    """ "" when a container ran here; otherwise one line saying what stopped it."""
    for tool in ("/usr/bin/containerd", RUNC):
        if not Path(tool).exists():
            return f"{tool} is not installed"
    if not (CGROUP_ROOT / "pids").is_dir() and not (CGROUP_ROOT / "cgroup.controllers").exists():
        return "no cgroup hierarchy is mounted"
    bundle = layout.run / "probe"
    shutil.rmtree(bundle, ignore_errors=True)
    (bundle / "rootfs").mkdir(parents=True)
    try:
        shutil.copy2(binary("coredns"), bundle / "rootfs" / "coredns")
        done = subprocess.run([RUNC, "spec", "--bundle", str(bundle)], capture_output=True, text=True)
        if done.returncode != 0:
            return f"runc spec failed: {done.stderr.strip()}"
        spec_path = bundle / "config.json"
        spec = json.loads(spec_path.read_text())
        spec["process"].update(args=["/coredns", "-version"], terminal=False)
        spec["root"]["readonly"] = True
        spec_path.write_text(json.dumps(spec))
        cmd = [RUNC, f"--root={bundle / 'state'}", "run", f"--bundle={bundle}", "mlrelease-probe"]
        try:
            ran = subprocess.run(inside(layout, cmd), capture_output=True, text=True, timeout=PROBE_TIMEOUT)
        except subprocess.TimeoutExpired:
            return f"runc did not finish a trivial container in {PROBE_TIMEOUT:g} s"
        if ran.returncode != 0 or "CoreDNS" not in ran.stdout:
            last = (ran.stderr or ran.stdout).strip().splitlines()
            return f"runc could not run a container: {last[-1] if last else f'exit {ran.returncode}'}"
        return ""
    finally:
        subprocess.run(
            [RUNC, f"--root={bundle / 'state'}", "delete", "--force", "mlrelease-probe"], capture_output=True
        )
        shutil.rmtree(bundle, ignore_errors=True)
