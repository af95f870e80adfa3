"""`ci-runner workflows`: the repo's GitHub workflows, jobs and matrix cells (as
`act -l` lists them), and the options `ci-runner run` takes to pick among them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

if TYPE_CHECKING:
    from ci_runner.workflows.plan import Selection

WorkflowOpt = Annotated[Optional[str], typer.Option(  # noqa: UP045
    "--workflow", "-W", help="Run this GitHub workflow (a file in .github/workflows).")]
JobOpt = Annotated[Optional[str], typer.Option(  # noqa: UP045
    "--job", "-j", help="Run only this workflow job (and the jobs it needs).")]
MatrixOpt = Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
    "--matrix", help="Run only the matrix cells with KEY=VALUE (repeatable).")]
EventOpt = Annotated[Optional[str], typer.Option(  # noqa: UP045
    "--event", help="The event the workflows run for: push (default) or pull_request.")]
PlatformOpt = Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
    "--platform", help="Run jobs of a runs-on LABEL here: LABEL=host (repeatable).")]


def selection(workflow: str | None, job: str | None, matrix: list[str] | None,
              event: str | None, platform: list[str] | None) -> Selection | None:
    """The workflow selection of `run`'s options; None when none was given."""
    if workflow is None and job is None and not matrix and event is None and not platform:
        return None
    from ci_runner.workflows.plan import EVENTS, Selection, parse_pairs
    from ci_runner.workflows.source import WorkflowError

    platforms = parse_pairs(platform or [], "--platform")
    for label, where in platforms:
        if where != "host":
            raise WorkflowError(f"--platform {label}={where}: only LABEL=host is supported"
                                " (no runner images are fetched)")
    if event is not None and event not in EVENTS:
        raise WorkflowError(f"--event must be one of {', '.join(EVENTS)}, not {event!r}")
    return Selection(event=event or "push", workflow=workflow, job=job,
                     matrix=parse_pairs(matrix or [], "--matrix"), platforms=platforms)


def register(app: typer.Typer) -> None:
    app.command("workflows")(list_workflows)


def list_workflows(
    repo: Annotated[Path, typer.Option("--repo", "-C", help="The git repository.")] = Path(),
    rev: Annotated[str, typer.Option(help="Commit, branch or tag to read them at.")] = "HEAD",
    workflow: WorkflowOpt = None,
    event: EventOpt = None,
    matrix: MatrixOpt = None,
    platform: PlatformOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the repo's GitHub workflows: each job and matrix cell, its stage, where it
    runs and why it would be skipped here."""
    from ci_runner.workflows import tools
    from ci_runner.workflows.launch import workflows_at
    from ci_runner.workflows.plan import Selection, choose, describe
    from ci_runner.workflows.source import WorkflowError
    from ci_runner.workspace import open_repo, resolve_rev

    chosen_event = event
    picked = selection(workflow, None, matrix, event, platform) or Selection()
    opened = open_repo(repo)
    resolved = resolve_rev(opened, rev)
    found = workflows_at(opened, resolved.sha)
    if not found:
        raise WorkflowError(f"no .github/workflows/*.yml in {opened.root} at"
                            f" {resolved.sha[:12]}")
    if chosen_event is None and workflow is None:
        shown = list(found)  # every workflow, whatever its events
    else:
        shown = choose(found, picked, ref=resolved.ref)
    from ci_runner.workflows.contexts import github_context, runner_context

    rows: list[dict[str, Any]] = []
    installed = tools.discover()
    for item in shown:
        github = github_context({"sha": resolved.sha, "ref": resolved.ref,
                                 "repo_name": opened.name}, picked.event, item,
                                str(opened.root))
        ctx = {"github": github, "runner": runner_context("/tmp"), "env": {},  # noqa: S108
               "vars": {}, "secrets": {}, "inputs": {}, "matrix": {}, "strategy": {},
               "steps": {}, "needs": {}, "job": {}, "jobs": {}}
        for row in describe([item], picked, ctx):
            row["skip"] = row["skip"] or _would_skip(row, item, installed)
            rows.append(row)
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    headers = ("stage", "job id", "job name", "workflow", "events", "note")
    table = [(str(r["stage"]), r["job"], r["name"], Path(r["workflow"]).name,
              ",".join(r["events"]), f"skipped: {r['skip']}" if r["skip"] else "")
             for r in rows]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(headers)]
    for line in (headers, *table):
        typer.echo("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


def _would_skip(row: dict[str, Any], workflow: Any, installed: dict[str, Any]) -> str | None:
    """What the stand-ins would say of a cell before it runs (a Python not installed...)."""
    from ci_runner.workflows import actions, tools
    from ci_runner.workflows.expressions import ExpressionError, interpolate, to_string

    job = workflow.jobs[row["job"]]
    for step in job.steps:
        if step.uses is None:
            continue
        name = actions.action_name(step.uses)
        if step.uses.startswith("./"):
            continue
        if name not in actions.STAND_INS:
            return f"{step.uses} is not available offline"
        key = {"actions/setup-python": ("python-version", "python"),
               "actions/setup-node": ("node-version", "node")}.get(name)
        if key is None or key[0] not in step.with_:
            continue
        try:
            wanted = to_string(interpolate(step.with_[key[0]], {"matrix": row["matrix"],
                                                                  "env": {}}))
        except ExpressionError:
            continue
        if wanted and tools.pick(installed.get(key[1], []), str(wanted)) is None:
            return f"{key[1].title()} {wanted} is not installed here"
    return None
