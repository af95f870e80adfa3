"""``load_runner(metadata)``: import a repo's ``.ci/pipeline.py`` from the run's own worktree.

Called whenever the engine wakes a run, in the run's child process, so a run
always replays the code of its own commit even after the repo moved on. A
worktree that was deleted meanwhile is forked again at the run's sha.
"""

from __future__ import annotations

import os
import sys
import traceback
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ci_runner.dispatch.envelope import PIPELINE_FILE
from ci_runner.dispatch.pipeline import Pipeline
from ci_runner.errors import PipelineLoadError, PipelineNotFound

if TYPE_CHECKING:
    from ci_runner.engine.step import Step, WorkflowEvent

__all__ = ["PIPELINE_FILE", "PipelineRunner", "load_runner", "pick_pipeline"]


class PipelineRunner:
    """Adapts a repo's Pipeline to the dispatcher: builds the CI event and step API."""

    def __init__(self, pipeline: Pipeline, metadata: dict[str, Any]) -> None:
        self.pipeline = pipeline
        self.metadata = metadata

    async def run(self, event: WorkflowEvent, step: Step) -> Any:
        from ci_runner.dispatch.pipeline import PipelineEvent, PipelineStep
        from ci_runner.engine.runtime import call_run

        meta = self.metadata
        inner = PipelineEvent(
            payload=event.payload, timestamp=event.timestamp, instance_id=event.instance_id,
            repo=str(meta["repo"]), sha=str(meta["sha"]), ref=meta.get("ref"),
            trigger=str(meta.get("trigger", "cli")), workspace=Path(meta["workspace"]),
            snapshot=bool(meta.get("snapshot", False)),
        )
        limit_run_time(self.pipeline, step)
        return await call_run(self.pipeline.run, inner, PipelineStep(step, meta, step.host))


def limit_run_time(pipeline: Pipeline, step: Step) -> None:
    """Tell the driver the pipeline's own ``timeout``, if it has one."""
    limit = getattr(pipeline, "timeout", None)
    if limit is not None:
        from ci_runner.engine.policy import seconds

        step.host.request("run_timeout", seconds=seconds(limit, what="timeout"))


def load_runner(metadata: dict[str, Any]) -> PipelineRunner:
    """Import the run's pipeline from its own worktree (forked again if it was removed)."""
    workspace = Path(metadata["workspace"])
    if not workspace.is_dir():
        _refork(metadata, workspace)
    os.chdir(workspace)
    path = workspace / metadata.get("pipeline_file", PIPELINE_FILE)
    if not path.is_file():
        raise PipelineNotFound(
            f"no {PIPELINE_FILE} at {str(metadata['sha'])[:12]}: `ci-runner init` writes a starter"
        )
    module = _import(path, f"_ci_pipeline_{metadata['run_id'].replace('-', '_')}")
    cls = pick_pipeline(module, metadata.get("pipeline"), str(path))
    return PipelineRunner(cls(), metadata)


def _import(path: Path, module_name: str) -> Any:
    """Run the pipeline file as a module, from its source: no bytecode is read or
    written. A ``.pyc`` is trusted by the source's size and mtime second, so one left in
    the worktree could stand in for the file of this run; writing them would also leave
    ``__pycache__`` folders in a checkout that steps may expect clean."""
    sys.dont_write_bytecode = True  # for helpers next to the pipeline too; steps unaffected
    module = types.ModuleType(module_name)
    module.__file__ = str(path)
    sys.modules[module_name] = module
    # Helpers next to the pipeline (".ci/helpers.py") import like siblings.
    sys.path.insert(0, str(path.parent))
    try:
        code = compile(path.read_bytes(), str(path), "exec", dont_inherit=True)
        exec(code, module.__dict__)  # noqa: S102 - the repo's own pipeline, by design
    except Exception as exc:  # any import failure is the pipeline's to fix
        what = exc.msg if isinstance(exc, SyntaxError) else str(exc)
        raise PipelineLoadError(
            f"{PIPELINE_FILE} failed to import: {type(exc).__name__}: {what}"
            f" ({_where(exc, path)})"
        ) from exc
    return module


def _where(exc: BaseException, path: Path) -> str:
    """The line of the pipeline file the error comes from, not importlib's or a library's."""
    if isinstance(exc, SyntaxError) and exc.filename == str(path):
        return f"{path.name}:{exc.lineno}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
    if frames:
        return f"{path.name}:{frames[-1].lineno}"
    return path.name


def pick_pipeline(module: Any, wanted: str | None, where: str) -> type[Pipeline]:
    """The Pipeline subclass defined in ``module``; ``wanted`` picks one of several."""
    found = {
        (obj.name or obj.__name__): obj
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, Pipeline) and obj is not Pipeline
        and obj.__module__ == module.__name__
    }
    if wanted is not None:
        if wanted not in found:
            names = ", ".join(sorted(found)) or "none"
            raise PipelineNotFound(f"no pipeline {wanted!r} in {where} (found: {names})")
        return found[wanted]
    if not found:
        raise PipelineNotFound(
            f"{where} defines no subclass of ci_runner.Pipeline: add `class CI(Pipeline)`"
        )
    if len(found) > 1:
        raise PipelineNotFound(
            f"{where} defines several pipelines ({', '.join(sorted(found))}): pick one with"
            " --pipeline NAME"
        )
    return next(iter(found.values()))


def _refork(metadata: dict[str, Any], workspace: Path) -> None:
    from ci_runner.workspace import fork, open_repo

    fork(open_repo(Path(metadata["repo"])), str(metadata["sha"]), workspace, again=True)
