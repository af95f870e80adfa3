"""``load_runner(metadata)``: import a repo's ``.ci/pipeline.py`` from the run's own worktree.

Called whenever the engine wakes a run, in the run's child process, so a run
always replays the code of its own commit even after the repo moved on. A
worktree that was deleted meanwhile is forked again at the run's sha.

The code runs from a temporary worktree, but its errors and warnings name the
user's own files (``SourcePaths``): ``<repo>/.ci/pipeline.py:LINE``, the file the
user edits, or ``.ci/pipeline.py:LINE`` for a server's mirror, which has no checkout.
"""

from __future__ import annotations

import os
import sys
import types
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ci_runner.dispatch.envelope import PIPELINE_FILE
from ci_runner.dispatch.pipeline import Pipeline
from ci_runner.errors import (
    PipelineLoadError,
    PipelineNotFound,
    note_origin,
    origin_frames,
)

if TYPE_CHECKING:
    from ci_runner.engine.step import Step, WorkflowEvent

__all__ = ["PIPELINE_FILE", "PipelineRunner", "load_runner", "pick_pipeline"]


class SourcePaths:
    """Names a file of the run's worktree as the user knows it: the same file in their
    repository (``<repo>/.ci/pipeline.py``), or relative to its root when the repo is a
    server's bare mirror. Files outside the worktree (libraries) are not the user's."""

    def __init__(self, metadata: dict[str, Any]) -> None:
        self.workspace = Path(metadata["workspace"])
        repo = Path(str(metadata.get("repo", "")))
        # A checkout (it has a .git) is where the user edits; a bare mirror is nowhere.
        self.root: Path | None = repo if (repo / ".git").exists() else None

    def __call__(self, filename: str) -> str | None:
        path = Path(filename)
        if not path.is_relative_to(self.workspace):
            return None
        relative = path.relative_to(self.workspace)
        return str(self.root / relative) if self.root is not None else str(relative)

    def note(self, exc: BaseException) -> None:
        """Keep on ``exc`` where in the user's files it came from (see ``errors``)."""
        note_origin(exc, origin_frames(exc), self)

    def show_warnings(self) -> None:
        """Warnings of the pipeline (its own, or Python's ``coroutine ... was never
        awaited``) name the user's file, not the worktree's."""
        original = warnings.showwarning

        def show(message: Warning | str, category: type[Warning], filename: str,
                 lineno: int, file: TextIO | None = None, line: str | None = None) -> None:
            if line is None:  # read from the file that ran, not the user's copy of it
                import linecache

                line = linecache.getline(filename, lineno)
            original(message, category, self(filename) or filename, lineno, file, line)

        warnings.showwarning = show


class PipelineRunner:
    """Adapts a repo's Pipeline to the dispatcher: builds the CI event and step API."""

    def __init__(self, pipeline: Pipeline, metadata: dict[str, Any],
                 sources: SourcePaths | None = None) -> None:
        self.pipeline = pipeline
        self.metadata = metadata
        self.sources = sources or SourcePaths(metadata)

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
        try:
            output = await call_run(self.pipeline.run, inner, PipelineStep(step, meta, step.host))
            step.check_awaited()  # a step called without await fails the run, naming it
        except Exception as exc:
            self.sources.note(exc)
            raise
        return output


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
    sources = SourcePaths(metadata)
    sources.show_warnings()
    module = _import(path, f"_ci_pipeline_{metadata['run_id'].replace('-', '_')}", sources)
    cls = pick_pipeline(module, metadata.get("pipeline"), PIPELINE_FILE)
    try:
        pipeline = cls()
    except Exception as exc:  # the pipeline's own __init__
        sources.note(exc)
        raise
    return PipelineRunner(pipeline, metadata, sources)


def _import(path: Path, module_name: str, sources: SourcePaths) -> Any:
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
        frames = origin_frames(exc)
        if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
            # Where the parser stopped, in the pipeline or a helper it imports.
            frames.append({"file": exc.filename, "line": exc.lineno, "function": "<module>",
                           "code": (exc.text or "").strip()[:240]})
        frames = frames or [{"file": str(path), "line": 1, "function": "<module>", "code": ""}]
        where = note_origin(exc, frames, sources) or {"location": PIPELINE_FILE}
        error = PipelineLoadError(f"{PIPELINE_FILE} failed to import: {type(exc).__name__}:"
                                  f" {what} ({where['location']})")
        note_origin(error, frames, sources)
        raise error from exc
    return module


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
    from ci_runner.workspace import fork
    from ci_runner.workspace.snapshots import checkout_source

    fork(checkout_source(metadata["repo"], metadata.get("snapshot_store"),
                         metadata.get("git_common_dir")),
         str(metadata["sha"]), workspace, again=True,
         submodules=metadata.get("submodules", True),
         only=str(Path(str(metadata.get("pipeline_file", PIPELINE_FILE))).parent))
