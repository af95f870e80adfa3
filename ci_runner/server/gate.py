"""The loader for runs of pull requests from forks, named in their metadata
(``"loader": GATE_LOADER``) so the dispatcher workflow calls it instead of ci-runner's.

Such a run first waits for an approver (``step.wait_for_approval``, so ``ci-runner
pending``/``approve`` and the HTTP API see it like any approval) and only then
imports the fork's ``.ci/pipeline.py``: nothing of the fork's code runs before a
person said yes. Its steps then get no secrets and no network: asking for either
fails the run with a message saying why. The webhook server also starts its driver
without secrets in the environment and, where the kernel allows, in a network
namespace of its own, so light steps have no network either.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ci_runner.dispatch.pipeline import PipelineStep
from ci_runner.engine.step import Step, WorkflowEvent
from ci_runner.errors import UsageError

GATE_LOADER = "ci_runner.server.gate:load_untrusted"
APPROVAL_STEP = "approve-fork"
APPROVAL_TIMEOUT = "7 days"


def load_untrusted(metadata: dict[str, Any]) -> UntrustedRunner:
    return UntrustedRunner(metadata)


class UntrustedRunner:
    def __init__(self, metadata: dict[str, Any]) -> None:
        self.metadata = metadata

    async def run(self, event: WorkflowEvent, step: Step) -> Any:
        meta = self.metadata
        if meta.get("needs_approval"):
            who = f" by {meta['sender']}" if meta.get("sender") else ""
            await step.wait_for_approval(
                APPROVAL_STEP, timeout=APPROVAL_TIMEOUT,
                message=f"pull request #{meta.get('pr')}{who} comes from a fork: approve to"
                        " run its pipeline (no secrets, no network)",
            )
        from ci_runner.dispatch.pipeline import PipelineEvent
        from ci_runner.engine.runtime import call_run, import_path

        # The fork's code is imported only now (its workflows, when it has no pipeline).
        load_runner = import_path(str(meta.get("inner_loader")
                                      or "ci_runner.dispatch.loader:load_runner"))
        runner = load_runner(meta)
        inner = PipelineEvent(
            payload=event.payload, timestamp=event.timestamp, instance_id=event.instance_id,
            repo=str(meta["repo"]), sha=str(meta["sha"]), ref=meta.get("ref"),
            trigger=str(meta.get("trigger", "webhook")), workspace=Path(meta["workspace"]),
            snapshot=False,
        )
        from ci_runner.dispatch.loader import limit_run_time

        limit_run_time(runner.pipeline, step)
        return await call_run(runner.pipeline.run, inner, UntrustedStep(step, meta, step.host))


class UntrustedStep(PipelineStep):
    """``step`` for untrusted code: ``step.run`` refuses secrets and network."""

    async def run(self, name: str, cmd: Sequence[str] | str, **options: Any) -> dict[str, Any]:
        asked = options.get("secrets") or ()
        if asked:
            names = [asked] if isinstance(asked, str) else list(asked)
            raise UsageError(
                f"step {name!r} asks for secrets {', '.join(map(str, names))}: runs of pull"
                " requests from forks get no secrets (run it from a branch of the repo)",
                step=name,
            )
        if options.get("network"):
            raise UsageError(
                f"step {name!r} asks for network: runs of pull requests from forks get none",
                step=name,
            )
        result: dict[str, Any] = await super().run(name, cmd, **options)
        return result
