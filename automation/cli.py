"""The ``mlrelease`` command: init, promote, rollback, watch, drill, audit and status over the Automation API.

Every command takes ``--stack``, honours ``PULUMI_BACKEND_URL`` (default: the embedded ``file://`` backend in
``.pulumi-state``) and prints a JSON document with ``--json`` (fields documented in docs/cli.md and on the
report models). Progress goes to stderr, results to stdout. Exit codes: 0 success; 1 the operation failed;
2 bad input or a refused precondition; promote also 3 (blocked at a gate) and 4 (failed in the canary and
rolled back).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml
from pydantic import BaseModel
from rich.console import Console

from automation.engine import PROJECT_DIR, EngineMissing, engine_env, pulumi_command
from automation.errors import CommandFailed
from serving.v2 import OutputSpec

if TYPE_CHECKING:
    from automation.stack import StackContext

app = typer.Typer(help="Release control plane for production ML models.", no_args_is_help=True)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

StackOpt = Annotated[str, typer.Option("--stack", "-s", help="the stack to act on, e.g. staging or prod")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the result as one JSON document on stdout")]
ProjectOpt = Annotated[
    Path, typer.Option("--project-dir", help="the mlrelease Pulumi project (default: this checkout)", hidden=True)
]


@app.callback()
def _root() -> None:
    """Release control plane for production ML models."""


def _say(line: str) -> None:
    err.print(f"[dim]{datetime.now(UTC):%H:%M:%S}[/] {line}", markup=True)


def _fail(exc: Exception, code: int) -> typer.Exit:
    typer.echo(f"mlrelease: error: {exc}", err=True)
    return typer.Exit(code)


def _emit(report: BaseModel, as_json: bool, lines: list[str]) -> None:
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
    else:
        for line in lines:
            out.print(line, markup=False)


def _context(stack: str, project_dir: Path, *, select: bool = True) -> StackContext:
    from automation.stack import StackContext  # heavy (engine, target): only the commands that drive a stack

    try:
        return StackContext(stack, project_dir=project_dir, select=select)
    except CommandFailed as exc:
        raise _fail(exc, exc.exit_code) from None


@app.command()
def version() -> None:
    """Print the versions of mlrelease and of the pinned Pulumi engine it drives."""
    from importlib.metadata import version as package_version

    try:
        engine = str(pulumi_command().version)
    except EngineMissing as exc:
        raise _fail(exc, 2) from None
    typer.echo(f"mlrelease {package_version('mlrelease')}, pulumi engine v{engine}")


@app.command()
def init(
    stack: StackOpt,
    model: Annotated[Path, typer.Option("--model", help="MLServer model directory of the first version")],
    holdout: Annotated[Path, typer.Option("--holdout", help="held-out rows with the label (.parquet or .csv)")],
    label: Annotated[str, typer.Option("--label", help="label column of the held-out set (0/1, or continuous)")],
    reference: Annotated[Path | None, typer.Option(help="drift reference window: prior week's input rows")] = None,
    current: Annotated[Path | None, typer.Option(help="drift current window: this window's input rows")] = None,
    environment: Annotated[
        str | None, typer.Option(help="staging | prod (default: prod for a stack named prod, else staging)")
    ] = None,
    categorical: Annotated[list[str] | None, typer.Option(help="COL[,COL]: declare categorical features")] = None,
    numeric: Annotated[list[str] | None, typer.Option(help="COL[,COL]: declare numeric features")] = None,
    as_json: JsonOpt = False,
    project_dir: ProjectOpt = PROJECT_DIR,
) -> None:
    """Create a stack for your model: serve it once, infer schema.json, write a commented Pulumi.<stack>.yaml."""
    from automation.init import init as run

    if environment not in (None, "staging", "prod"):
        raise _fail(ValueError(f"--environment {environment!r} is not an environment: use staging or prod"), 2)
    try:
        report = run(
            stack,
            model,
            holdout,
            label,
            reference=reference,
            current=current,
            environment=environment,  # type: ignore[arg-type]
            categorical=categorical,
            numeric=numeric,
            project_dir=project_dir,
            say=_say,
        )
    except CommandFailed as exc:
        raise _fail(exc, exc.exit_code) from None
    output, schema = report.model["output"], report.feature_schema
    lines = [
        f"initialised stack {stack} ({report.environment}): {report.config_path}",
        f"  model {report.model['name']} {report.model['version']} sha256 {report.model['sha256']}",
        f"  served by {report.served.implementation}: outputs {report.served.outputs} -> mlrelease:model.output"
        f" {output}",
        f"  held-out {report.data['holdout']}: {report.data['rows']} rows, label {report.data['label']!r}"
        f" ({report.data['label_kind']}, gate metric {report.data['metric']}), sha256 {report.data['holdout_sha256']}",
        f"  schema {schema.path} ({schema.source}{', written' if schema.written else ''}): {len(schema.features)}"
        f" features, categorical {schema.categorical}",
        *(f"  note: {note}" for note in report.notes),
        f"next: {report.next_command}",
    ]
    _emit(report, as_json, lines)


@app.command()
def promote(
    stack: StackOpt,
    model: Annotated[
        str, typer.Option("--model", help="MLServer model directory of the candidate, or s3://BUCKET/PREFIX/")
    ],
    model_version: Annotated[
        str | None, typer.Option("--version", help="version label (default: the one in model-settings.json)")
    ] = None,
    sha256: Annotated[
        str | None, typer.Option("--sha256", help="expected artifact digest; a different artifact is refused")
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            help="TENSOR[:COLUMN] holding the candidate's score, e.g. predict_proba:1 (default: as the live version)",
        ),
    ] = None,
    as_json: JsonOpt = False,
    project_dir: ProjectOpt = PROJECT_DIR,
) -> None:
    """Release a model: gates (preview), then canary (up). Exit 0 promoted, 3 blocked, 4 rolled back, 2 bad input."""
    from automation.release import PROMOTE_EXIT
    from automation.release import promote as run

    ctx = _context(stack, project_dir)
    try:
        report = run(ctx, model, model_version, _say, expected_sha256=sha256, output=_output(output))
    except CommandFailed as exc:
        raise _fail(exc, exc.exit_code) from None
    lines = [f"{report.outcome}: {report.candidate['version']} on {stack} (incumbent {report.incumbent})"]
    for name, gate in report.gates.items():
        lines.append(f"  gate {name}: {'passed' if gate['passed'] else 'FAILED'}: {gate['summary']}")
    lines += [f"  step {v['step']} ({v['weight']:g}%): {v['explanation']}" for v in report.canary]
    if report.failure:
        lines.append(f"  {report.failure}")
    lines.append(f"  live: {report.routes}  ({report.durations['total_seconds']:.1f}s)")
    _emit(report, as_json, lines)
    raise typer.Exit(PROMOTE_EXIT[report.outcome])


def _output(text: str | None) -> OutputSpec | None:
    """``--output TENSOR[:COLUMN]`` as an output spec, or a one-line error."""
    if text is None:
        return None
    tensor, _, column = text.partition(":")
    try:
        return OutputSpec(tensor=tensor, column=int(column) if column else None)
    except ValueError:
        raise _fail(
            ValueError(f"--output {text!r}: expected TENSOR or TENSOR:COLUMN, e.g. predict_proba:1"), 2
        ) from None


@app.command()
def rollback(
    stack: StackOpt,
    reason: Annotated[str, typer.Option(help="recorded with the restore")] = "operator request",
    as_json: JsonOpt = False,
    project_dir: ProjectOpt = PROJECT_DIR,
) -> None:
    """Back to the last verified previous release: traffic first, then its recorded config converged. Idempotent."""
    from automation.release import rollback as run

    ctx = _context(stack, project_dir, select=False)  # traffic moves before the engine is asked anything
    try:
        report = run(ctx, reason, _say)
    except CommandFailed as exc:
        raise _fail(exc, exc.exit_code) from None
    traffic = "not moved first" if report.traffic_seconds is None else f"{report.traffic_seconds:.2f}s"
    _emit(
        report,
        as_json,
        [
            f"{report.outcome}: {stack} serves {report.restored['version']} (from {report.from_version});"
            f" traffic {traffic}, converge {report.converge_seconds:.1f}s"
        ],
    )


@app.command()
def watch(
    stack: StackOpt,
    exit_after_rollback: Annotated[bool, typer.Option(help="stop after firing one rollback")] = False,
    max_seconds: Annotated[float | None, typer.Option(help="stop after this long (default: never)")] = None,
    as_json: JsonOpt = False,
    project_dir: ProjectOpt = PROJECT_DIR,
) -> None:
    """Watch live telemetry (divergence, errors, p99) and roll back by itself on a breach or missing telemetry."""
    from automation.watch import Watcher

    ctx = _context(stack, project_dir)
    try:
        watcher = Watcher(ctx, _say)
        _say(f"watching {stack}: {watcher.spec.watch.model_dump()}")
        state = watcher.run(max_seconds=max_seconds, after_rollback=exit_after_rollback)
    except CommandFailed as exc:
        raise _fail(exc, exc.exit_code) from None
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
    verdict = state.verdict.explanation if state.verdict else "no look yet"
    _emit(state, as_json, [f"{state.phase}: live {state.live}; {verdict}"])


@app.command()
def drill(
    stack: StackOpt,
    fault: Annotated[str, typer.Option(help="error | latency | divergence")] = "error",
    budget: Annotated[float, typer.Option(help="recovery budget in seconds; over it the drill fails")] = 300.0,
    as_json: JsonOpt = False,
    project_dir: ProjectOpt = PROJECT_DIR,
) -> None:
    """Inject a fault into the live version and measure the watcher's rollback. Exit 1 unless recovered in budget."""
    from automation.drill import FAULTS
    from automation.drill import drill as run

    if fault not in FAULTS:
        raise _fail(ValueError(f"--fault {fault!r} is not a fault kind: use one of {', '.join(FAULTS)}"), 2)
    ctx = _context(stack, project_dir)
    try:
        report = run(ctx, fault, budget, _say)  # type: ignore[arg-type]
    except CommandFailed as exc:
        raise _fail(exc, exc.exit_code) from None
    _emit(
        report,
        as_json,
        [
            f"{report.outcome}: {fault} fault on {report.faulty_version}; detection {report.detection_seconds}s,"
            f" recovery {report.recovery_seconds}s (budget {report.budget_seconds:g}s)",
            *([f"  {report.problem}"] if report.problem else []),
            f"  report: {report.report_path}",
        ],
    )
    raise typer.Exit(0 if report.outcome == "recovered" else 1)


@app.command()
def audit(
    stack: StackOpt,
    at: Annotated[str | None, typer.Option("--at", help="ISO 8601 time, e.g. 2026-11-26T14:30:00Z")] = None,
    check: Annotated[
        bool, typer.Option("--verify", help="walk the whole history and report every break of its hash chain")
    ] = False,
    as_json: JsonOpt = False,
    project_dir: ProjectOpt = PROJECT_DIR,
) -> None:
    """Which model(s), data and config were live at a time, and the update that made it so; with --verify,
    whether the history is as the verified releases sealed it."""
    from automation.audit import AuditError, parse_time
    from automation.audit import audit as run

    if (at is None) == (not check):
        raise _fail(ValueError("give --at TIME (what was live then) or --verify (check the hash chain)"), 2)
    try:
        project = yaml.safe_load((Path(project_dir) / "Pulumi.yaml").read_text())["name"]
        backend = engine_env()["PULUMI_BACKEND_URL"]
        if check:
            _verify(backend, stack, project, as_json)
        report = run(backend, stack, parse_time(str(at)), project=project)
    except AuditError as exc:
        raise _fail(exc, 2) from None
    models = ", ".join(
        f"{m.version} {m.traffic_percent:g}% (sha256 {(m.sha256 or 'unknown')[:12]})" for m in report.models
    )
    update = report.update
    lines = [f"{stack} at {report.at.isoformat()}: {report.state}; {models or 'no model live'}"]
    if update:
        lines.append(f"  by {update.kind} {update.result} ending {update.end_time.isoformat()}: {update.message}")
    if report.note:
        lines.append(f"  {report.note}")
    _emit(report, as_json, lines)


def _verify(backend: str, stack: str, project: str, as_json: bool) -> None:
    """``audit --verify``: exit 0 when the chain is intact, 1 naming every break."""
    from automation.audit_verify import verify

    report = verify(backend, stack, project=project)
    head = f"head {report.head[:12]} ({report.head_file})" if report.head else "no sealed record yet"
    summary = f"{report.sealed_records} sealed records over {report.updates} updates, {head}"
    if report.intact:
        lines = [f"{stack}: history intact: {summary}"]
    else:
        lines = [f"{stack}: history BROKEN, {len(report.breaks)} breaks; first: {report.breaks[0].file}"]
        lines += [f"  {b.kind}: {b.file}: {b.detail}" for b in report.breaks]
        lines.append(f"  {summary}")
    if report.unsealed:
        lines.append(f"  not sealed yet (the next verified release seals them): {', '.join(report.unsealed)}")
    if report.unchained_records:
        lines.append(f"  {report.unchained_records} records predate the chain and cannot be verified")
    _emit(report, as_json, lines)
    raise typer.Exit(0 if report.intact else 1)


@app.command()
def status(stack: StackOpt, as_json: JsonOpt = False, project_dir: ProjectOpt = PROJECT_DIR) -> None:
    """Live versions and weights, the last verified checkpoint, the watcher's state and latest signals."""
    from automation.status import status as run

    report = run(_context(stack, project_dir))
    watcher: Any = report.watcher or {}
    verdict = (watcher.get("verdict") or {}).get("explanation", "no watcher has run")
    _emit(
        report,
        as_json,
        [
            f"{stack}: live {report.routes}",
            f"  verified: {json.dumps(report.verified)}",
            f"  rollback would restore: {report.rollback_to}",
            f"  watcher: {watcher.get('phase', 'none')} (running: {watcher.get('running', False)}); {verdict}",
            f"  last drill: {report.last_drill}",
        ],
    )


@app.command()
def dashboard(
    stack: StackOpt,
    port: Annotated[int, typer.Option(help="port on 127.0.0.1 (0: any free port, printed)")] = 0,
    grafana: Annotated[
        Path | None, typer.Option("--grafana", help="write the same panels as Grafana dashboard JSON to FILE, exit")
    ] = None,
    project_dir: ProjectOpt = PROJECT_DIR,
) -> None:
    """One live page of every release and infrastructure signal with its limit (127.0.0.1), or its Grafana JSON."""
    from dashboard.panels import check_stack

    try:
        check_stack(stack)
    except ValueError as exc:
        raise _fail(ValueError(f"--stack: {exc}"), 2) from None
    if grafana is not None:
        from dashboard.grafana import build_dashboard

        try:
            grafana.write_text(json.dumps(build_dashboard(stack), indent=2) + "\n")
        except OSError as exc:
            raise _fail(
                ValueError(f"--grafana {grafana}: cannot write it ({exc.strerror}): pick a writable path"), 2
            ) from None
        typer.echo(f"dashboard: wrote {grafana}: import it in Grafana, then pick the Prometheus and the stack")
        return
    if not 0 <= port <= 65535:
        raise _fail(ValueError(f"--port {port} is not a TCP port: use 1-65535, or 0 for any free port"), 2)
    from components.targets.factory import run_dir
    from dashboard.page import Source, locate, make_app, serve

    where = run_dir(project_dir, stack)
    if locate(where).prometheus is None:
        raise _fail(
            ValueError(
                f"stack {stack} has no runtime on this machine (no Prometheus running in {where}): run"
                f" `mlrelease promote --stack {stack} --model DIR` or `pulumi up -s {stack}` first"
            ),
            2,
        )
    project = yaml.safe_load((Path(project_dir) / "Pulumi.yaml").read_text())["name"]
    source = Source(stack=stack, run_dir=where, backend_url=engine_env()["PULUMI_BACKEND_URL"], project=project)
    try:
        serve(make_app(source), port, lambda url: typer.echo(f"dashboard: {url}"))
    except OSError as exc:
        raise _fail(
            ValueError(f"--port {port}: cannot listen on 127.0.0.1 ({exc.strerror}): pick another"), 2
        ) from None
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


def main() -> None:
    """Entry point of the ``mlrelease`` console script."""
    app()
