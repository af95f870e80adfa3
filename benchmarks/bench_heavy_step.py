"""Heavy-step overhead: a step with `image=` against a bare `docker run --rm` of the same
image and command.

(a) The executor alone, in this process: `ContainerExecutor(image).run(CommandSpec(["true"]))`,
    a fresh executor per command as `step.run` makes one per step (so each connects to the
    engine, checks the image, creates, starts, streams, waits and removes). Peers: `docker
    run --rm IMAGE true` through the docker CLI, and the docker SDK's
    `containers.run(IMAGE, ["true"], remove=True)` with one long-lived client.
    References: `docker run --rm --network none IMAGE true` (as isolated as a heavy step,
    which has no network unless asked), and the same SDK calls the executor makes with its
    hardened options (no network, caps dropped, read-only root, tmpfs, limits, --init,
    worktree bind mount, log stream), which splits what Docker charges for that
    configuration from the executor's own bookkeeping.
(b) A real run: `ci-runner run --json` in a temp git repo whose pipeline runs N sequential
    `step.run(f"s{i}", ["true"], image=IMAGE)`. Ours per step is measured like
    bench_light_step.py: in-run (the pipeline's perf_counter around its loop) and wall diff
    ((wall(N steps) - wall(0 steps)) / N); the journal's median step duration
    (steps.finished_at - started_at) is printed too. Peer: the same N `docker run --rm
    IMAGE true` through the CLI, one after another; the same loop with `--network none`
    is a reference.
(c) The first heavy step of a run against the next ones: runs of 3 sequential heavy steps,
    each timed by the pipeline itself (perf_counter around its `await step.run`); the
    first step's time over the median of the other two, per run. The first step pays
    whatever a run sets up once for Docker (the SDK's import, the connection, the
    engine's facts) unless that was done before it, in the background.
(d) A whole one-heavy-step run: the wall time of `ci-runner run --json` of a pipeline
    with one `step.run("s0", ["true"], image=IMAGE)`, from spawn to exit, against `docker
    run --rm IMAGE true` (and `--network none`) through the CLI. Beside it, to say where
    the time goes: the same run with no step (what a run costs before any step: start-up,
    worktree, journal, sandboxed pipeline process) and the one step's increment over it.

The image is ci-runner's busybox (`ci_runner.images.build("busybox")` makes it offline
in under a second when missing); the `python` sandbox image is measured too when present.
Every side runs interleaved, rotating who goes first; ratios are paired per round, then
the median.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import Row, cli, make_repo, median, ms, print_table, run_env, verdict

N = 8
ROUNDS_EXECUTOR = 8
ROUNDS_RUN = 5
ROUNDS_FIRST = 7
FIRST_OF = 3
GOAL_RATIO = 1.2
GOAL_FIRST = 1.1
BENCH_LABEL = "ci-runner.bench"

PIPELINE = '''\
import time

from ci_runner import Pipeline


class CI(Pipeline):
    async def run(self, event, step):
        n = int(event.payload.get("n", 0))
        image = event.payload.get("image", "busybox")
        if event.payload.get("light_first"):
            await step.run("light", ["true"])
        steps_s = []
        t0 = time.perf_counter()
        for i in range(n):
            t1 = time.perf_counter()
            await step.run(f"s{i}", ["true"], image=image)
            steps_s.append(time.perf_counter() - t1)
        return {"loop_s": time.perf_counter() - t0, "steps_s": steps_s}
'''


def paired_ratio(ours: list[float], peer: list[float]) -> float:
    return median(ratios(ours, peer))


def ratios(ours: list[float], peer: list[float]) -> list[float]:
    return [o / p for o, p in zip(ours, peer, strict=True)]


def spread(values: list[float]) -> str:
    return f"{min(values):.2f}..{max(values):.2f}"


def goal_row(figure: str, ours: list[float], peer: list[float], peer_name: str) -> Row:
    ratio = paired_ratio(ours, peer)
    return Row(figure, ms(median(ours)), f"{ms(median(peer))} {peer_name}", f"{ratio:.2f}x",
               f"<= {GOAL_RATIO}x", verdict(ratio <= GOAL_RATIO))


def info_row(figure: str, ours: list[float], peer: list[float] | None = None,
             peer_name: str = "") -> Row:
    if peer is None:
        return Row(figure, ms(median(ours)), "-", "-", "-", "info")
    return Row(figure, ms(median(ours)), f"{ms(median(peer))} {peer_name}",
               f"{paired_ratio(ours, peer):.2f}x", "-", "info")


# -- the sides -------------------------------------------------------------------------


class Sides:
    """Everything measured, sharing one event loop (the executor's worker threads
    persist, as in a pipeline process) and one SDK client (for the peers)."""

    def __init__(self, workspace: Path, token: str) -> None:
        import docker

        self.workspace = workspace
        self.token = token
        self.loop = asyncio.new_event_loop()
        self.client = docker.from_env()
        self.cpus = min(2.0, float(self.client.info().get("NCPU") or 1))

    def executor(self, image: str) -> tuple[float, float, float, float]:
        """(total, until created, start -> exit, removal and the rest), seconds."""
        from ci_runner.executors import CommandSpec, ContainerExecutor

        async def once() -> tuple[float, float, float, float]:
            created: list[float] = []
            ex = ContainerExecutor(image, workspace=self.workspace,
                                   labels={BENCH_LABEL: self.token})
            t0 = time.perf_counter()
            result = await ex.run(CommandSpec(["true"], cwd=self.workspace), lambda _t: None,
                                  on_start=lambda _info: created.append(time.perf_counter()))
            total = time.perf_counter() - t0
            if result.exit_code != 0:
                raise SystemExit(f"executor: `true` in {image} exited {result.exit_code}:"
                                 f" {result.output_tail}")
            until = created[0] - t0
            return total, until, result.duration_s, total - until - result.duration_s

        return self.loop.run_until_complete(once())

    def docker_cli(self, reference: str, *options: str) -> float:
        t0 = time.perf_counter()
        subprocess.run(["docker", "run", "--rm", *options, reference, "true"], check=True,
                       capture_output=True)
        return time.perf_counter() - t0

    def sdk(self, reference: str) -> float:
        t0 = time.perf_counter()
        self.client.containers.run(reference, ["true"], remove=True)
        return time.perf_counter() - t0

    def sdk_hardened(self, reference: str) -> float:
        """The executor's calls and options (ci_runner/executors/container.py), bare."""
        from docker.types import Mount

        t0 = time.perf_counter()
        container = self.client.containers.create(
            reference, entrypoint=["/bin/sh", "-c", 'exec "$@" 2>&1', "sh"], command=["true"],
            environment={"HOME": "/tmp", "CI": "true"}, working_dir="/workspace",
            user=f"{os.getuid()}:{os.getgid()}",
            mounts=[Mount("/workspace", str(self.workspace), type="bind")],
            network_mode="none", labels={BENCH_LABEL: self.token},
            cap_drop=["ALL"], security_opt=["no-new-privileges:true"], privileged=False,
            read_only=True, tmpfs={"/tmp": "rw,exec,nosuid,nodev,mode=1777"},
            pids_limit=512, mem_limit="2g", nano_cpus=int(self.cpus * 1e9), init=True,
            log_config={"Type": "json-file", "Config": {}},
        )
        container.start()
        for _chunk in container.logs(stream=True, follow=True, stdout=True, stderr=True):
            pass
        code = container.wait()["StatusCode"]
        container.remove(force=True, v=True)
        if code != 0:
            raise SystemExit(f"hardened SDK side: `true` in {reference} exited {code}")
        return time.perf_counter() - t0

    def close(self) -> None:
        self.loop.close()
        self.client.close()


def cli_run(repo: Path, home: Path, n: int, image: str) -> tuple[float, float, float, str]:
    """One real `ci-runner run`: (wall, the pipeline's loop, journal median step, run id)."""
    wall, output, step_s, run_id = cli_run_output(repo, home, n, image)
    return wall, float(output["loop_s"]), step_s, run_id


def cli_run_output(repo: Path, home: Path, n: int, image: str,
                   *params: str) -> tuple[float, dict[str, Any], float, str]:
    """One real `ci-runner run`: (wall, the pipeline's output, journal median step, run id)."""
    t0 = time.perf_counter()
    done = subprocess.run([*cli(), "run", "--json", "-C", str(repo), "-p", f"n={n}",
                           "-p", f"image={image}", *(x for p in params for x in ("-p", p))],
                          env=run_env(home), capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"ci-runner run failed ({done.returncode}):\n{done.stderr}")
    run_id = json.loads(done.stdout)["run_id"]
    with sqlite3.connect(home / "ci-runner.db") as db:
        (output,) = db.execute("SELECT output FROM instances WHERE id = ?", (run_id,)).fetchone()
        steps = [f - s for s, f in db.execute(
            "SELECT started_at, finished_at FROM steps WHERE instance_id = ? AND kind = 'run'",
            (run_id,))]
    return wall, json.loads(output), median(steps) if steps else 0.0, run_id


def loop_of(n: int, one: Callable[[], float]) -> float:
    """Seconds per command of ``n`` commands run one after another."""
    t0 = time.perf_counter()
    for _ in range(n):
        one()
    return (time.perf_counter() - t0) / n


# -- the two parts ---------------------------------------------------------------------


def part_executor(sides: Sides, image: str, reference: str) -> list[Row]:
    ours: list[tuple[float, float, float, float]] = []
    bare_cli: list[float] = []
    bare_sdk: list[float] = []
    isolated: list[float] = []
    hardened: list[float] = []
    order: list[Callable[[], Any]] = [
        lambda: ours.append(sides.executor(image)),
        lambda: bare_cli.append(sides.docker_cli(reference)),
        lambda: bare_sdk.append(sides.sdk(reference)),
        lambda: isolated.append(sides.docker_cli(reference, "--network", "none")),
        lambda: hardened.append(sides.sdk_hardened(reference)),
    ]
    for side in order:  # warm-up round, dropped
        side()
    for kept in (ours, bare_cli, bare_sdk, isolated, hardened):
        kept.clear()
    for r in range(ROUNDS_EXECUTOR):
        for side in order[r % 5:] + order[:r % 5]:
            side()
        print(f"  [{image}] executor round {r + 1}/{ROUNDS_EXECUTOR}: executor"
              f" {ms(ours[-1][0])}, docker run {ms(bare_cli[-1])}, SDK {ms(bare_sdk[-1])},"
              f" --network none {ms(isolated[-1])}, SDK hardened {ms(hardened[-1])}",
              flush=True)
    total = [o[0] for o in ours]
    return [
        goal_row(f"[{image}] (a) executor vs docker CLI", total, bare_cli, "docker run --rm"),
        goal_row(f"[{image}] (a) executor vs docker SDK", total, bare_sdk, "SDK run(remove)"),
        info_row("    connect + image check + create", [o[1] for o in ours]),
        info_row("    start -> exit (duration_s)", [o[2] for o in ours]),
        info_row("    removal and the rest", [o[3] for o in ours]),
        info_row("  ref: executor vs an isolated docker run", total, isolated,
                 "--network none"),
        info_row("  ref: SDK, executor's calls + options", hardened, bare_sdk,
                 "SDK run(remove)"),
        info_row("  ref: executor vs that reference", total, hardened, "SDK hardened"),
    ]


def part_run(sides: Sides, root: Path, image: str, reference: str,
             run_ids: list[str]) -> list[Row]:
    repo, _ = make_repo(root / f"repo-{image}",
                        {".ci/pipeline.py": PIPELINE, "README": "bench\n"})
    home = root / "home"
    run_ids.append(cli_run(repo, home, 1, image)[3])  # warm-up: database, page cache
    in_run, diff, journal, bare_cli, isolated = [], [], [], [], []
    order: dict[str, Callable[[], Any]] = {
        "cli_n": lambda: cli_run(repo, home, N, image),
        "cli_0": lambda: cli_run(repo, home, 0, image),
        "docker": lambda: loop_of(N, lambda: sides.docker_cli(reference)),
        "none": lambda: loop_of(N, lambda: sides.docker_cli(reference, "--network", "none")),
    }
    names = list(order)
    for r in range(ROUNDS_RUN):
        results = {name: order[name]() for name in names[r % 4:] + names[:r % 4]}
        (wall_n, loop_s, step_s, id_n), (wall_0, _, _, id_0) = results["cli_n"], results["cli_0"]
        run_ids += [id_n, id_0]
        in_run.append(loop_s / N)
        diff.append((wall_n - wall_0) / N)
        journal.append(step_s)
        bare_cli.append(results["docker"])
        isolated.append(results["none"])
        print(f"  [{image}] run round {r + 1}/{ROUNDS_RUN}: in-run {ms(in_run[-1])}/step,"
              f" wall diff {ms(diff[-1])}/step, docker run {ms(bare_cli[-1])},"
              f" --network none {ms(isolated[-1])}", flush=True)
    return [
        goal_row(f"[{image}] (b) step in a run, in-run", in_run, bare_cli, "docker run --rm"),
        goal_row(f"[{image}] (b) step in a run, wall diff", diff, bare_cli, "docker run --rm"),
        info_row("    journal: step started -> finished", journal, bare_cli, "docker run --rm"),
        info_row("  ref: in-run vs an isolated docker run", in_run, isolated,
                 "--network none"),
    ]


def part_first_and_whole(sides: Sides, root: Path, image: str, reference: str,
                         run_ids: list[str]) -> list[Row]:
    repo, _ = make_repo(root / f"repo-first-{image}",
                        {".ci/pipeline.py": PIPELINE, "README": "bench\n"})
    home = root / "home"
    run_ids.append(cli_run_output(repo, home, 1, image)[3])  # warm-up: database, page cache
    first: list[float] = []
    nxt: list[float] = []
    later: list[float] = []  # the first heavy step after a light one
    later_nxt: list[float] = []
    whole: list[float] = []
    empty: list[float] = []
    bare_cli: list[float] = []
    isolated: list[float] = []

    def steps(kept: list[float], kept_next: list[float], *params: str) -> None:
        _, output, _, run_id = cli_run_output(repo, home, FIRST_OF, image, *params)
        run_ids.append(run_id)
        times = [float(t) for t in output["steps_s"]]
        kept.append(times[0])
        kept_next.append(median(times[1:]))

    def run_of(n: int, kept: list[float]) -> None:
        wall, _, _, run_id = cli_run_output(repo, home, n, image)
        run_ids.append(run_id)
        kept.append(wall)

    order: list[Callable[[], Any]] = [
        lambda: steps(first, nxt),
        lambda: steps(later, later_nxt, "light_first=1"),
        lambda: run_of(1, whole),
        lambda: run_of(0, empty),
        lambda: bare_cli.append(sides.docker_cli(reference)),
        lambda: isolated.append(sides.docker_cli(reference, "--network", "none")),
    ]
    for r in range(ROUNDS_FIRST):
        for side in order[r % len(order):] + order[:r % len(order)]:
            side()
        print(f"  [{image}] first-step round {r + 1}/{ROUNDS_FIRST}: first {ms(first[-1])},"
              f" next {ms(nxt[-1])} (after a light step: {ms(later[-1])}, next"
              f" {ms(later_nxt[-1])}); run of one step {ms(whole[-1])}, of none"
              f" {ms(empty[-1])}; docker run {ms(bare_cli[-1])}, --network none"
              f" {ms(isolated[-1])}", flush=True)
    increment = [w - e for w, e in zip(whole, empty, strict=True)]

    def row(figure: str, ours: list[float], peer: list[float], peer_name: str,
            goal: float | None) -> Row:
        paired = ratios(ours, peer)
        ratio = median(paired)
        return Row(figure, ms(median(ours)), f"{ms(median(peer))} {peer_name}",
                   f"{ratio:.2f}x ({spread(paired)})",
                   "-" if goal is None else f"<= {goal}x",
                   "info" if goal is None else verdict(ratio <= goal))

    extra = [f - n for f, n in zip(first, nxt, strict=True)]
    extra_later = [f - n for f, n in zip(later, later_nxt, strict=True)]
    return [
        row(f"[{image}] (c) first heavy step vs the next", first, nxt, "next", GOAL_FIRST),
        row("  ref: the first heavy step after a light step", later, later_nxt, "next", None),
        Row("  ref: first - next, first step / after a light one",
            f"{ms(median(extra))} ({ms(min(extra))}..{ms(max(extra))})",
            f"{ms(median(extra_later))} ({ms(min(extra_later))}..{ms(max(extra_later))})",
            "-", "-", "info"),
        row(f"[{image}] (d) whole one-heavy-step run", whole, bare_cli, "docker run --rm",
            GOAL_RATIO),
        row("  ref: the same run vs an isolated docker run", whole, isolated,
            "--network none", None),
        row("  ref: a run with no step (the rest of the run)", empty, bare_cli,
            "docker run --rm", None),
        row("  ref: the one step's increment over it", increment, bare_cli,
            "docker run --rm", None),
    ]


def leftovers(sides: Sides, run_ids: list[str]) -> int:
    found = sides.client.containers.list(all=True, filters={"label": "ci-runner=1"})
    found += sides.client.containers.list(all=True,
                                          filters={"label": f"{BENCH_LABEL}={sides.token}"})
    ours = {c.id for c in found
            if c.labels.get(BENCH_LABEL) == sides.token
            or c.labels.get("ci-runner.run") in run_ids}
    return len(ours)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--parts", default="abcd",
                        help="which parts to run: any of a, b, c and d (c and d run together;"
                             " default: all)")
    parts = set(parser.parse_args().parts)
    if not parts or parts - set("abcd"):
        raise SystemExit("--parts takes letters among a, b, c, d (e.g. --parts cd)")
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
        raise SystemExit("no Docker engine answers `docker info`: run scripts/docker-engine.sh")
    with tempfile.TemporaryDirectory(prefix="ci-runner-bench-") as tmp:
        root = Path(tmp)
        # The executor (in this process) and the image build lock use CI_RUNNER_HOME.
        os.environ["CI_RUNNER_HOME"] = str(root / "home")
        from ci_runner import images

        workspace, _ = make_repo(root / "workspace", {"README": "bench\n"})
        sides = Sides(workspace, token=root.name)
        bridged = bool(sides.client.networks.list(names=["bridge"]))
        present = {tag for image in sides.client.images.list() for tag in image.tags}
        if images.tag_for("busybox") not in present:
            t0 = time.perf_counter()
            images.build("busybox", client=sides.client)
            print(f"  built {images.tag_for('busybox')} in {ms(time.perf_counter() - t0)}")
        measured = ["busybox"] + (["python"] if images.tag_for("python") in present else [])
        rows: list[Row] = []
        run_ids: list[str] = []
        try:
            for image in measured if "a" in parts else []:
                rows += part_executor(sides, image, images.tag_for(image))
            for image in measured if "b" in parts else []:
                rows += part_run(sides, root, image, images.tag_for(image), run_ids)
            for image in measured if parts & set("cd") else []:
                rows += part_first_and_whole(sides, root, image, images.tag_for(image),
                                             run_ids)
            left = leftovers(sides, run_ids)
        finally:
            sides.close()

    skipped = [] if "python" in measured else [
        "ci-runner/python:latest is not present: `ci-runner images build python` to measure it"]
    print_table(f"heavy step overhead vs a bare `docker run --rm IMAGE true`: (a) executor"
                f" alone, {ROUNDS_EXECUTOR} interleaved rounds; (b) {N} x step.run(['true'],"
                f" image=) via `ci-runner run --json`, {ROUNDS_RUN} interleaved rounds;"
                f" (c) first heavy step vs the next and (d) a whole one-heavy-step run,"
                f" {ROUNDS_FIRST} interleaved rounds; medians", rows, [
        "ratios are ours / peer paired per round, then the median; absolute figures are medians",
        "(a) ours: a fresh ContainerExecutor per command, without the client a run's broker"
        " shares (connects and negotiates the API version, checks the image each time)",
        "(a) 'SDK hardened' makes the executor's own calls (create, start, follow logs, wait,"
        " remove) with its options: network none, cap_drop ALL, no-new-privileges,"
        " read-only root + /tmp tmpfs, pids/memory/CPU limits, --init, worktree bind mount",
        f"(b) in-run = the pipeline's perf_counter around its loop / {N}; wall diff ="
        f" (wall({N}) - wall(0)) / {N} of two whole CLI runs; both include what the first heavy"
        " step still pays once (the SDK is imported and connected while the run starts),"
        " spread over N",
        f"(b) peer: {N} x `docker run --rm IMAGE true` one after another, per command",
        f"(c) per run of {FIRST_OF} heavy steps: the first step's time (the pipeline's"
        " perf_counter around its await) over the median of the other two; spread ="
        " min..max of the per-round ratios. 'After a light step': the same with one light"
        " step first, which pays the run's first-step costs that are not Docker's (the"
        " pipeline process's and the driver's first step), so its ratio is Docker's alone",
        "(d) wall of `ci-runner run --json` from spawn to exit (default sandbox), paired"
        " per round with one `docker run --rm IMAGE true`; 'a run with no step' is the same"
        " pipeline with n=0, the rest of the run a heavy step cannot shorten",
        "'isolated docker run' = `docker run --rm --network none IMAGE true`: a heavy step"
        " runs with network none unless network=True; this engine has"
        + (" a bridge network, so a bare `docker run` is attached to it" if bridged else
           " no bridge network (dockerd --bridge=none, as scripts/docker-engine.sh starts"
           " it), so a bare `docker run` gets no network endpoint at all, while"
           " --network none makes one"),
        f"containers left behind by this benchmark: {left}",
        *skipped,
    ])


if __name__ == "__main__":
    main()
