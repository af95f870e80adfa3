"""A Python project's CI: install, then lint and test in parallel (a flaky test is retried)."""

from __future__ import annotations

import sys

from ci_runner import Pipeline


class CI(Pipeline):
    async def run(self, event, step):
        await step.run("venv", [sys.executable, "-m", "venv", ".venv"])
        pip = [".venv/bin/python", "-m", "pip", "install", "--quiet"]
        await step.run("install", [*pip, "-e", ".", "pytest", "ruff"], timeout="15 minutes")
        await step.parallel(
            step.run("lint", [".venv/bin/ruff", "check", "."]),
            step.run(
                "test", [".venv/bin/python", "-m", "pytest", "-q"],
                retries={"limit": 1, "delay": "2 seconds"}, timeout="20 minutes",
            ),
        )
