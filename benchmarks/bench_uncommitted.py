"""`--include-uncommitted` on a big dirty tree, against the least git can do (issue 16).

The tree: 2,500 committed files, then 500 of them modified, 20 deleted and 2,000 new
untracked ones (plus ignored files), and in a second scenario also one 200 MB untracked
file of random bytes (nothing for zlib to gain).

Ours: ``ci_runner.workspace.snapshot_uncommitted(repo)``, what `ci-runner run
--include-uncommitted` calls (index copy, `git add --all` and `write-tree` into its own
store, `commit-tree`, the refs copied), on an empty store each round (emptied untimed),
as a first run meets it.
Floor: the user's index copied to a temporary file, then `git add -A` into it and `git
write-tree`, objects written to a fresh temporary object directory (the repository's
as alternates, so the peer also writes only what is new). A reference row starts the
temporary index empty instead (every file hashed again).
Whole runs, interleaved with the above: `ci-runner run --include-uncommitted --json`
and `ci-runner run --json` of the same repo (HEAD, clean), a pipeline of one `true` step;
their difference is what the snapshot costs a run, checkout of the dirty files included.
The user's .git is measured (files, bytes) before and after every snapshot and
snapshot run of ours (a clean run's fork leaves its lock file there, ours none).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import Row, cli, make_repo, median, print_table, run_env, spread, verdict

from ci_runner.workspace import open_repo, snapshot_uncommitted

GOAL_RATIO = 1.3
COMMITTED = 2_500
MODIFIED = 500
DELETED = 20
UNTRACKED = 2_000
BIG_BYTES = 200 * 1024 * 1024

PIPELINE = '''\
from ci_runner import Pipeline


class CI(Pipeline):
    async def run(self, event, step):
        await step.run("first", ["true"])
'''


def source(i: int, edit: str = "") -> str:
    # A plausible source file: a few hundred bytes to a few KB.
    return f"# module {i} {edit}\n" + "value = compute(1, 2, 3)\n" * (10 + i % 150)


def secs(value: float) -> str:
    return f"{value:.3f} s"


def git_dir_size(git_dir: Path) -> tuple[int, int]:
    files = [p for p in git_dir.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def timed(action: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    action()
    return time.perf_counter() - t0


def floor(repo: Path, scratch: Path, *, copy_index: bool) -> None:
    """git add -A into a temporary index, then git write-tree; new objects to a fresh dir."""
    shutil.rmtree(scratch, ignore_errors=True)
    (scratch / "objects").mkdir(parents=True)
    index = scratch / "index"
    if copy_index:
        shutil.copyfile(repo / ".git" / "index", index)
    env = {**os.environ, "GIT_INDEX_FILE": str(index),
           "GIT_OBJECT_DIRECTORY": str(scratch / "objects"),
           "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(repo / ".git" / "objects")}
    subprocess.run(["git", "add", "-A"], cwd=repo, env=env, check=True)
    subprocess.run(["git", "write-tree"], cwd=repo, env=env, check=True,
                   stdout=subprocess.DEVNULL)


def whole_run(repo: Path, home: Path, *extra: str) -> None:
    done = subprocess.run([*cli(), "run", "--json", "--sandbox", "off", *extra, "-C",
                           str(repo)], env=run_env(home), capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise SystemExit(f"ci-runner run failed ({done.returncode}):\n{done.stderr}")


def make_dirty(repo: Path, *, big: bool) -> None:
    for i in range(MODIFIED):
        (repo / f"pkg{i % 25}" / f"mod{i}.py").write_text(source(i, "edited"))
    for i in range(MODIFIED, MODIFIED + DELETED):
        (repo / f"pkg{i % 25}" / f"mod{i}.py").unlink()
    for i in range(UNTRACKED):
        path = repo / f"new{i % 40}" / f"file{i}.py"
        path.parent.mkdir(exist_ok=True)
        path.write_text(source(i, "untracked"))
    (repo / "build").mkdir()
    for i in range(200):
        (repo / "build" / f"obj{i}.o").write_text("ignored\n" * 50)
    if big:
        with (repo / "big.bin").open("wb") as out:
            for _ in range(BIG_BYTES // (8 << 20)):
                out.write(os.urandom(8 << 20))


def scenario(root: Path, name: str, *, big: bool, rounds: int) -> tuple[list[Row], list[str]]:
    files = {".ci/pipeline.py": PIPELINE, ".gitignore": "build/\n"}
    files |= {f"pkg{i % 25}/mod{i}.py": source(i) for i in range(COMMITTED)}
    repo_path, _ = make_repo(root / name, files)
    make_dirty(repo_path, big=big)
    # Refresh the user's index stat cache once, as any `git status` of theirs does.
    subprocess.run(["git", "status", "--porcelain"], cwd=repo_path, check=True,
                   stdout=subprocess.DEVNULL)
    repo = open_repo(repo_path)
    home = root / f"home-{name}"
    os.environ["CI_RUNNER_HOME"] = str(home)  # snapshot_uncommitted's store, in-process
    store_root = home / "snapshots"
    scratch = root / f"floor-{name}"
    grown = (0, 0)  # what the user's .git gained across every snapshot of ours

    sides: list[tuple[str, Callable[[], object], Callable[[], None]]] = [
        ("ours", lambda: snapshot_uncommitted(repo),
         lambda: shutil.rmtree(store_root, ignore_errors=True)),
        ("floor", lambda: floor(repo_path, scratch, copy_index=True), lambda: None),
        ("floor, empty index", lambda: floor(repo_path, scratch, copy_index=False),
         lambda: None),
        ("run, uncommitted", lambda: whole_run(repo_path, home, "--include-uncommitted"),
         lambda: shutil.rmtree(store_root, ignore_errors=True)),
        ("run, clean", lambda: whole_run(repo_path, home), lambda: None),
    ]
    times: dict[str, list[float]] = {n: [] for n, _, _ in sides}
    repeat: list[float] = []  # ours again with the store already holding the objects
    for r in range(-1, rounds):  # round -1 warms the page cache and is dropped
        for label, action, before in sides[r % len(sides):] + sides[:r % len(sides)]:
            before()
            git_before = git_dir_size(repo_path / ".git")
            took = timed(action)
            if r >= 0:
                times[label].append(took)
            if label in ("ours", "run, uncommitted"):
                git_after = git_dir_size(repo_path / ".git")
                grown = (grown[0] + git_after[0] - git_before[0],
                         grown[1] + git_after[1] - git_before[1])
        if r >= 0:
            snapshot_uncommitted(repo)  # untimed: now the store holds every object
            repeat.append(timed(lambda: snapshot_uncommitted(repo)))
    shutil.rmtree(scratch, ignore_errors=True)
    store_files, store_bytes = git_dir_size(store_root) if store_root.exists() else (0, 0)

    def paired(a: str, b: str) -> list[float]:
        return [x / y for x, y in zip(times[a], times[b], strict=True)]

    increments = [u - c for u, c in zip(times["run, uncommitted"], times["run, clean"],
                                        strict=True)]
    vs_floor = paired("ours", "floor")
    label = f"{name}:"
    rows = [
        Row(f"{label} snapshot vs floor", spread(times["ours"], secs),
            spread(times["floor"], secs), spread(vs_floor), f"<= {GOAL_RATIO}x",
            verdict(median(vs_floor) <= GOAL_RATIO)),
        Row(f"{label} snapshot vs floor from an empty index", spread(times["ours"], secs),
            spread(times["floor, empty index"], secs),
            spread(paired("ours", "floor, empty index")), "-", "info"),
        Row(f"{label} snapshot again (objects already stored)", spread(repeat, secs),
            spread(times["floor"], secs),
            spread([a / b for a, b in zip(repeat, times["floor"], strict=True)]), "-", "info"),
        Row(f"{label} whole run, uncommitted vs clean", spread(times["run, uncommitted"], secs),
            spread(times["run, clean"], secs), spread(paired("run, uncommitted", "run, clean")),
            "-", "info"),
        Row(f"{label} run's increment vs floor", spread(increments, secs),
            spread(times["floor"], secs),
            spread([i / f for i, f in zip(increments, times["floor"], strict=True)]), "-",
            "info"),
        Row(f"{label} user's .git growth", f"{grown[0]} files, {grown[1]} B", "0 B", "-",
            "0 B", verdict(grown == (0, 0))),
    ]
    notes = [f"{name}: ci-runner's store after {rounds} rounds: {store_files} files,"
             f" {store_bytes / 1e6:.1f} MB (pruned with the runs that name it)"]
    return rows, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-big", action="store_true", help="skip the 200 MB scenario")
    args = parser.parse_args()
    rows: list[Row] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ci-runner-bench-") as tmp:
        for name, big in (("dirty", False), ("dirty+200MB", True)):
            if big and args.no_big:
                continue
            got_rows, got_notes = scenario(Path(tmp), name, big=big, rounds=args.rounds)
            rows += got_rows
            notes += got_notes
    print_table(
        f"--include-uncommitted: {COMMITTED} committed files, {MODIFIED} modified,"
        f" {DELETED} deleted, {UNTRACKED} untracked; {args.rounds} interleaved rounds,"
        " median [min-max]", rows, [
            "ratios paired per round (ours / peer in the same round), then median [min-max]",
            "floor: cp .git/index tmp; GIT_INDEX_FILE=tmp git add -A; git write-tree (new"
            " objects into a fresh dir, the repo's objects as alternates)",
            "ours: snapshot_uncommitted (index copy, add --all + write-tree into its store,"
            " commit-tree, refs copied); its store emptied before each timed round",
            "whole runs: ci-runner run --json --sandbox off, one `true` step, end to end",
            *notes,
        ])


if __name__ == "__main__":
    main()
