"""One stack as the ``mlrelease`` commands see it: its Automation API handle, config, outputs and target.

Every command goes through here, so they all read config the way the program does (``mlrelease:*`` keys,
structured values as JSON), all write it as in-place edits of the commented stack file (a release's diff is
the keys it changed), all fail the same way on a stack that does not exist, and all turn engine
events into the few things an operator watches: gate results, the current step and weight, verdicts.
"""

from __future__ import annotations

import functools
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, NamedTuple

from pulumi import automation as auto

from automation.engine import PROJECT_DIR, EngineMissing, engine_env, select_stack
from automation.errors import CommandFailed
from automation.lock import holder, release_lock
from automation.stack_file import StackFile, StackFileError, same_value
from components.spec import NAMESPACE
from components.stack_config import namespaced
from components.targets import factory
from components.targets.base import Target, TargetError

PREFIX = f"{NAMESPACE}:"
# How the engine prints a provider's check failure: "<type> resource '<name>' has a problem: <reason>" (with a
# property: "...: property <p> value <v> has a problem: <reason>"; mlrelease's providers report none).
_CHECK_FAILURE = re.compile(r"resource '[^']*'(?:: property \S+ value .*?)? has a problem: ")
Say = Callable[[str], None]


class ConfigWrite(NamedTuple):
    """The stack file's text before and after one ``StackContext.write_config``."""

    before: str
    after: str


class StackContext:
    """An existing stack of the mlrelease project in ``project_dir`` and the target it releases to."""

    def __init__(
        self, name: str, *, project_dir: Path = PROJECT_DIR, env: Mapping[str, str] | None = None, select: bool = True
    ) -> None:
        """``select=False`` defers the engine's ``stack select`` to the first use of ``stack`` (a rollback moves
        traffic from the backend's files first); otherwise a missing stack fails here."""
        self.name, self.project_dir = name, Path(project_dir)
        self.env = engine_env(env)
        if select:
            _ = self.stack

    @functools.cached_property
    def stack(self) -> auto.Stack:
        """The Automation API handle of the stack (one ``pulumi stack select``)."""
        try:
            return select_stack(self.name, work_dir=self.project_dir, env=self.env, create=False)
        except auto.StackNotFoundError:
            raise CommandFailed(
                f"stack {self.name!r} does not exist in {self.env['PULUMI_BACKEND_URL']}: check --stack and"
                f" PULUMI_BACKEND_URL, or create it with `pulumi stack init {self.name}` and its"
                f" Pulumi.{self.name}.yaml",
                2,
            ) from None
        except EngineMissing as exc:
            raise CommandFailed(str(exc), 2) from None

    @functools.cached_property
    def target(self) -> Target:
        """The target the stack's config names (read once per command)."""
        return factory.for_config(self.project_dir, self.name, self.config())

    def _shared_target(self) -> Target | None:
        """The target, for its own lock; None when the config names none that can be built (the operation
        then fails on it by itself, with its own message, under the backend's lock)."""
        try:
            return self.target
        except (TargetError, CommandFailed, ValueError):
            return None

    def lock(self, operation: str) -> AbstractContextManager:
        """The stack's release lock for ``operation``: the backend's, then the target's own (automation/lock.py)."""
        backend_url, target = self.env["PULUMI_BACKEND_URL"], self._shared_target()
        return release_lock(self.project_dir, self.name, operation, backend_url, target)

    def holder(self) -> dict[str, Any] | None:
        """Who holds the stack's release lock, backend or target, or None."""
        return holder(self.project_dir, self.name, self.env["PULUMI_BACKEND_URL"], self._shared_target())

    # -- config ------------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The stack's ``mlrelease:*`` config, keys without the namespace, structured values decoded."""
        return namespaced({key: value.value for key, value in self.stack.get_all_config().items()})

    @property
    def config_file(self) -> Path:
        """``Pulumi.<stack>.yaml`` in the project: where a local workspace keeps the stack's config."""
        return self.project_dir / f"Pulumi.{self.name.rsplit('/', 1)[-1]}.yaml"

    def write_config(self, config: Mapping[str, Any]) -> ConfigWrite:
        """Make ``config`` the stack's whole ``mlrelease:*`` config (keys absent from it are removed).

        The stack file is edited in place (automation/stack_file.py) rather than through the Automation API,
        which rewrites all of it: only the lines of values that change are touched, so comments, key order and
        the other keys stay as reviewed and a release's diff is the keys it changed. Values equal to what the
        engine reads today are not touched at all (secure values included).
        """
        wanted = {key: value for key, value in config.items() if value is not None}
        current = self.config()
        try:
            stack_file = StackFile(self.config_file)
            before = stack_file.text
            for key in sorted(current.keys() - wanted.keys()):
                stack_file.remove(PREFIX + key)
            for key, value in wanted.items():
                if key not in current or not same_value(current[key], value):
                    stack_file.set(PREFIX + key, value)
            stack_file.save()
        except StackFileError as exc:
            raise CommandFailed(str(exc), 2) from None
        return ConfigWrite(before=before, after=stack_file.text)

    def undo_config(self, write: ConfigWrite, config: Mapping[str, Any]) -> None:
        """Undo ``write``: the stack file's exact bytes from before it, unless the file was edited since (then
        ``config`` is written over that edit, which stays)."""
        try:
            stack_file = StackFile(self.config_file)
        except StackFileError as exc:
            raise CommandFailed(str(exc), 2) from None
        if stack_file.text != write.after:
            self.write_config(config)
            return
        stack_file.text = write.before
        stack_file.save()

    # -- state -------------------------------------------------------------------------------------

    def verified(self) -> dict[str, Any] | None:
        """The last verified release (the ``verified`` stack output), or None before the first one."""
        output = self.stack.outputs().get("verified")
        return output.value if output and output.value else None

    def resource_outputs(self) -> dict[str, dict[str, Any]]:
        """Outputs of the release resources by name (``release-gates``, ``release-canary-1``, ...)."""
        resources = self.stack.export_stack().deployment.get("resources", [])
        return {r["urn"].rsplit("::", 1)[-1]: r.get("outputs", {}) for r in resources}

    def up(self, message: str, on_event: Callable[[auto.EngineEvent], None] | None = None) -> auto.UpResult:
        """``pulumi up``, clearing the engine's lock first if the process holding it is dead (a crashed command).

        mlrelease's own lock (held by the caller) rules out a live mlrelease; a live ``pulumi`` left over from a
        killed command still holds the engine lock until it ends, so that one is waited for.
        """
        try:
            return self.stack.up(message=message, on_event=on_event, on_output=lambda _line: None)
        except auto.CommandError as exc:
            holders = re.findall(r"created by \S+@(\S+) \(pid (\d+)\)", str(exc))
            if "the stack is currently locked" not in str(exc) or not holders:
                raise
        here = socket.gethostname()
        deadline = time.monotonic() + 900
        while any(host == here and _alive(int(pid)) for host, pid in holders):
            if time.monotonic() > deadline:
                raise CommandFailed(f"stack {self.name} is locked by a running pulumi (pids {holders}): wait for it")
            time.sleep(0.5)
        if any(host != here for host, _pid in holders):
            raise CommandFailed(
                f"stack {self.name} is locked from another host ({holders}): make sure nothing runs there, then"
                f" `pulumi cancel -s {self.name}`"
            )
        self.stack.cancel()  # the lock of a dead process (DIY backends: removes its lock file)
        return self.stack.up(message=message, on_event=on_event, on_output=lambda _line: None)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class EngineProgress:
    """Turns engine events into progress lines and keeps the diagnostics that explain a failure."""

    def __init__(self, say: Say) -> None:
        self.say = say
        self.errors: list[str] = []
        self.baking: tuple[int, float] | None = None  # (step index, when it started) while a step bakes

    def __call__(self, event: auto.EngineEvent) -> None:
        if event.diagnostic_event and event.diagnostic_event.severity == "error":
            message = event.diagnostic_event.message.strip()
            if message and message not in self.errors:
                self.errors.append(message)
        pre = event.resource_pre_event
        if pre and pre.metadata.op in (auto.OpType.UPDATE, auto.OpType.CREATE, auto.OpType.REPLACE):
            name = pre.metadata.urn.rsplit("::", 1)[-1]
            if name.startswith("release-canary-") and pre.metadata.new and pre.metadata.new.inputs:
                inputs = pre.metadata.new.inputs
                self.baking = (int(inputs.get("index") or 0), time.time())
                self.say(f"step {inputs.get('index')}: {inputs.get('weight'):g}% to {inputs.get('candidate')}, baking")
            elif name == "release-versions":
                self.say("deploying the candidate beside the live version")
        done = event.res_outputs_event
        if done and done.metadata.new and done.metadata.new.outputs is not None:
            name = done.metadata.urn.rsplit("::", 1)[-1]
            verdict = done.metadata.new.outputs.get("verdict") if name.startswith("release-canary-") else None
            if verdict and done.metadata.op != auto.OpType.SAME:
                self.baking = None
                self.say(f"step {verdict['step']} passed: {verdict['explanation']}")

    def follow(self, target: Target, stop: threading.Event, every: float = 3.0) -> None:
        """While a step bakes, report the live split and the shadow pairs collected so far (run in a thread)."""
        cursor, counted, step = None, 0, None
        while not stop.wait(every):
            baking = self.baking
            if baking is None:
                continue
            if baking[0] != step:
                cursor, counted, step = None, 0, baking[0]
            try:
                page = target.pairs(cursor, since_ts=baking[1], limit=5000)
                cursor, counted = page.cursor, counted + len(page.pairs)
                live = target.routes()
            except TargetError:
                continue
            split = ", ".join(f"{v} {w:g}%" for v, w in live.weights.items())
            self.say(f"step {step}: {split}; {counted} shadow pairs in {time.time() - baking[1]:.0f}s")

    def failure(self) -> str:
        """The line that says why the engine stopped: a gate's, a canary step's, a restore's or the policy's."""
        for message in self.errors:
            refused = _CHECK_FAILURE.search(message)
            if refused:  # a provider's check: its reason is the sentence, whatever words it holds
                return _one_line(message[refused.end() :])
        for message in self.errors:
            for marker in ("gate ", "canary step", "prod policy", "restore", "stack config", "candidate"):
                if marker in message:
                    return _one_line(message[message.index(marker) :])
        return _one_line(self.errors[0]) if self.errors else "the engine failed: see `pulumi stack history`"


def _one_line(text: str) -> str:
    return " ".join(text.split())
