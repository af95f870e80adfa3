"""Output throughput and memory of a light step that prints 100 MB, in one line and in
many lines, through the real CLI, next to the same command writing into a file.

Ours: `ci-runner run --sandbox off --json` in a temp repo whose pipeline runs one
`step.run("out", CMD)`; CMD is cheap shell (`head -c N /dev/zero | tr` for one line
without a newline, `yes | head -c N` for 80-byte lines), so what is measured is
ci-runner's output path: the pipe read, UTF-8 decoding, masking (two secrets given to
the step, so the masker works), the step log, the live view's events sent to the
pipeline process and back, and the output tail. Peer: `sh -c 'CMD > FILE'` in a
subprocess: the same bytes written to a file with nothing in between (`cat` into a
file, without the extra pipe). An empty step (`true`) gives ci-runner's start-up, so
the table also shows the throughput net of it.

The step log is capped at 64 MiB (as shipped): of the 100 MB, the log keeps the first
64 MiB and a marker line, and the rest is dropped (the step's result keeps the last
lines). Every run is checked for that.

Memory, two figures, because neither alone is the whole story:
  max RSS   `ru_maxrss` from `os.wait4` on the `ci-runner run` process: the largest
            resident set of any single process in its tree (the CLI, the forked
            pipeline process, the step's shell and tools), once they are all waited
            for. Exact, free to measure, taken in every round.
  tree RSS  the sum of the resident sets of the whole tree, sampled from /proc every
            20 ms in one extra run per case (sampling costs CPU, so not in the timed
            rounds); a peak between samples can be missed.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import Row, cli, make_repo, median, print_table, run_env, verdict

SIZE = 100_000_000
ROUNDS = 5
LOG_CAP = 64 * 1024 * 1024
ONE_LINE = f"head -c {SIZE} /dev/zero | tr '\\0' x"
MANY_LINES = f"yes {'0' * 79} | head -c {SIZE}"
SECRETS = "TOKEN: ghp_0123456789abcdefABCDEF0123456789\nPASSWORD: correct-horse-battery\n"
GOAL_LINE_RATIO = 1.5  # one line costs about what many lines cost: linear, whatever the lines
GOAL_MEMORY_RATIO = 1.5  # 100 MB of output takes about the memory of an empty step

PIPELINE = '''\
from ci_runner import Pipeline


class CI(Pipeline):
    async def run(self, event, step):
        return await step.run("out", event.payload["cmd"], secrets=["TOKEN", "PASSWORD"])
'''


class Measured:
    def __init__(self, wall: float, max_rss_kb: int) -> None:
        self.wall = wall
        self.max_rss_kb = max_rss_kb


def spawn(argv: list[str], env: dict[str, str], sample: bool = False) -> tuple[Measured, int,
                                                                              str, str]:
    """Run ``argv``; its wall time, max RSS (wait4), tree RSS peak (kB, when sampled),
    stdout and stderr."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL)
        peak = [0]
        stop = threading.Event()
        sampler = threading.Thread(target=_sample_tree, args=(proc.pid, peak, stop))
        if sample:
            sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        stop.set()
        if sample:
            sampler.join()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"{argv[:3]}... failed ({proc.returncode}):\n{stderr[-2000:]}")
    return Measured(wall, usage.ru_maxrss), peak[0], stdout, stderr


def _sample_tree(root: int, peak: list[int], stop: threading.Event) -> None:
    page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
    while not stop.is_set():
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
        total, todo = 0, [root]
        while todo:
            pid = todo.pop()
            todo += children.get(pid, [])
            try:
                total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page_kb
            except (OSError, IndexError, ValueError):
                continue
        peak[0] = max(peak[0], total)
        stop.wait(0.02)


def ours(repo: Path, home: Path, secrets: Path, cmd: str, *, sample: bool = False,
         ) -> tuple[Measured, int]:
    argv = [*cli(), "run", "--sandbox", "off", "--json", "-C", str(repo),
            "--secrets-file", str(secrets), "-p", f"cmd={cmd}"]
    measured, tree, stdout, _ = spawn(argv, run_env(home), sample)
    check(home, json.loads(stdout), cmd)
    return measured, tree


def ours_plain(repo: Path, home: Path, secrets: Path, cmd: str) -> tuple[Measured, int]:
    """The same run with plain output (no --json) into a file: every line of the step
    goes through the plain view, prefixed, as `ci-runner run | tee` would see it. The
    output is checked in the file, never read into this process (a fork of a big
    process would inflate the next runs' max RSS)."""
    argv = [*cli(), "run", "--sandbox", "off", "-C", str(repo),
            "--secrets-file", str(secrets), "-p", f"cmd={cmd}"]
    with tempfile.NamedTemporaryFile() as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=run_env(home), stdout=out,
                                stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        size = Path(out.name).stat().st_size
        out.seek(max(0, size - 400))
        end = out.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0 or "complete in" not in end or size < SIZE:
        raise SystemExit(f"plain run: {size} bytes, ends {end!r}")
    return Measured(wall, usage.ru_maxrss), 0


def check(home: Path, record: dict[str, Any], cmd: str) -> None:
    """The run completed; a 100 MB step's log holds 64 MiB and the marker; its result
    has the output's end."""
    if record["status"] != "complete":
        raise SystemExit(f"run {record['run_id']} ended {record['status']}: {record['error']}")
    if cmd == "true":
        return
    log = home / "logs" / record["run_id"] / "out.log"
    size = log.stat().st_size
    with log.open("rb") as file:
        file.seek(LOG_CAP - 200)
        end = file.read().decode(errors="replace")
    if not LOG_CAP <= size < LOG_CAP + 1024 or "--- output truncated" not in end:
        raise SystemExit(f"{log}: {size} bytes, no cap or no marker")
    with sqlite3.connect(home / "ci-runner.db") as db:
        (result,) = db.execute("SELECT result FROM steps WHERE instance_id = ? AND name = 'out'",
                               (record["run_id"],)).fetchone()
    if not json.loads(result)["output_tail"].endswith(("x" * 100, "0" * 79)):
        raise SystemExit(f"run {record['run_id']}: the output tail lost the output's end")
    log.unlink()  # 64 MiB per run adds up


def peer(root: Path, cmd: str, *, sample: bool = False) -> tuple[Measured, int]:
    target = root / "peer.out"
    measured, tree, _, _ = spawn(["sh", "-c", f"{cmd} > {target}"], dict(os.environ), sample)
    if target.stat().st_size != SIZE:
        raise SystemExit(f"peer wrote {target.stat().st_size} bytes, not {SIZE}")
    target.unlink()
    return measured, tree


def mb_s(seconds: float) -> str:
    return f"{SIZE / 1e6 / seconds:,.0f} MB/s"


def sec(seconds: float) -> str:
    return f"{seconds:.2f} s"


def spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f} s"


def mib(kb: float) -> str:
    return f"{kb / 1024:.0f} MiB"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="ci-runner-bench-") as tmp:
        root = Path(tmp)
        repo, _ = make_repo(root / "repo", {".ci/pipeline.py": PIPELINE, "README": "bench\n"})
        home = root / "home"
        secrets = root / "secrets.yml"
        secrets.write_text(SECRETS)
        secrets.chmod(0o600)
        ours(repo, home, secrets, "true")  # warm-up: the database, the page cache

        sides: dict[str, Callable[[], tuple[Measured, int]]] = {
            "ours_line": lambda: ours(repo, home, secrets, ONE_LINE),
            "peer_line": lambda: peer(root, ONE_LINE),
            "ours_lines": lambda: ours(repo, home, secrets, MANY_LINES),
            "peer_lines": lambda: peer(root, MANY_LINES),
            "ours_empty": lambda: ours(repo, home, secrets, "true"),
            "plain_lines": lambda: ours_plain(repo, home, secrets, MANY_LINES),
        }
        names = list(sides)
        got: dict[str, list[Measured]] = {name: [] for name in names}
        for r in range(ROUNDS):
            # Rotate the order each round so no side always runs first.
            for name in names[r % len(names):] + names[:r % len(names)]:
                got[name].append(sides[name]()[0])
            print(f"  round {r + 1}/{ROUNDS}: " + ", ".join(
                f"{name} {got[name][-1].wall:.2f}s/{mib(got[name][-1].max_rss_kb)}"
                for name in names), flush=True)
        tree = {
            "ours_line": ours(repo, home, secrets, ONE_LINE, sample=True)[1],
            "ours_lines": ours(repo, home, secrets, MANY_LINES, sample=True)[1],
            "ours_empty": ours(repo, home, secrets, "true", sample=True)[1],
        }

    wall = {name: median([m.wall for m in got[name]]) for name in names}
    rss = {name: median([float(m.max_rss_kb) for m in got[name]]) for name in names}
    start = wall["ours_empty"]
    spreads = {name: spread([m.wall for m in got[name]]) for name in names}
    rows: list[Row] = []
    for case, label in (("line", "one 100 MB line"), ("lines", "100 MB in 80-byte lines")):
        o, p = wall[f"ours_{case}"], wall[f"peer_{case}"]
        rows += [
            Row(f"{label}: wall (spread)", f"{sec(o)} ({spreads[f'ours_{case}']})",
                f"{sec(p)} ({spreads[f'peer_{case}']})", f"{o / p:.1f}x", "-", "info"),
            Row(f"{label}: throughput", f"{mb_s(o)}; {mb_s(o - start)} net of start-up",
                mb_s(p), f"{(o - start) / p:.1f}x net", "-", "info"),
            Row(f"{label}: max RSS (wait4)", mib(rss[f"ours_{case}"]), mib(rss[f"peer_{case}"]),
                f"{rss[f'ours_{case}'] / rss['ours_empty']:.2f}x empty step",
                f"<= {GOAL_MEMORY_RATIO}x empty",
                verdict(rss[f"ours_{case}"] <= GOAL_MEMORY_RATIO * rss["ours_empty"])),
            Row(f"{label}: tree RSS (sampled)", mib(tree[f"ours_{case}"]),
                mib(tree["ours_empty"]) + " empty",
                f"{tree[f'ours_{case}'] / tree['ours_empty']:.2f}x", "-", "info"),
        ]
    plain, json_lines = wall["plain_lines"] - start, wall["ours_lines"] - start
    rows += [
        Row("100 MB in lines, plain output: wall (spread)",
            f"{sec(wall['plain_lines'])} ({spreads['plain_lines']})",
            f"{sec(wall['ours_lines'])} --json", f"{json_lines / plain:.2f}x throughput net",
            ">= 0.5x --json", verdict(json_lines / plain >= 0.5)),
        Row("100 MB in lines, plain output vs the file", sec(wall["plain_lines"]),
            sec(wall["peer_lines"]) + " peer", f"{wall['plain_lines'] / wall['peer_lines']:.1f}x",
            "<= 4x (issue 16)", verdict(wall["plain_lines"] <= 4 * wall["peer_lines"])),
    ]
    line_ratio = (wall["ours_line"] - start) / (wall["ours_lines"] - start)
    rows += [
        Row("one line / many lines, net", sec(wall["ours_line"] - start),
            sec(wall["ours_lines"] - start), f"{line_ratio:.2f}x",
            f"<= {GOAL_LINE_RATIO}x", verdict(line_ratio <= GOAL_LINE_RATIO)),
        Row("empty step (start-up)", f"{sec(start)} ({spreads['ours_empty']})", "-", "-",
            "reference", "info"),
    ]
    print_table(f"output of a 100 MB light step via `ci-runner run --sandbox off --json`, "
                f"{ROUNDS} interleaved rounds, medians", rows, [
        f"one line: {ONE_LINE}",
        f"many lines: {MANY_LINES}",
        "peer = sh -c 'CMD > FILE' (the bytes into a file, nothing in between)",
        "ours: the step has 2 secrets (masking on); its log is capped at 64 MiB as shipped,"
        " so each run's log holds 64 MiB + a marker line and drops the last ~36 MB"
        " (checked every run, with the result's output tail)",
        "net of start-up = ours - the median empty step (`true`) of the same rounds",
        "max RSS = ru_maxrss of the ci-runner process tree from os.wait4: the largest single"
        " process; tree RSS = the sum over the tree, sampled every 20 ms in one extra run",
    ])


if __name__ == "__main__":
    main()
