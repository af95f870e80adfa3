"""Worktree fork time: `ci_runner.workspace.fork` against the git commands it could be,
as a curve over the repository's size and on a repository shaped like a real project.

Ours: `fork(repo, sha, dest)` (one `git worktree add --detach` as a subprocess, with
the user's hooks switched off). Peers, interleaved with ours in rotating order: a bare
`git worktree add --detach <dest> <sha>` from subprocess.run, and a plain local `git
clone` (hard-links objects, then checks out). Each checkout is removed again outside
the timed part; the first round of each size is a dropped warm-up.

Sizes: synthetic trees of N = 10, 100, 1,000 and 10,000 files (25 folders, files of a
few hundred bytes to a few KB), and a tree with the shape of ansible/ansible at
c9ac477e53a: its 5,053 paths in 2,330 folders, each file's size and mode, its 60
symlinks with their targets (`shapes/ansible.tsv.gz`, read from a real clone), with
generated content of those sizes.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import Row, git, make_repo, median, ms, print_table, spread, verdict

from ci_runner.workspace import fork, open_repo

ROUNDS = 7
SIZES = (10, 100, 1_000, 10_000)
GOAL_RATIO = 1.1
SHAPE = Path(__file__).resolve().parent / "shapes" / "ansible.tsv.gz"


def repo_files(n: int) -> dict[str, str]:
    # A plausible source tree: 25 folders, files of a few hundred bytes to a few KB.
    return {f"pkg{i % 25}/mod{i}.py": f"# module {i}\n" + "x = 1\n" * (20 + i % 300)
            for i in range(n)}


def shaped_repo(root: Path) -> tuple[Path, str, int]:
    """A repository with ansible's paths, sizes, modes and symlinks; generated content."""
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    count = 0
    with gzip.open(SHAPE, "rt", encoding="utf-8") as listing:
        for line in listing:
            if line.startswith("#"):
                continue
            mode, size, rel, *target = line.rstrip("\n").split("\t")
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            count += 1
            if mode == "120000":
                path.symlink_to(target[0])
                continue
            head = f"# {rel} {count}\n"
            body = (head + "value = compute(alpha, beta)  # filler\n" * (int(size) // 40 + 1))
            path.write_text(body[:int(size)] if int(size) >= len(head) else head)
            if mode == "100755":
                path.chmod(0o755)
    git(root, "add", "-A")
    git(root, "commit", "-q", "--no-gpg-sign", "-m", "shaped like ansible")
    return root, git(root, "rev-parse", "HEAD"), count


def timed(action: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    action()
    return time.perf_counter() - t0


def measure(repo_path: Path, sha: str, dest: Path, rounds: int) -> dict[str, list[float]]:
    repo = open_repo(repo_path)

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
    for r in range(-1, rounds):  # round -1 warms the page cache and is dropped
        for name, action, is_worktree in sides[r % 3:] + sides[:r % 3]:
            target = dest / f"{name}-{r + 1}"
            took = timed(lambda action=action, target=target: action(target))
            if r >= 0:
                times[name].append(took)
            cleanup(target, is_worktree=is_worktree)
    git(repo_path, "worktree", "prune")
    return times


def rows_for(label: str, times: dict[str, list[float]]) -> list[Row]:
    # Ratios are paired within each round: the disk's speed drifts.
    vs_w = [a / b for a, b in zip(times["ours"], times["worktree"], strict=True)]
    vs_c = [a / b for a, b in zip(times["ours"], times["clone"], strict=True)]
    return [
        Row(f"{label}: fork vs git worktree add", spread(times["ours"], ms),
            spread(times["worktree"], ms), spread(vs_w), f"<= {GOAL_RATIO}x",
            verdict(median(vs_w) <= GOAL_RATIO)),
        Row(f"{label}: fork vs git clone (local)", spread(times["ours"], ms),
            spread(times["clone"], ms), spread(vs_c), "-", "info"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)),
                        help="comma-separated file counts (default: %(default)s)")
    parser.add_argument("--no-shaped", action="store_true", help="skip the ansible-shaped repo")
    args = parser.parse_args()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="ci-runner-bench-") as tmp:
        root = Path(tmp)
        for n in (int(s) for s in args.sizes.split(",") if s):
            repo_path, sha = make_repo(root / f"repo{n}", repo_files(n))
            rows += rows_for(f"{n:,} files", measure(repo_path, sha, root / f"co{n}",
                                                     args.rounds))
            shutil.rmtree(repo_path)
        if not args.no_shaped:
            repo_path, sha, count = shaped_repo(root / "shaped")
            rows += rows_for(f"ansible-shaped ({count:,} files)",
                             measure(repo_path, sha, root / "co-shaped", args.rounds))
    print_table(f"fork: a curve over repository size, {args.rounds} interleaved rounds each,"
                " median [min-max]", rows, [
        "ratio = per-round ratios (ours / peer in the same round), median [min-max]",
        "ours = ci_runner.workspace.fork (subprocess -> git worktree add --detach,"
        " core.hooksPath=/dev/null)",
        "peers run from subprocess.run; the checkout is removed after each, untimed",
        "ansible-shaped: the paths, sizes, modes and symlinks of ansible/ansible"
        " c9ac477e53a (5,053 files in 2,330 folders), generated content",
    ])


if __name__ == "__main__":
    main()
