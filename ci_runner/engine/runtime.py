"""Running one workflow's ``run(event, step)`` to an outcome, wherever it runs:
in the per-run child process, or inside the driver when the engine is embedded."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ci_runner.engine.step import Step, WorkflowEvent, _Hibernate
from ci_runner.errors import Cancelled, UsageError, to_record

Outcome = dict[str, Any]


def import_path(path: str) -> Any:
    """``"package.module:Name"`` -> the object."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise UsageError(f"{path!r} is not an import path like 'package.module:Name'")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def path_of(obj: Any) -> str:
    return f"{obj.__module__}:{obj.__qualname__}"


class SyncStep:
    """The step API for a plain ``def run``: each call blocks its thread until done.

    ``parallel(fn, fn, ...)`` runs zero-argument callables (usually lambdas that
    call ``step.run``/``step.do``) in threads at once and returns their results.
    """

    def __init__(self, step: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._step = step
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._step, name)
        if not inspect.iscoroutinefunction(inspect.unwrap(target)):  # under @watched too
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            return asyncio.run_coroutine_threadsafe(target(*args, **kwargs), self._loop).result()

        return call

    def parallel(self, *calls: Callable[[], Any], fail_fast: bool = True) -> list[Any]:
        """Each branch is a thread, and a thread cannot be stopped from outside: every
        branch runs to its end, as with ``fail_fast=False`` (accepted, so one pipeline
        reads the same in both kinds of ``run``); then the first failure, in call order,
        is raised."""
        with ThreadPoolExecutor(max_workers=max(len(calls), 1)) as pool:
            return [f.result() for f in [pool.submit(c) for c in calls]]


async def call_run(run: Callable[..., Any], event: Any, step: Any) -> Any:
    """Await an ``async def run``, or run a plain ``def run`` in a thread with ``SyncStep``."""
    if inspect.iscoroutinefunction(run):
        return await run(event, step)
    return await asyncio.to_thread(run, event, SyncStep(step, asyncio.get_running_loop()))


async def execute(workflow: Any, event: WorkflowEvent, step: Step) -> Outcome:
    """Drive ``workflow.run(event, step)`` to complete, errored, terminated or hibernate."""
    try:
        output = await step.run_main(call_run(workflow.run, event, step))
    except _Hibernate:
        assert step.hibernation is not None
        h = step.hibernation
        return {"kind": "hibernate", "status": h.status, "wake_at": h.wake_at,
                "waiting_for": h.waiting_for}
    except Cancelled:
        return {"kind": "terminated"}
    except Exception as exc:
        return {"kind": "errored", "error": to_record(exc)}
    try:
        json.dumps(output)
    except (TypeError, ValueError):
        output = repr(output)
    return {"kind": "complete", "output": output}


