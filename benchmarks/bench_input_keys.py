"""What a step's input key costs on big repos: one tree listing per run, then each
pattern set matched once, so later steps' keys are a look-up.

Sides, interleaved in every round (the order rotates), at each repo size:
  listing     TreeIndex(repo, sha): one `git ls-tree -r` of the commit, parsed (per run).
  first key   input_key() for inputs=["**/*.py"] on a fresh index: the match, its digest.
  next key    input_key() again with the same patterns and other material (another
              step of the run): what every later step pays.
  rescan      the peer, what each step paid before: match every path again in Python,
              then hash the whole (path, blob) list into the key.

Goal (issue 16): after the run's first, <= 1 ms per step on a 20,000-file repo.
"""

from __future__ import annotations

import json
import tempfile
import time
from hashlib import sha256
from pathlib import Path

from _common import Row, git, median, ms, print_table, verdict

from ci_runner.workspace.inputs import TreeIndex, _matches, _parts, input_key

SIZES = (2_000, 6_000, 20_000)
ROUNDS = 5
NEXT_STEPS = 200  # keys per "next key" sample: one figure per key
GOAL_S = 0.001
PATTERNS = ["**/*.py"]


def make_big_repo(root: Path, files: int) -> tuple[Path, str]:
    """A repo shaped like a Python project: packages of 20 files, 3 of 4 of them .py."""
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    for i in range(files):
        folder = root / "src" / f"pkg{i // 400}" / f"mod{(i // 20) % 20}"
        folder.mkdir(parents=True, exist_ok=True)
        suffix = ".txt" if i % 4 == 3 else ".py"
        (folder / f"f{i}{suffix}").write_text(f"# {i}\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "--no-gpg-sign", "-m", "big")
    return root, git(root, "rev-parse", "HEAD")


def rescan_key(index: TreeIndex, material: dict[str, object]) -> str:
    compiled = [_parts(p) for p in PATTERNS]
    blobs = sorted((path, blob) for path, blob in index.blobs.items()
                   if any(_matches(parts, path.split("/")) for parts in compiled))
    text = json.dumps({"v": 1, "inputs": PATTERNS, "blobs": blobs, **material},
                      sort_keys=True, default=str)
    return sha256(text.encode()).hexdigest()


def first_key(index: TreeIndex) -> float:
    """The first key of a pattern set on a fresh index (its listing not counted)."""
    return timed(lambda: input_key(index, PATTERNS, {"cmd": "x"}))


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="ci-runner-bench-") as tmp:
        for size in SIZES:
            repo, sha = make_big_repo(Path(tmp) / f"r{size}", size)
            got: dict[str, list[float]] = {k: [] for k in ("listing", "first", "next", "rescan")}
            held = TreeIndex(repo, sha)

            def nxt(index: TreeIndex = held) -> float:
                input_key(index, PATTERNS, {"cmd": "warm"})
                t0 = time.perf_counter()
                for i in range(NEXT_STEPS):
                    input_key(index, PATTERNS, {"cmd": f"step {i}"})
                return (time.perf_counter() - t0) / NEXT_STEPS

            sides = {
                "listing": lambda r=repo, s=sha: timed(lambda: TreeIndex(r, s)),
                "first": lambda r=repo, s=sha: first_key(TreeIndex(r, s)),
                "next": nxt,
                "rescan": lambda idx=held: timed(lambda: rescan_key(idx, {"cmd": "x"})),
            }
            names = list(sides)
            for r in range(ROUNDS):
                for name in names[r % len(names):] + names[:r % len(names)]:
                    got[name].append(sides[name]())
            m = {k: median(v) for k, v in got.items()}
            spread = {k: f"{ms(min(v))}..{ms(max(v))}" for k, v in got.items()}
            print(f"  {size} files: listing {ms(m['listing'])} ({spread['listing']}), first key"
                  f" {ms(m['first'])} ({spread['first']}), next key {ms(m['next'])}"
                  f" ({spread['next']}), rescan {ms(m['rescan'])} ({spread['rescan']})",
                  flush=True)
            rows.append(Row(f"next key, {size} files", ms(m["next"]),
                            ms(m["rescan"]) + " rescan", f"{m['next'] / m['rescan']:.3f}x",
                            "<= 1 ms" if size == SIZES[-1] else "curve",
                            verdict(m["next"] <= GOAL_S) if size == SIZES[-1] else "info"))
            rows.append(Row(f"first key, {size} files", ms(m["first"]),
                            ms(m["rescan"]) + " rescan", f"{m['first'] / m['rescan']:.2f}x",
                            "once per pattern set", "info"))
            rows.append(Row(f"listing, {size} files", ms(m["listing"]), "-", "-",
                            "once per run", "info"))
    print_table("input keys (medians of 5 interleaved rounds; spreads above)", rows)


if __name__ == "__main__":
    main()
