"""The one workflow the engine knows for CI: unwrap the envelope, load the tenant's
pipeline at the run's sha, run it with the CI step API.

Dynamic Workflows' ``dispatchWorkflow``: the engine stays generic, the tenant's
code is found from the instance's own metadata every time it wakes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ci_runner.dispatch.envelope import WORKFLOW, unwrap_params
from ci_runner.dispatch.loader import load_runner
from ci_runner.dispatch.pipeline import PipelineEvent, PipelineStep
from ci_runner.engine.runtime import call_run
from ci_runner.engine.step import Step, WorkflowEvent

__all__ = ["WORKFLOW", "PipelineDispatcher"]


class PipelineDispatcher:
    async def run(self, event: WorkflowEvent, step: Step) -> Any:
        metadata, params = unwrap_params(event.payload)
        runner = load_runner(metadata)
        inner = PipelineEvent(
            payload=params,
            timestamp=event.timestamp,
            instance_id=event.instance_id,
            repo=str(metadata["repo"]),
            sha=str(metadata["sha"]),
            ref=metadata.get("ref"),
            trigger=str(metadata.get("trigger", "cli")),
            workspace=Path(metadata["workspace"]),
            snapshot=bool(metadata.get("snapshot", False)),
        )
        return await call_run(runner.run, inner, PipelineStep(step, metadata, step.host))
