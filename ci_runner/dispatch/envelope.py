"""The envelope every instance payload travels in: ``{__dispatcherMetadata, params}``.

The metadata names the tenant and the code to load (repo, sha, pipeline); the
params are the user's. Secrets never go in here: the envelope is stored.
"""

from __future__ import annotations

from typing import Any

from ci_runner.errors import UsageError

METADATA_KEY = "__dispatcherMetadata"
# The engine's workflow for every CI run, and where a repo keeps its pipeline. Kept
# here, not in dispatcher.py, so that starting a run does not import the runtime.
WORKFLOW = "ci_runner.dispatch.dispatcher:PipelineDispatcher"
PIPELINE_FILE = ".ci/pipeline.py"
LOADER = "ci_runner.dispatch.loader:load_runner"


def wrap_params(metadata: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    return {METADATA_KEY: metadata, "params": params}


def unwrap_params(payload: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    if not isinstance(payload, dict) or METADATA_KEY not in payload:
        raise UsageError(
            "this instance's payload has no dispatcher metadata; did you create it with"
            " engine.create() directly instead of dispatch()/wrap_params()?"
        )
    return payload[METADATA_KEY], payload.get("params") or {}
