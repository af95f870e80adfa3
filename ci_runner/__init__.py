"""ci-runner: durable CI pipelines that live in the repo, run locally or from webhooks.

This module is the pipeline author's API; everything else is internal. Names are
imported on first use, so `ci-runner --help` and the CLI's start stay fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ci_runner.dispatch.pipeline import Pipeline, PipelineEvent, PipelineStep
    from ci_runner.engine.policy import RetryPolicy
    from ci_runner.errors import (
        Cancelled,
        CIRunnerError,
        CommandFailed,
        EventTimeout,
        NonRetryableError,
        Rejected,
        StepFailed,
        StepTimeout,
    )

_WHERE = {
    "CIRunnerError": "ci_runner.errors",
    "Cancelled": "ci_runner.errors",
    "CommandFailed": "ci_runner.errors",
    "EventTimeout": "ci_runner.errors",
    "NonRetryableError": "ci_runner.errors",
    "Pipeline": "ci_runner.dispatch.pipeline",
    "PipelineEvent": "ci_runner.dispatch.pipeline",
    "PipelineStep": "ci_runner.dispatch.pipeline",
    "Rejected": "ci_runner.errors",
    "RetryPolicy": "ci_runner.engine.policy",
    "StepFailed": "ci_runner.errors",
    "StepTimeout": "ci_runner.errors",
}

__all__ = [
    "CIRunnerError",
    "Cancelled",
    "CommandFailed",
    "EventTimeout",
    "NonRetryableError",
    "Pipeline",
    "PipelineEvent",
    "PipelineStep",
    "Rejected",
    "RetryPolicy",
    "StepFailed",
    "StepTimeout",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ci_runner' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
