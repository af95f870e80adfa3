"""A Node.js project's CI: clean install, then lint and test in parallel."""

from __future__ import annotations

from ci_runner import Pipeline


class CI(Pipeline):
    async def run(self, event, step):
        await step.run("install", ["npm", "ci"], timeout="15 minutes")
        await step.parallel(
            step.run("lint", ["npm", "run", "lint", "--if-present"]),
            step.run("test", ["npm", "test"], timeout="20 minutes"),
        )
