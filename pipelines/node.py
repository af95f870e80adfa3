"""A Node.js project's CI: install its dependencies, then lint and test side by side.

With a lockfile, `npm ci` installs exactly what it pins; a fresh project without one gets
`npm install` (commit the package-lock.json it writes to pin them). Lint and test run
side by side, and a failing lint does not stop the tests (``fail_fast=False``): a run
shows both outcomes.
"""

from __future__ import annotations

import json

from ci_runner import Pipeline

LOCKFILES = ("package-lock.json", "npm-shrinkwrap.json")
# The test script `npm init` writes, which fails on purpose until there are tests.
NO_TESTS_YET = 'echo "Error: no test specified" && exit 1'


class CI(Pipeline):
    async def run(self, event, step):
        locked = any((event.workspace / name).is_file() for name in LOCKFILES)
        install = "ci" if locked else "install"
        await step.run("install", ["npm", install, "--no-audit", "--no-fund"],
                       timeout="15 minutes")
        package = json.loads((event.workspace / "package.json").read_text(encoding="utf-8"))
        test_script = (package.get("scripts") or {}).get("test", NO_TESTS_YET)
        if test_script.strip() == NO_TESTS_YET:
            test = step.run("no tests yet", [
                "echo", "package.json has no test script yet: add one, e.g."
                ' "test": "node --test"'])
        else:
            test = step.run("test", ["npm", "test"], timeout="20 minutes")
        await step.parallel(
            step.run("lint", ["npm", "run", "lint", "--if-present"]),
            test,
            fail_fast=False,
        )
