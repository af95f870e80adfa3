"""Dispatch: the tenant envelope, loading a repo's pipeline at a run's sha, and running it."""

from __future__ import annotations

from typing import Any

from ci_runner.dispatch.envelope import METADATA_KEY, WORKFLOW, unwrap_params, wrap_params

__all__ = ["METADATA_KEY", "WORKFLOW", "dispatch", "unwrap_params", "wrap_params"]


def __getattr__(name: str) -> Any:
    # `dispatch` needs the runtime (asyncio); import it only when asked for.
    if name == "dispatch":
        from ci_runner.dispatch.dispatcher import dispatch

        return dispatch
    raise AttributeError(name)
