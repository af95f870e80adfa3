"""A job that ``uses: ./.github/workflows/x.yml``: the called workflow's jobs run as
part of the run (named ``caller / job``), with ``inputs`` from the caller's ``with:``
and the caller's secrets; its ``on.workflow_call.outputs`` become the job's outputs.
A workflow from another repository (``owner/repo/...@ref``) is not available offline."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ci_runner.workflows.model import Job, parse_workflow
from ci_runner.workflows.source import WorkflowError

if TYPE_CHECKING:
    from ci_runner.workflows.runner import JobResult, WorkflowRun


async def run_reusable(caller: WorkflowRun, job: Job, ctx: Mapping[str, Any],
                       label: str) -> JobResult:
    from ci_runner.workflows import expressions
    from ci_runner.workflows.runner import JobResult, WorkflowRun

    assert job.uses is not None
    where = f"{caller.workflow.path}:{job.line}: jobs.{job.id}.uses"
    uses = job.uses.strip()
    if not uses.startswith("./"):
        return await caller._skip_job(label, f"{uses} is not available offline (only a"
                                             " reusable workflow of this repo, ./...)")
    path = uses[2:].split("@", 1)[0]
    try:
        text = (caller.root / path).read_bytes()
    except OSError:
        raise WorkflowError(f"{where}: no workflow file {path}") from None
    called = parse_workflow(text, path)
    call = called.on.get("workflow_call")
    if call is None:
        raise WorkflowError(f"{where}: {path} has no `on: workflow_call`")
    inputs: dict[str, Any] = {}
    declared = call.get("inputs") if isinstance(call, Mapping) else None
    for key, spec in (declared or {}).items():
        if isinstance(spec, Mapping) and "default" in spec:
            inputs[key] = spec["default"]
    for key, value in job.with_.items():
        try:
            inputs[key] = expressions.interpolate(value, ctx) if isinstance(value, str) \
                else value
        except expressions.ExpressionError as exc:
            raise WorkflowError(f"{where}: with.{key}: {exc}") from None
    for key, spec in (declared or {}).items():
        if isinstance(spec, Mapping) and spec.get("required") and key not in inputs:
            raise WorkflowError(f"{where}: input {key!r} of {path} is required")
    nested = WorkflowRun(caller.metadata, called, caller.selection.__class__(
        event=caller.selection.event, platforms=caller.selection.platforms),
        caller.step, caller.root, False)
    nested.prefix = f"{label} / "
    nested.inputs = inputs
    nested.github = {**caller.github, "event_name": caller.github["event_name"]}
    if job.secrets != "inherit" and isinstance(job.secrets, Mapping):
        nested.secrets = {}
        for key, value in job.secrets.items():
            shown = expressions.interpolate(value, ctx) if isinstance(value, str) else value
            nested.secrets[key] = expressions.to_string(shown)
    elif job.secrets != "inherit":
        nested.secrets = {}
    results = await nested.run()
    caller.labels.update(results)
    caller.summaries.extend(nested.summaries)
    by_job = {j: nested.results[j].result() for j in nested.results}
    jobs_ctx = {j: {"result": r.result, "outputs": r.outputs} for j, r in by_job.items()}
    outputs = {}
    declared_out = call.get("outputs") if isinstance(call, Mapping) else None
    for key, spec in (declared_out or {}).items():
        value = spec.get("value") if isinstance(spec, Mapping) else None
        try:
            shown = expressions.interpolate(value, {**nested.contexts(), "jobs": jobs_ctx}) \
                if isinstance(value, str) else value
        except expressions.ExpressionError as exc:
            raise WorkflowError(f"{path}: on.workflow_call.outputs.{key}: {exc}") from None
        outputs[key] = str(expressions.to_string(shown))
    kinds = {r.result for r in by_job.values()}
    result = "failure" if "failure" in kinds else "success" if "success" in kinds \
        else "skipped"
    return JobResult(result, outputs)
