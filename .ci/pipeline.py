"""ci-runner's own CI, run by ci-runner: lint and types at once, then the test suite."""

from __future__ import annotations

import sys
from pathlib import Path

from ci_runner import Pipeline


class CI(Pipeline):
    async def run(self, event, step):
        py = sys.executable
        await step.parallel(
            step.run("lint", [py, "-m", "ruff", "check", "."]),
            step.run("types", [py, "-m", "mypy"]),
        )
        # The real webhook bodies live beside the repo, not beside this run's worktree.
        fixtures = Path(event.repo).parent / "shared" / "fixtures" / "webhooks"
        env = {"CI_RUNNER_WEBHOOK_FIXTURES": str(fixtures)} if fixtures.is_dir() else {}
        await step.run("test", [py, "-m", "pytest", "-q", "-x"], env=env,
                       timeout="20 minutes")
