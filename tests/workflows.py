"""Workflows for the engine's tests. Importable by path so the child process can load them.

They talk to the test through a ledger file named in the payload: each step appends
its name when its body actually runs, so replays are visible.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from ci_runner.errors import NonRetryableError


def mark(payload: dict[str, Any], name: str) -> None:
    with Path(payload["ledger"]).open("a", encoding="utf-8") as f:
        f.write(name + "\n")


def ledger(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split() if path.exists() else []


class Sequence:
    """Steps in order; a step can hang (for kills) when the payload says so."""

    async def run(self, event: Any, step: Any) -> Any:
        p = event.payload
        results = []
        for i in range(p.get("steps", 3)):
            def body(i: int = i) -> int:
                mark(p, f"s{i}")
                if p.get("hang_at") == i and not Path(p["ledger"] + ".release").exists():
                    time.sleep(3600)
                return i * i
            results.append(await step.do(f"s{i}", body))
        return results


class Flaky:
    async def run(self, event: Any, step: Any) -> Any:
        p = event.payload

        def body() -> str:
            mark(p, "flaky")
            if len(Path(p["ledger"]).read_text().split()) < p.get("fail_times", 2) + 1:
                raise RuntimeError("not yet")
            return "ok"

        return await step.do("flaky", body, retries={"limit": 3, "delay": 0.01})


class Fatal:
    async def run(self, event: Any, step: Any) -> Any:
        def body() -> None:
            mark(event.payload, "fatal")
            raise NonRetryableError("do not retry this")

        return await step.do("fatal", body, retries={"limit": 5, "delay": 0.01})


class CatchFailure:
    """A failed step's error is replayed, not re-run; the pipeline can catch it."""

    async def run(self, event: Any, step: Any) -> Any:
        def boom() -> None:
            mark(event.payload, "boom")
            raise ValueError("bad value")

        try:
            await step.do("boom", boom)
        except Exception as exc:
            caught = type(exc).__name__ + ":" + str(exc)
        await step.wait_for_event("go", "go", timeout=60)
        return caught


class Waiter:
    async def run(self, event: Any, step: Any) -> Any:
        await step.do("before", lambda: mark(event.payload, "before"))
        got = await step.wait_for_event("approval", "approval", timeout="1 hour")
        await step.do("after", lambda: mark(event.payload, "after"))
        return got["payload"]


class LongSleep:
    async def run(self, event: Any, step: Any) -> Any:
        await step.do("before", lambda: mark(event.payload, "before"))
        await step.sleep("nap", event.payload.get("nap", 2))
        await step.do("after", lambda: mark(event.payload, "after"))
        return "rested"


class Parallel:
    async def run(self, event: Any, step: Any) -> Any:
        async def slow(n: int) -> int:
            await asyncio.sleep(0.05)
            mark(event.payload, f"p{n}")
            return n

        values = await asyncio.gather(*(step.do("item", lambda n=n: slow(n)) for n in range(4)))
        again = await step.parallel(step.do("x", lambda: 1), step.do("y", lambda: 2))
        return [*values, *again]


class Staggered:
    """Three steps begun together that finish in reverse order, then one more."""

    async def run(self, event: Any, step: Any) -> Any:
        async def after(n: int, pause: float) -> int:
            await asyncio.sleep(pause)
            mark(event.payload, f"z{n}")
            return n

        done = await asyncio.gather(
            step.do("z0", lambda: after(0, 0.3)),
            step.do("z1", lambda: after(1, 0.15)),
            step.do("z2", lambda: after(2, 0.0)),
        )
        return [*done, await step.do("last", lambda: 3)]


class Gated:
    """A step that waits for a release file (so a test can pause the run meanwhile),
    then two more steps."""

    async def run(self, event: Any, step: Any) -> Any:
        p = event.payload

        def hold() -> str:
            mark(p, "held")
            while not Path(p["ledger"] + ".release").exists():
                time.sleep(0.02)
            return "released"

        first = await step.do("hold", hold)
        await step.do("next", lambda: mark(p, "next"))
        await step.do("last", lambda: mark(p, "last"))
        return first


class SyncRun:
    def run(self, event: Any, step: Any) -> Any:
        a = step.do("a", lambda: 1)
        b, c = step.parallel(lambda: step.do("b", lambda: 2), lambda: step.do("c", lambda: 3))
        return a + b + c


class Changed:
    """Replays a run recorded by Sequence, but calls s0 as a sleep: nondeterminism."""

    async def run(self, event: Any, step: Any) -> Any:
        await step.sleep("s0", 0)


class Crash:
    async def run(self, event: Any, step: Any) -> Any:
        await step.do("fine", lambda: 1)
        await step.do("die", lambda: os._exit(7))


class NotJson:
    async def run(self, event: Any, step: Any) -> Any:
        return await step.do("obj", object)


class EchoRunner:
    def __init__(self, metadata: dict[str, Any]) -> None:
        self.metadata = metadata

    async def run(self, event: Any, step: Any) -> Any:
        got = await step.do("echo", lambda: {"tenant": self.metadata["tenant"],
                                             "params": event.payload})
        return got


def load_echo(metadata: dict[str, Any]) -> EchoRunner:
    """A custom load_runner for the dispatch primitive's test."""
    return EchoRunner(metadata)
