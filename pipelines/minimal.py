"""A first pipeline: commands in order, two at once, and a value computed in Python."""

from __future__ import annotations

from ci_runner import Pipeline


class CI(Pipeline):
    async def run(self, event, step):
        await step.run("hello", ["echo", f"building {event.sha[:10]} ({event.trigger})"])
        await step.parallel(
            step.run("list files", ["git", "ls-files"]),
            step.run("count lines", "git ls-files | xargs cat | wc -l"),
        )
        files = await step.do("file count", lambda: len(list(event.workspace.iterdir())))
        return {"files": files}
