"""The dispatcher workflow: unwrap the envelope, load the tenant's runner from the
instance's own metadata, run it. Dynamic Workflows' ``dispatchWorkflow``.

The engine stays generic: it only knows this one workflow. Which code runs is
decided by ``load_runner(metadata)`` every time the instance wakes; the metadata
may name its own loader (``"loader": "module:function"``), else ci-runner's, which
imports ``.ci/pipeline.py`` from the run's worktree at its sha.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ci_runner.dispatch.envelope import LOADER, WORKFLOW, unwrap_params, wrap_params
from ci_runner.engine.runtime import call_run, import_path
from ci_runner.engine.step import Step, WorkflowEvent

if TYPE_CHECKING:
    from ci_runner.engine.driver import Engine

__all__ = ["WORKFLOW", "PipelineDispatcher", "dispatch"]


class PipelineDispatcher:
    async def run(self, event: WorkflowEvent, step: Step) -> Any:
        metadata, params = unwrap_params(event.payload)
        if metadata.get("workspace"):  # a CI run's: whatever loads it, files come when read
            from pathlib import Path

            from ci_runner.dispatch.envelope import PIPELINE_FILE
            from ci_runner.dispatch.unfilled import watch

            folder = Path(str(metadata.get("pipeline_file") or PIPELINE_FILE)).parent
            watch(Path(str(metadata["workspace"])), str(folder))
        load_runner = import_path(str(metadata.get("loader") or LOADER))
        runner = load_runner(metadata)
        inner = WorkflowEvent(params, event.timestamp, event.instance_id)
        return await call_run(runner.run, inner, step)


def dispatch(
    engine: Engine,
    *,
    tenant: str,
    metadata: dict[str, Any],
    params: dict[str, Any],
    instance_id: str | None = None,
) -> str:
    """Create an instance of the dispatcher for a tenant; returns its id.

    Put ``"loader": "your.module:load_runner"`` in ``metadata`` to load runners your
    way: it receives the metadata and returns an object with ``run(event, step)``.
    Drive it with ``engine.drive(id)``. Never put secrets in the metadata: it is stored.
    """
    return engine.create(WORKFLOW, wrap_params({"tenant": tenant, **metadata}, params),
                         tenant=tenant, instance_id=instance_id)
