"""A fully cached run: a 10-step pipeline whose steps all declare inputs, run again on
an unchanged tree, end to end through the real CLI (`ci-runner run --json`).

Ours: the wall time of the whole command when every step is a cache hit. Peers,
interleaved: the same pipeline's first, uncached run (the steps really run, 0.2 s
each), and the bare cost of `python -c pass`, for context. Goal: under 300 ms.

Runs use the default sandbox (auto: bubblewrap here); CI_RUNNER_SANDBOX=off measures
the unsandboxed run (the pipeline process forked instead of started in bwrap).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path

from _common import PY, Row, cli, git, make_repo, median, ms, print_table, run_env, verdict

ROUNDS = 8
STEPS = 10
GOAL_S = 0.300

PIPELINE = f'''\
from ci_runner import Pipeline


class CI(Pipeline):
    async def run(self, event, step):
        for i in range({STEPS}):
            await step.run(f"step{{i}}", ["sleep", "0.2"], inputs=[f"src/part{{i}}/**"])
'''


def timed(cmd: list[str], **kw: object) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]
    took = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr}")
    return took, done.stdout


def main() -> None:
    files = {".ci/pipeline.py": PIPELINE}
    files.update({f"src/part{i}/mod.py": f"X = {i}\n" for i in range(STEPS)})
    cached, fresh, bare = [], [], []
    with tempfile.TemporaryDirectory(prefix="ci-runner-bench-") as tmp:
        root = Path(tmp)
        repo, _ = make_repo(root / "repo", files)
        home = root / "home"
        env = run_env(home)
        for i in range(ROUNDS):
            # A new commit that changes every input: the next run is a full, uncached one.
            for n in range(STEPS):
                (repo / f"src/part{n}/mod.py").write_text(f"X = {n}  # round {i}\n")
            git(repo, "commit", "-qam", f"round {i}")
            took, out = timed([*cli(), "run", "--json", "-C", str(repo)], env=env)
            assert all(not s["cached"] for s in json.loads(out)["steps"])
            fresh.append(took)
            took, out = timed([*cli(), "run", "--json", "-C", str(repo)], env=env)
            steps = json.loads(out)["steps"]
            assert len(steps) == STEPS and all(s["cached"] for s in steps), steps
            cached.append(took)
            bare.append(timed([PY, "-c", "pass"])[0])
    c, f, b = median(cached), median(fresh), median(bare)
    print_table(
        f"fully cached run: {STEPS} steps with inputs=, `ci-runner run --json`, "
        f"{ROUNDS} interleaved rounds, medians",
        [
            Row("fully cached run, end to end", ms(c), f"{ms(f)} uncached",
                f"{c / f:.2f}x", f"<= {GOAL_S * 1000:.0f} ms", verdict(c <= GOAL_S)),
            Row("  per cached step (incl. start-up)", ms(c / STEPS), "-", "-", "-", "info"),
            Row("ref: python -c pass", ms(b), "-", f"{c / b:.1f}x of it", "-", "info"),
        ],
        notes=[
            "each step sleeps 0.2 s when it really runs; cached, it is not run at all",
            "every round commits a change to all inputs first, so the uncached run is real",
        ],
    )


if __name__ == "__main__":
    main()
