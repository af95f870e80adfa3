"""A run's Docker client, warmed while the pipeline process starts, and finished steps'
containers removed in the background (``StepBroker``, ``Removals``).

The guess (does the pipeline name an image?) and the broker's use of the warmed client
are tested in-process with a counting stand-in for ``ready_client``; what the
containers become is tested against a real engine, through the executor and through
the real CLI (no engine: skipped, except under ``CI=true``, where it fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ci_runner import executors, images
from ci_runner.dispatch.broker import RunContext, StepBroker
from ci_runner.errors import ExecutorError
from ci_runner.executors import CommandSpec, ContainerExecutor, Removals, remove_containers
from ci_runner.executors.container import names_images
from tests.conftest import ROOT
from tests.test_container import require_engine

if TYPE_CHECKING:
    from docker import DockerClient

SAFETY_TIMEOUT = 60.0


# -- the guess ---------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "expected"), [
    ('await step.run("t", ["true"], image="python")', True),
    ("await step.run('t', ['true'], image = IMAGE)", True),
    ('HEAVY = {"image": "python", "network": True}', True),
    ("opts = dict(image='node')", True),
    ('await step.run("t", ["true"])', False),
    ("# no containers here, only images of the past", False),
    ('if image == "x": pass', False),
])
def test_the_guess_reads_image_keywords_and_keys(
    tmp_path: Path, source: str, expected: bool,
) -> None:
    folder = tmp_path / ".ci"
    folder.mkdir()
    (folder / "pipeline.py").write_text(f"{source}\n")
    assert names_images(folder) is expected


def test_the_guess_reads_helpers_beside_the_pipeline(tmp_path: Path) -> None:
    folder = tmp_path / ".ci"
    (folder / "lib").mkdir(parents=True)
    (folder / "pipeline.py").write_text("from lib.steps import build\n")
    assert names_images(folder) is False
    (folder / "lib" / "steps.py").write_text("async def build(step):\n"
                                             "    await step.run('b', 'make', image='c')\n")
    assert names_images(folder) is True


def test_the_guess_is_bounded_and_no_folder_is_no(tmp_path: Path) -> None:
    assert names_images(tmp_path / "missing") is False
    folder = tmp_path / ".ci"
    folder.mkdir()
    for i in range(70):  # sorted: the one that names an image is past the bound
        (folder / f"m{i:03}.py").write_text("x = 1\n")
    (folder / "z.py").write_text("image='busybox'\n")
    assert names_images(folder) is False


AHEAD = """
import sys
from pathlib import Path
from ci_runner.executors import container
tried = container.connect_ahead([Path(p) for p in sys.argv[1:]])
ahead = [made.result() for _, made in container._AHEAD]
print(tried, "docker" in sys.modules, len(ahead))
if ahead:
    # The next client is the one made ahead, and only the next.
    print(container.ready_client() is ahead[0], container.ready_client() is ahead[0])
"""


@pytest.mark.parametrize(("files", "expected"), [
    ({"repo/.ci/pipeline.py": "image='busybox'"}, "True True 1 True False"),
    ({"repo/.ci/pipeline.py": "x = 1"}, "False False 0"),
    # The first folder that exists is the pipeline's (a resumed run's worktree).
    ({"work/.ci/pipeline.py": "x = 1", "repo/.ci/pipeline.py": "image='c'"}, "False False 0"),
    ({}, "False False 0"),
])
def test_docker_is_connected_ahead_only_for_a_pipeline_that_names_an_image(
    tmp_path: Path, files: dict[str, str], expected: str,
) -> None:
    require_engine()
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    done = subprocess.run(
        [sys.executable, "-c", AHEAD, str(tmp_path / "work" / ".ci"),
         str(tmp_path / "repo" / ".ci")],
        capture_output=True, text=True, timeout=60, check=True, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout.split() == expected.split()


def test_a_failed_connection_ahead_is_met_by_the_step_that_needs_it(tmp_path: Path) -> None:
    (tmp_path / ".ci").mkdir()
    (tmp_path / ".ci" / "pipeline.py").write_text("image='busybox'\n")
    script = (
        "import sys\nfrom pathlib import Path\nfrom ci_runner.executors import container\n"
        "print(container.connect_ahead([Path(sys.argv[1])]))\n"
        "container.ready_client(step='unit', image='busybox')\n")
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / ".ci")], capture_output=True,
        text=True, timeout=60, cwd=tmp_path, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT), "DOCKER_HOST": "unix:///nonexistent.sock"})
    assert done.returncode == 1 and done.stdout.split() == ["True"]
    assert "ExecutorError: a Docker engine is needed for step 'unit' (image=busybox)" in done.stderr


# -- the broker's client -----------------------------------------------------------------


class FakeClient:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every call of ``ready_client`` the broker makes (the stand-in answers at once,
    or raises when the test says the engine is down)."""
    calls: list[dict[str, Any]] = []

    def ready_client(**kwargs: Any) -> Any:
        calls.append(kwargs)
        if getattr(ready_client, "down", False):
            raise ExecutorError(f"a Docker engine is needed for step {kwargs.get('step')!r}")
        return FakeClient(f"client{len(calls)}")

    monkeypatch.setattr(executors, "ready_client", ready_client)
    return calls


@contextlib.contextmanager
def make_broker(tmp_path: Path, pipeline: str) -> Iterator[StepBroker]:
    workspace = tmp_path / "worktree"
    (workspace / ".ci").mkdir(parents=True)
    (workspace / ".ci" / "pipeline.py").write_text(pipeline)
    no_light_steps: Any = None  # heavy steps only: no sandbox needed
    context = RunContext(run_id="r1", tenant="t", repo=workspace, workspace=workspace,
                         sha="0" * 40, secrets_file=None, untrusted=False, cache_scope="t",
                         confinement=no_light_steps)
    ours, theirs = socket.socketpair()
    try:
        yield StepBroker(context, ours)
    finally:
        ours.close()
        theirs.close()


HEAVY = 'await step.run("unit", ["pytest"], image="python")\n'


def run_in_loop(work: Callable[[], Any]) -> Any:
    return asyncio.run(asyncio.wait_for(work(), timeout=30))


def test_a_pipeline_that_names_an_image_gets_its_client_before_its_first_step(
    tmp_path: Path, connects: list[dict[str, Any]],
) -> None:
    with make_broker(tmp_path, HEAVY) as broker:

        async def steps() -> tuple[Any, Any, list[dict[str, Any]]]:
            broker._warm_docker()
            assert broker._docker is not None
            await broker._docker  # connected in the background, no step asked yet
            before = list(connects)
            first = await broker._docker_client("unit", "python")
            second = await broker._docker_client("lint", "python")
            await broker._close_docker()
            return first, second, before

        first, second, before = run_in_loop(steps)
        assert before == [{}]  # one connection, made by the warm-up
        assert connects == [{}]  # and no other: both steps used it
        assert first is second and first.closed  # closed with the run


def test_a_pipeline_without_images_connects_only_when_a_step_asks(
    tmp_path: Path, connects: list[dict[str, Any]],
) -> None:
    with make_broker(tmp_path, 'await step.run("t", ["true"])\n') as broker:

        async def steps() -> tuple[Any, Any]:
            broker._warm_docker()
            assert broker._docker is not None
            assert await broker._docker is None
            assert connects == []
            first, second = await asyncio.gather(broker._docker_client("a", "busybox"),
                                                 broker._docker_client("b", "busybox"))
            await broker._close_docker()
            return first, second

        first, second = run_in_loop(steps)
        assert first is second  # step.parallel: one connection for both
        assert connects == [{"step": "a", "image": "busybox"}]


def test_a_failed_warm_up_leaves_the_step_to_connect_and_say_why(
    tmp_path: Path, connects: list[dict[str, Any]],
) -> None:
    ready_client: Any = executors.ready_client
    ready_client.down = True
    with make_broker(tmp_path, HEAVY) as broker:

        async def steps() -> Any:
            broker._warm_docker()
            with pytest.raises(ExecutorError, match="step 'unit'"):
                await broker._docker_client("unit", "python")
            assert connects == [{}, {"step": "unit", "image": "python"}]
            ready_client.down = False  # the engine came up meanwhile: the next step connects
            return await broker._docker_client("deploy", "python")

        assert run_in_loop(steps).name == "client3"


def test_a_heavy_step_needs_no_pids_cgroup_of_the_run(tmp_path: Path) -> None:
    """Its processes are in its container's cgroup; joining the run's costs ~15 ms."""
    with make_broker(tmp_path, HEAVY) as broker:
        cgroup = broker._cgroup_for("r1-unit-1", None, False)
        assert cgroup.path is None and cgroup.refused() == 0
        assert broker._run_cgroup is None


# -- the containers, for real ---------------------------------------------------------------


@pytest.fixture(scope="module")
def client() -> DockerClient:
    client = require_engine()
    images.build("busybox", client=client)  # kept when present
    return client


@pytest.fixture
def labels(client: DockerClient) -> Iterator[dict[str, str]]:
    mine = {"ci-runner.run": f"test-{uuid.uuid4().hex[:12]}", "ci-runner.step": "s",
            "ci-runner.attempt": "1"}
    yield mine
    remove_containers(mine, client=client)


def ours(client: DockerClient, labels: dict[str, str]) -> list[Any]:
    return client.containers.list(
        all=True, filters={"label": [f"{k}={v}" for k, v in labels.items()]})


def test_a_finished_steps_container_is_removed_by_drain(
    client: DockerClient, labels: dict[str, str], tmp_path: Path,
) -> None:
    removals = Removals()
    executor = ContainerExecutor("busybox", labels=labels, client=client, removals=removals)
    chunks: list[str] = []

    async def two_steps() -> list[int]:
        codes = []
        for argv in (["echo", "one"], ["sh", "-c", "echo two; exit 3"]):
            result = await executor.run(
                CommandSpec(argv, cwd=tmp_path, timeout_s=SAFETY_TIMEOUT), chunks.append)
            codes.append(result.exit_code)
        await removals.drain()
        assert len(removals) == 0
        return codes

    assert asyncio.run(two_steps()) == [0, 3]
    assert "".join(chunks) == "one\ntwo\n"  # every line in, though removal came later
    assert ours(client, labels) == []


def test_a_cancelled_steps_container_is_removed_before_it_raises(
    client: DockerClient, labels: dict[str, str], tmp_path: Path,
) -> None:
    removals = Removals()
    executor = ContainerExecutor("busybox", labels=labels, client=client, removals=removals,
                                 kill_grace_s=1)
    started = asyncio.Event()

    async def cancel_it() -> None:
        task = asyncio.ensure_future(executor.run(
            CommandSpec(["sleep", "60"], cwd=tmp_path, timeout_s=SAFETY_TIMEOUT),
            lambda _text: None, on_start=lambda _info: started.set()))
        await asyncio.wait_for(started.wait(), SAFETY_TIMEOUT)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(removals) == 0  # not handed over: already gone
        assert ours(client, labels) == []

    asyncio.run(asyncio.wait_for(cancel_it(), SAFETY_TIMEOUT * 2))


def test_a_step_with_a_cache_volume_frees_it_before_it_reports(
    client: DockerClient, labels: dict[str, str], tmp_path: Path,
) -> None:
    removals = Removals()
    volume = f"ci-runner-test-cache-{uuid.uuid4().hex[:12]}"
    executor = ContainerExecutor("busybox", labels=labels, client=client, removals=removals,
                                 caches={volume: "/cache"})
    try:
        result = asyncio.run(executor.run(
            CommandSpec(["touch", "/cache/x"], cwd=tmp_path, timeout_s=SAFETY_TIMEOUT),
            lambda _text: None))
        assert result.exit_code == 0
        assert len(removals) == 0 and ours(client, labels) == []
        client.volumes.get(volume).remove()  # not in use: no force needed
    finally:
        with contextlib.suppress(Exception):
            client.volumes.get(volume).remove(force=True)


PIPELINE = """
from ci_runner import Pipeline
class CI(Pipeline):
    async def run(self, event, step):
        await step.run("one", ["true"], image="busybox")
        await step.parallel(
            step.run("two", ["sh", "-c", "echo two"], image="busybox"),
            step.run("three", ["sh", "-c", "exit 4"], image="busybox", check=False),
        )
        last = await step.run("four", ["echo", "four"], image="busybox")
        return last["output_tail"].strip()
"""


@pytest.mark.parametrize("mode", ["bwrap", "off"])
def test_a_run_of_heavy_steps_leaves_no_container(
    cli: Any, repo_with: Any, client: DockerClient, mode: str,
) -> None:
    repo = repo_with(PIPELINE, name=f"heavy-{mode}")
    done = cli("run", "--json", "--sandbox", mode, cwd=repo, timeout=180)
    assert done.code == 0, done.err + done.out
    record = done.json()
    codes = {s["name"]: s["exit_code"] for s in record["steps"]}
    assert codes == {"one": 0, "two": 0, "three": 4, "four": 0}
    assert client.containers.list(
        all=True, filters={"label": f"ci-runner.run={record['run_id']}"}) == []


def test_no_engine_is_still_said_by_the_step_that_needed_it(cli: Any, repo_with: Any) -> None:
    repo = repo_with(PIPELINE)  # names images: the warm-up tries, fails, stays quiet
    done = cli("run", "--json", cwd=repo, env={"DOCKER_HOST": "unix:///nonexistent.sock"})
    assert done.code == 1
    message = done.json()["error"]["message"]
    assert "a Docker engine is needed for step 'one' (image=busybox)" in message


BAD_LIMITS = """
from ci_runner import Pipeline
class CI(Pipeline):
    async def run(self, event, step):
        await step.run("box", ["true"], image="busybox", retries=3, **event.payload)
"""


@pytest.mark.parametrize(("limit", "said"), [
    ("memory=lots", "step 'box': memory is a size like '512m' or '2g', not 'lots'"),
    ("memory=12q", "step 'box': memory is a size like '512m' or '2g', not '12q'"),
    ("cpus=0", "step 'box': cpus is a number of CPUs above 0 (like 1.5), not '0'"),
])
def test_a_bad_limit_fails_the_run_at_once_and_says_why(
    cli: Any, repo_with: Any, client: DockerClient, limit: str, said: str,
) -> None:
    """It used to hang the run: the SDK's own error escaped the broker unanswered."""
    repo = repo_with(BAD_LIMITS)
    done = cli("run", "--json", "-p", limit, cwd=repo, timeout=60)
    assert done.code != 0, done.out
    record = done.json()
    assert said in record["error"]["message"], record["error"]
    (box,) = record["steps"]
    assert box["attempts"] == 1  # a configuration mistake is not retried


def test_an_unexpected_error_in_the_broker_fails_the_step_instead_of_hanging_it(
    tmp_path: Path, connects: list[dict[str, Any]], home: Path,
) -> None:
    """A request the broker chokes on (here an env the pipeline process could only send
    by writing to the broker's socket itself) gets an error back, not silence."""
    import json
    import struct

    from ci_runner.dispatch.broker import _frame

    workspace = tmp_path / "worktree"
    workspace.mkdir()
    no_light_steps: Any = None
    context = RunContext(run_id="r1", tenant="t", repo=workspace, workspace=workspace,
                         sha="0" * 40, secrets_file=None, untrusted=False, cache_scope="t",
                         confinement=no_light_steps)
    ours, theirs = socket.socketpair()
    broker = StepBroker(context, ours)
    broker.start()
    try:
        theirs.settimeout(10)
        theirs.sendall(_frame({"id": 1, "op": "exec", "args": {
            "name": "box", "occurrence": 1, "attempt": 1, "argv": ["true"],
            "env": ["not-a-pair"], "secrets": [], "cwd": ".", "timeout_s": 10,
            "image": "busybox"}}))
        (size,) = struct.unpack("!I", theirs.recv(4, socket.MSG_WAITALL))
        reply = json.loads(theirs.recv(size, socket.MSG_WAITALL))
    finally:
        broker.close()
        theirs.close()
    assert reply["id"] == 1
    assert reply["error"]["message"].startswith("exec failed: ValueError: ")


def test_the_executor_says_a_limit_the_sdk_refuses(
    client: DockerClient, labels: dict[str, str], tmp_path: Path,
) -> None:
    executor = ContainerExecutor("busybox", labels=labels, client=client, memory="lots")
    with pytest.raises(ExecutorError, match=r"could not create the container for .*memory"):
        asyncio.run(executor.run(CommandSpec(["true"], cwd=tmp_path, timeout_s=SAFETY_TIMEOUT),
                                 lambda _text: None))
    assert ours(client, labels) == []
