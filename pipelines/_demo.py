"""The demo pipeline `ci-runner demo` runs: parallel checks, a retried flaky step,
a value computed in Python, a durable sleep and a build artifact."""

from __future__ import annotations

import sys

from ci_runner import Pipeline


class CI(Pipeline):
    async def run(self, event, step):
        py = sys.executable
        await step.run("compile", [py, "-m", "py_compile", "app.py", "test_app.py"])
        await step.parallel(
            step.run("test", [py, "-m", "unittest", "-v", "test_app"]),
            step.run("style", "grep -n '\t' app.py && exit 1 || echo 'no tabs'"),
            step.run(
                "flaky", [py, "flaky.py"],
                retries={"limit": 2, "delay": "1 second", "backoff": "constant"},
            ),
        )
        version = await step.do(
            "version", lambda: (event.workspace / "VERSION").read_text().strip()
        )
        await step.sleep("cool-down", "1 second")
        await step.run("package", f"mkdir -p dist && tar czf dist/demo-{version}.tgz app.py")
        return {"version": version, "params": event.payload}
