"""From a repo's workflow files to what a run will do: which workflows an event
triggers, their jobs in ``needs`` order, each job's matrix cells, and where each
cell may run (``runs-on``). Used by ``ci-runner workflows`` to list, by ``ci-runner
run`` to check before a run is stored, and by the run itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ci_runner.workflows.model import WORKFLOWS_DIR, Job, Workflow, parse_workflow
from ci_runner.workflows.source import WorkflowError

EVENTS = ("push", "pull_request")
_LINUX = re.compile(r"ubuntu|linux|self-hosted|debian", re.IGNORECASE)


@dataclass(frozen=True)
class Selection:
    """What ``ci-runner run`` was asked to run of the workflows (kept in the run's metadata)."""

    event: str = "push"
    workflow: str | None = None  # a file name or path
    job: str | None = None
    matrix: tuple[tuple[str, str], ...] = ()
    platforms: tuple[tuple[str, str], ...] = ()  # runs-on label -> "host"

    def to_json(self) -> dict[str, Any]:
        return {"event": self.event, "workflow": self.workflow, "job": self.job,
                "matrix": [list(p) for p in self.matrix],
                "platforms": [list(p) for p in self.platforms]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Selection:
        return cls(event=str(data.get("event") or "push"), workflow=data.get("workflow"),
                   job=data.get("job"),
                   matrix=tuple((str(k), str(v)) for k, v in data.get("matrix") or ()),
                   platforms=tuple((str(k), str(v)) for k, v in data.get("platforms") or ()))


def parse_pairs(values: Sequence[str], option: str) -> tuple[tuple[str, str], ...]:
    """``["python=3.11"]`` -> ``(("python", "3.11"),)``; a bad one is a one-line error."""
    pairs = []
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise WorkflowError(f"{option} {item!r} must look like KEY=VALUE")
        pairs.append((key.strip(), value.strip()))
    return tuple(pairs)


def workflow_files(listing: Sequence[str]) -> list[str]:
    """The workflow files among the repo's paths (``.github/workflows/*.yml|yaml``)."""
    return sorted(p for p in listing
                  if p.startswith(WORKFLOWS_DIR + "/") and p.count("/") == 2
                  and p.endswith((".yml", ".yaml")))


def load_all(read: Callable[[str], bytes | None], paths: Sequence[str]) -> list[Workflow]:
    """Parse each file; the first bad one raises (naming its file and line)."""
    found = []
    for path in paths:
        text = read(path)
        if text is not None:
            found.append(parse_workflow(text, path))
    return found


def choose(workflows: Sequence[Workflow], selection: Selection, *,
           ref: str | None = None) -> list[Workflow]:
    """The workflows this run runs: the one named by ``--workflow``, else every one
    that ``selection.event`` triggers (and whose branch filters take ``ref``)."""
    if selection.event not in EVENTS:
        raise WorkflowError(f"--event must be one of {', '.join(EVENTS)}, not"
                            f" {selection.event!r}")
    if not workflows:
        raise WorkflowError(f"no workflow files in {WORKFLOWS_DIR}/")
    if selection.workflow is not None:
        wanted = selection.workflow
        named = [w for w in workflows if w.path == wanted or Path(w.path).name == wanted
                 or Path(w.path).stem == wanted]
        if not named:
            names = ", ".join(Path(w.path).name for w in workflows)
            raise WorkflowError(f"--workflow {wanted!r}: no such workflow (found: {names})")
        workflow = named[0]
        if not workflow.triggered_by(selection.event):
            raise WorkflowError(
                f"{workflow.path} is not triggered by {selection.event} (on:"
                f" {', '.join(workflow.on)}): pass --event with one of those")
        chosen = [workflow]
    else:
        # A pull request's filters name its base branch, which a local run has not.
        chosen = [w for w in workflows if w.triggered_by(selection.event)
                  and (selection.event != "push" or branch_matches(w.on["push"], ref))]
        if not chosen:
            listed = "; ".join(f"{Path(w.path).name}: {', '.join(w.on)}" for w in workflows)
            raise WorkflowError(f"no workflow runs on {selection.event} here ({listed}):"
                                " pass --event or --workflow")
    if selection.job is not None:
        with_job = [w for w in chosen if selection.job in w.jobs]
        if not with_job:
            jobs = ", ".join(sorted({j for w in chosen for j in w.jobs}))
            raise WorkflowError(f"--job {selection.job!r}: no such job (jobs: {jobs})")
        chosen = with_job
    return chosen


def branch_matches(filters: Any, ref: str | None) -> bool:
    """GitHub's ``branches``/``branches-ignore``/``tags`` filters of a push or pull
    request, applied to the run's ref (a run without a branch passes them all)."""
    if not isinstance(filters, Mapping) or ref is None:
        return True
    if ref.startswith("refs/tags/"):
        name, include, exclude = ref[len("refs/tags/"):], "tags", "tags-ignore"
        if include not in filters and exclude not in filters and (
                "branches" in filters or "branches-ignore" in filters):
            return False
    elif ref.startswith("refs/heads/"):
        name, include, exclude = ref[len("refs/heads/"):], "branches", "branches-ignore"
        if include not in filters and exclude not in filters and (
                "tags" in filters or "tags-ignore" in filters):
            return False
    else:
        return True
    if include in filters:
        return _glob_list(filters[include], name)
    if exclude in filters:
        return not _glob_list(filters[exclude], name)
    return True


def _glob_list(patterns: Any, name: str) -> bool:
    items = [patterns] if isinstance(patterns, str) else list(patterns or [])
    matched = False
    for pattern in items:
        text = str(pattern)
        negate = text.startswith("!")
        if _glob(text[1:] if negate else text, name):
            matched = not negate
    return matched


def _glob(pattern: str, name: str) -> bool:
    # GitHub: * does not cross /, ** does.
    regex = re.escape(pattern).replace(r"\*\*", "\0").replace(r"\*", "[^/]*")
    regex = regex.replace("\0", ".*").replace(r"\?", ".")
    return re.fullmatch(regex, name) is not None


def job_order(workflow: Workflow, only: str | None = None) -> list[Job]:
    """The jobs in an order where each comes after what it needs; with ``only``, that
    job and what it needs, transitively (as ``act -j``)."""
    wanted: set[str] = set()

    def want(job_id: str) -> None:
        if job_id not in wanted:
            wanted.add(job_id)
            for need in workflow.jobs[job_id].needs:
                want(need)

    if only is not None:
        want(only)
    else:
        wanted = set(workflow.jobs)
    ordered: list[Job] = []
    done: set[str] = set()

    def place(job: Job) -> None:
        if job.id in done:
            return
        for need in job.needs:
            place(workflow.jobs[need])
        done.add(job.id)
        ordered.append(job)

    for job in workflow.jobs.values():
        if job.id in wanted:
            place(job)
    return ordered


@dataclass(frozen=True)
class Platform:
    """Where a job cell runs: on this machine, or skipped and why."""

    labels: tuple[str, ...]
    skip: str | None = None


def platform(runs_on: Any, platforms: Mapping[str, str]) -> Platform:
    """``runs-on`` (already interpolated): Linux labels run here; others are skipped
    unless ``--platform LABEL=host`` maps them."""
    if isinstance(runs_on, Mapping):
        labels_raw = runs_on.get("labels") or runs_on.get("group") or []
    else:
        labels_raw = runs_on
    labels = tuple(str(x) for x in ([labels_raw] if isinstance(labels_raw, (str, int, float))
                                    else list(labels_raw or [])))
    if not labels:
        return Platform(labels, skip="runs-on names no runner")
    if any(platforms.get(label) == "host" for label in labels):
        return Platform(labels)
    if any(_LINUX.search(label) for label in labels):
        return Platform(labels)
    shown = ", ".join(labels)
    return Platform(labels, skip=f"runs-on {shown} is not Linux: map it with --platform"
                                 f" {labels[0]}=host to run it here")


@dataclass(frozen=True)
class Cell:
    """One matrix cell of a job (or the job itself, without a matrix)."""

    matrix: dict[str, Any]
    index: int
    total: int
    label: str  # the job as GitHub shows it: "test (3.11, ubuntu-latest)"


@dataclass
class Expanded:
    job: Job
    cells: list[Cell] = field(default_factory=list)
    fail_fast: bool = True
    max_parallel: int | None = None
    error: str | None = None  # the strategy could not be expanded yet (needs outputs)


def expand_job(job: Job, contexts: Mapping[str, Any],
               wanted: Sequence[tuple[str, str]] = ()) -> Expanded:
    """The job's cells (``strategy.matrix`` expanded by ``workflows.matrix``), narrowed
    to those matching every ``--matrix key=value``."""
    from ci_runner.workflows import expressions, matrix

    strategy = job.strategy
    if isinstance(strategy, str):
        strategy = expressions.interpolate(strategy, contexts)
    try:
        expanded = matrix.expand(strategy, contexts)
    except (matrix.MatrixError, expressions.ExpressionError) as exc:
        raise WorkflowError(f"jobs.{job.id}.strategy: {exc}") from None
    cells = expanded.cells or [{}]
    shown = [c for c in cells if all(_str(c.get(k)) == v for k, v in wanted)] \
        if wanted else cells
    result = Expanded(job, fail_fast=expanded.fail_fast, max_parallel=expanded.max_parallel)
    for index, cell in enumerate(cells):
        if cell not in shown:
            continue
        result.cells.append(Cell(matrix=cell, index=index, total=len(cells),
                                 label=job_label(job, cell, contexts)))
    return result


def job_label(job: Job, cell: Mapping[str, Any], contexts: Mapping[str, Any]) -> str:
    """GitHub's name of a job cell: its ``name:`` (interpolated), else its id; with a
    matrix, `` (values)`` after it unless the name already uses ``matrix``."""
    from ci_runner.workflows import expressions, matrix

    base = job.id
    uses_matrix = False
    if job.name is not None:
        text = str(job.name)
        uses_matrix = "matrix" in text and "${{" in text
        try:
            base = expressions.to_string(expressions.interpolate(
                text, {**contexts, "matrix": dict(cell)}))
        except expressions.ExpressionError:
            base = text
    if cell and not uses_matrix:
        return f"{base} ({matrix.cell_label(cell)})"
    return base


def _str(value: Any) -> str:
    from ci_runner.workflows import expressions

    return str(expressions.to_string(value))


def describe(workflows: Sequence[Workflow], selection: Selection,
             contexts: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A row per job cell, for ``ci-runner workflows`` (``act -l``'s table)."""
    from ci_runner.workflows import expressions

    rows = []
    for workflow in workflows:
        for stage, jobs in enumerate(stages(workflow)):
            for job in jobs:
                base = {"workflow": workflow.path, "workflow_name": workflow.name,
                        "events": list(workflow.on), "job": job.id, "stage": stage,
                        "needs": list(job.needs)}
                if job.uses is not None:
                    rows.append({**base, "name": str(job.name or job.id), "matrix": {},
                                 "runs_on": [], "uses": job.uses, "skip": None})
                    continue
                try:
                    expanded = expand_job(job, {**contexts, "needs": {}},
                                          selection.matrix)
                    cells = expanded.cells
                    error = None
                except WorkflowError as exc:
                    cells, error = [Cell({}, 0, 1, str(job.name or job.id))], str(exc)
                for cell in cells:
                    try:
                        runs_on = expressions.interpolate(
                            job.runs_on, {**contexts, "matrix": cell.matrix}) \
                            if isinstance(job.runs_on, str) else job.runs_on
                    except expressions.ExpressionError:
                        runs_on = job.runs_on
                    where = platform(runs_on, dict(selection.platforms))
                    rows.append({**base, "name": cell.label, "matrix": cell.matrix,
                                 "runs_on": list(where.labels),
                                 "skip": error or where.skip})
    return rows


def stages(workflow: Workflow) -> list[list[Job]]:
    """Jobs grouped by depth in the ``needs`` graph (act's stages)."""
    depth: dict[str, int] = {}
    for job in job_order(workflow):
        depth[job.id] = 1 + max((depth[n] for n in job.needs), default=-1)
    grouped: dict[int, list[Job]] = {}
    for job in workflow.jobs.values():
        grouped.setdefault(depth[job.id], []).append(job)
    return [grouped[d] for d in sorted(grouped)]
