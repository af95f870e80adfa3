"""A fully cached run against the same run uncached, over repo sizes (issue 16).

A 10-step pipeline whose steps each read a tenth of the repo's files
(`cat src/partI/* > /dev/null`, declaring `inputs=["src/partI/**"]`), run end to end
through the real CLI (`ci-runner run --json`) on repos of N = 10, 100, 1,000, 2,000
and 10,000 files. Ours: the run on an unchanged tree, every step a cache hit. Peer:
the same run with `--no-cache` (the same steps, really run, on the same commit). Both
sides of every size are measured in each of `--rounds` rounds (5 by default), sizes
and sides in rotating order; medians with the spread (min-max) of the rounds.

Goals: a fully cached run does no checkout, so its time does not grow with the repo:
on 2,000 files within 1.2x of the same pipeline on 10 files (the ratio taken per
round, paired), and at most 300 ms end to end. References: `git worktree add` of each
repo (the checkout an eager fork pays) and `python -c pass`.

Runs use the default sandbox (auto: bubblewrap here); CI_RUNNER_SANDBOX=off measures
the unsandboxed run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from _common import PY, ROOT, Row, cli, git, make_repo, median, ms, print_table, run_env, verdict

STEPS = 10
GOAL_S = 0.300
GOAL_RATIO = 1.2
SIZES = (10, 100, 1000, 2000, 10000)

PIPELINE = f'''\
from ci_runner import Pipeline


class CI(Pipeline):
    async def run(self, event, step):
        for i in range({STEPS}):
            await step.run(f"step{{i}}", ["sh", "-c", f"cat src/part{{i}}/* > /dev/null"],
                           inputs=[f"src/part{{i}}/**"])
'''


def timed(cmd: list[str], **kw: object) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]
    took = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr}")
    return took, done.stdout


def spread(values: list[float]) -> str:
    return f"{ms(median(values))} ({min(values) * 1000:.0f}-{max(values) * 1000:.0f})"


def repo_files(n: int) -> dict[str, str]:
    files = {".ci/pipeline.py": PIPELINE}
    files.update({f"src/part{i % STEPS}/f{i}.txt": f"line {i}\n" * 20 for i in range(n)})
    return files


def run_once(repo: Path, env: dict[str, str], *, cached: bool) -> float:
    extra = [] if cached else ["--no-cache"]
    took, out = timed([*cli(), "run", "--json", *extra, "-C", str(repo)], env=env)
    steps = json.loads(out)["steps"]
    hits = [bool(s["cached"]) for s in steps]
    if len(steps) != STEPS or hits != [cached] * STEPS:
        raise SystemExit(f"expected {STEPS} steps all {'cached' if cached else 'run'}: {hits}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)),
                        help="repo sizes in files, comma-separated (must include 10 and 2000"
                             " for the goal rows)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    cached: dict[int, list[float]] = {n: [] for n in sizes}
    fresh: dict[int, list[float]] = {n: [] for n in sizes}
    checkout: dict[int, list[float]] = {n: [] for n in sizes}
    bare: list[float] = []
    with tempfile.TemporaryDirectory(prefix="ci-runner-bench-") as tmp:
        root = Path(tmp)
        # This checkout's ci_runner, not whichever one `ci-runner` was installed from.
        env = {**run_env(root / "home"), "PYTHONPATH": str(ROOT)}
        repos = {n: make_repo(root / f"repo{n}", repo_files(n))[0] for n in sizes}
        for n in sizes:  # the cache's entries, and every first-time cost, out of the way
            timed([*cli(), "run", "--json", "-C", str(repos[n])], env=env)  # fills the cache
            run_once(repos[n], env, cached=True)
            run_once(repos[n], env, cached=False)
        for r in range(args.rounds):
            order = sizes[r % len(sizes):] + sizes[:r % len(sizes)]
            for n in order:
                sides = [True, False] if (r + n) % 2 == 0 else [False, True]
                for side in sides:
                    (cached if side else fresh)[n].append(run_once(repos[n], env,
                                                                   cached=side))
                target = root / f"peer{n}-{r}"
                t0 = time.perf_counter()
                git(repos[n], "worktree", "add", "--detach", "--quiet", str(target), "HEAD")
                checkout[n].append(time.perf_counter() - t0)
                git(repos[n], "worktree", "remove", "--force", str(target))
            bare.append(timed([PY, "-c", "pass"])[0])
    rows: list[Row] = []
    for n in sizes:
        c, f = cached[n], fresh[n]
        rows.append(Row(f"N={n}: fully cached run (uncached peer)", spread(c), spread(f),
                        f"{median(c) / median(f):.2f}x", "", "info"))
    for n in sizes:
        rows.append(Row(f"N={n}: ref `git worktree add`", spread(checkout[n]), "", "", "",
                        "info"))
    if 10 in sizes and 2000 in sizes:
        paired = [big / small for big, small in zip(cached[2000], cached[10], strict=True)]
        ratio = median(paired)
        rows.insert(0, Row("cached run, N=2000 vs N=10 (paired per round)",
                           ms(median(cached[2000])), ms(median(cached[10])),
                           f"{ratio:.2f}x ({min(paired):.2f}-{max(paired):.2f})",
                           f"<= {GOAL_RATIO}x", verdict(ratio <= GOAL_RATIO)))
        rows.insert(1, Row("cached run, N=2000, end to end", spread(cached[2000]), "-", "-",
                           f"<= {GOAL_S * 1000:.0f} ms",
                           verdict(median(cached[2000]) <= GOAL_S)))
    if 10000 in sizes and 10 in sizes:
        paired = [big / small for big, small in zip(cached[10000], cached[10], strict=True)]
        rows.insert(2, Row("cached run, N=10000 vs N=10 (paired per round)",
                           ms(median(cached[10000])), ms(median(cached[10])),
                           f"{median(paired):.2f}x", "", "info"))
    rows.append(Row("ref: python -c pass", spread(bare), "-", "-", "-", "info"))
    print_table(
        f"fully cached run over repo sizes: {STEPS} steps with inputs=, `ci-runner run"
        f" --json`, {args.rounds} interleaved rounds, medians (min-max, ms)",
        rows,
        notes=[
            "each step reads its tenth of the files (`cat src/partI/*`); the peer is the same"
            " run with --no-cache on the same commit: the same steps, really run",
            "a cached run's worktree holds only .ci/ (the rest is checked out when a step"
            " needs it, which none does)",
            f"sandbox: {os.environ.get('CI_RUNNER_SANDBOX', 'auto')}",
        ],
    )


if __name__ == "__main__":
    main()
