"""Worktree fork time: `ci_runner.workspace.fork` against the git commands it could be.

Ours: `fork(repo, sha, dest)` (one `git worktree add --detach` as a subprocess,
with the user's hooks switched off). Peers, on the same 500-file repo, interleaved
with ours in rotating order: a bare `git worktree add --detach <dest> <sha>` from
subprocess.run, and a plain local `git clone` (hard-links objects, then checks out).
Each checkout is removed again outside the timed part.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import Row, git, make_repo, median, ms, print_table, verdict

from ci_runner.workspace import fork, open_repo

ROUNDS = 15
FILES = 500
GOAL_RATIO = 1.1


def repo_files() -> dict[str, str]:
    # A plausible source tree: 25 folders, files of a few hundred bytes to a few KB.
    return {f"pkg{i % 25}/mod{i}.py": f"# module {i}\n" + "x = 1\n" * (20 + i % 300)
            for i in range(FILES)}


def timed(action: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    action()
    return time.perf_counter() - t0


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="ci-runner-bench-") as tmp:
        root = Path(tmp)
        repo_path, sha = make_repo(root / "repo", repo_files())
        repo = open_repo(repo_path)
        dest = root / "checkouts"

        def ours(target: Path) -> None:
            fork(repo, sha, target)

        def worktree_add(target: Path) -> None:
            subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(target), sha],
                           cwd=repo_path, check=True)

        def clone(target: Path) -> None:
            subprocess.run(["git", "clone", "--quiet", str(repo_path), str(target)], check=True)

        def cleanup(target: Path, *, is_worktree: bool) -> None:
            if is_worktree:
                git(repo_path, "worktree", "remove", "--force", str(target))
            else:
                shutil.rmtree(target)

        sides: list[tuple[str, Callable[[Path], None], bool]] = [
            ("ours", ours, True), ("worktree", worktree_add, True), ("clone", clone, False)]
        times: dict[str, list[float]] = {name: [] for name, _, _ in sides}
        for r in range(-1, ROUNDS):  # round -1 warms the page cache and is dropped
            for name, action, is_worktree in sides[r % 3:] + sides[:r % 3]:
                target = dest / f"{name}-{r + 1}"
                took = timed(lambda action=action, target=target: action(target))
                if r >= 0:
                    times[name].append(took)
                cleanup(target, is_worktree=is_worktree)
        git(repo_path, "worktree", "prune")

    o, w, c = (median(times[k]) for k in ("ours", "worktree", "clone"))
    # Ratios are paired within each round, then the median: the disk's speed drifts.
    vs_w = median([a / b for a, b in zip(times["ours"], times["worktree"], strict=True)])
    vs_c = median([a / b for a, b in zip(times["ours"], times["clone"], strict=True)])
    print_table(f"fork: {FILES}-file repo, {ROUNDS} interleaved rounds, medians", [
        Row("fork vs git worktree add", ms(o), ms(w), f"{vs_w:.2f}x", "<= 1.10x",
            verdict(vs_w <= GOAL_RATIO)),
        Row("fork vs git clone (local)", ms(o), ms(c), f"{vs_c:.2f}x", "-", "info"),
    ], [
        "ratio = median of the per-round ratios (ours / peer in the same round)",
        "ours = ci_runner.workspace.fork (subprocess -> git worktree add --detach,"
        " core.hooksPath=/dev/null)",
        "peers run from subprocess.run; the checkout is removed after each, untimed",
    ])


if __name__ == "__main__":
    main()
