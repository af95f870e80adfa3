"""``uses: ./path`` local composite actions: their ``runs.steps`` run as steps of
the job (``test / Build / Run make``), with their own ``inputs`` and ``steps``
contexts, and their ``outputs`` computed from those steps."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ci_runner.errors import StepFailed
from ci_runner.workflows.model import _Check, _step
from ci_runner.workflows.source import Located, WorkflowError

if TYPE_CHECKING:
    from ci_runner.workflows.model import Step
    from ci_runner.workflows.runner import JobCell


async def run_composite(cell: JobCell, step: Step, name: str, step_env: Mapping[str, str],
                        with_: Mapping[str, Any]) -> dict[str, Any]:
    from ci_runner.workflows import expressions
    from ci_runner.workflows.actions import _local_action

    assert step.uses is not None
    data = _local_action(cell, step.uses, step)
    where = f"{step.uses.rstrip('/')}/action.yml"
    check = _Check(where)
    declared = data.get("inputs")
    inputs: dict[str, Any] = {}
    if isinstance(declared, Located):
        for key, spec in declared.items():
            default = spec.get("default") if isinstance(spec, Mapping) else None
            inputs[key] = cell.interpolate(default, f"{where}: inputs.{key}") \
                if isinstance(default, str) else default
    inputs.update(with_)
    runs = data["runs"]
    raw_steps = runs.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise WorkflowError(f"{where}:{runs.line}: runs.steps: a composite action needs steps")
    steps = [_step(check, f"runs.steps[{i}]", i, item, runs.line_of("steps"))
             for i, item in enumerate(raw_steps)]
    saved = (cell.steps_ctx, cell.ctx.get("inputs"), cell.failed, cell.label, cell.inside)
    cell.steps_ctx = {}
    cell.ctx["inputs"] = inputs
    cell.failed = False
    cell.label = name
    action_path = str(cell.dir / step.uses)
    cell.inside = (where, runs.line)
    extra = dict(cell.extra_env)
    cell.extra_env["GITHUB_ACTION_PATH"] = action_path
    try:
        for sub in steps:
            if sub.run is not None and sub.shell is None:
                raise WorkflowError(f"{where}:{sub.line}: runs.steps[{sub.index}].shell:"
                                    " a composite action's run: step needs shell:")
            await cell._step(sub)
        inner_failed = cell.failed
        outputs = {}
        declared_out = data.get("outputs")
        if isinstance(declared_out, Located):
            for key, spec in declared_out.items():
                value = spec.get("value") if isinstance(spec, Mapping) else None
                outputs[key] = str(expressions.to_string(
                    cell.interpolate(value, f"{where}: outputs.{key}")))
        handed_env = {k: v for k, v in cell.extra_env.items()
                      if k != "GITHUB_ACTION_PATH" and extra.get(k) != v}
    finally:
        cell.steps_ctx, cell.ctx["inputs"], cell.failed, cell.label, cell.inside = saved
        cell.extra_env = extra
    if inner_failed:
        raise StepFailed(f"step {name!r}: a step of {step.uses} failed")
    return {"outputs": outputs, "env": handed_env}
