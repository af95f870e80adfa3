"""Dispatch: the tenant envelope, loading a repo's pipeline at a run's sha, and running it."""

from __future__ import annotations

from ci_runner.dispatch.envelope import METADATA_KEY, unwrap_params, wrap_params

__all__ = ["METADATA_KEY", "unwrap_params", "wrap_params"]
