"""The loader of a workflow run (its metadata's ``loader``): the built-in
``WorkflowPipeline`` instead of a ``.ci/pipeline.py``, run from the run's worktree."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ci_runner.dispatch.loader import PipelineRunner, _refork


def load_runner(metadata: dict[str, Any]) -> PipelineRunner:
    from ci_runner.workflows.runner import WorkflowPipeline

    workspace = Path(metadata["workspace"])
    if not workspace.is_dir():
        _refork(metadata, workspace)
    os.chdir(workspace)
    return PipelineRunner(WorkflowPipeline(metadata), metadata)
