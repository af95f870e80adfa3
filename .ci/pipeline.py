"""ci-runner's own CI, run by ci-runner: lint and types at once, then the test suite."""

from __future__ import annotations

import sys

from ci_runner import Pipeline


class CI(Pipeline):
    async def run(self, event, step):
        py = sys.executable
        await step.parallel(
            step.run("lint", [py, "-m", "ruff", "check", "."]),
            step.run("types", [py, "-m", "mypy"]),
        )
        await step.run("test", [py, "-m", "pytest", "-q", "-x"], timeout="20 minutes")
