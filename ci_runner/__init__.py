"""ci-runner: durable CI pipelines that live in the repo, run locally or from webhooks.

This module is the pipeline author's API; everything else is internal.
"""

from __future__ import annotations

from ci_runner.dispatch.pipeline import Pipeline, PipelineEvent, PipelineStep
from ci_runner.engine.policy import RetryPolicy
from ci_runner.errors import (
    Cancelled,
    CIRunnerError,
    CommandFailed,
    EventTimeout,
    NonRetryableError,
    StepFailed,
    StepTimeout,
)

__all__ = [
    "CIRunnerError",
    "Cancelled",
    "CommandFailed",
    "EventTimeout",
    "NonRetryableError",
    "Pipeline",
    "PipelineEvent",
    "PipelineStep",
    "RetryPolicy",
    "StepFailed",
    "StepTimeout",
]
