"""The container executor against a real Docker engine: output, limits, isolation, adoption.

Every test runs real containers of the offline ``ci-runner/busybox`` image (built
here when missing). No engine: the tests skip, except under ``CI=true``, where a
missing engine is a failure (``scripts/docker-engine.sh`` starts one).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ci_runner import images
from ci_runner.errors import ExecutorError
from ci_runner.executors import (
    MASK,
    CommandResult,
    CommandSpec,
    ContainerExecutor,
    Executor,
    StartInfo,
    docker_client,
    remove_containers,
)

if TYPE_CHECKING:
    from docker import DockerClient

ROOT = Path(__file__).resolve().parents[1]
BUSYBOX = "busybox"
HTTPD = "ci-runner-test/httpd:latest"
SAFETY_TIMEOUT = 60.0


def require_engine() -> DockerClient:
    """A client for the engine, or skip (fail under CI=true) with the reason."""
    try:
        return docker_client(step="tests")
    except ExecutorError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true, so the Docker tests must run: {exc.message}")
        pytest.skip(f"no Docker engine: {exc.message}")


@pytest.fixture(scope="module")
def client() -> DockerClient:
    client = require_engine()
    images.build(BUSYBOX, client=client)  # kept when present
    return client


@pytest.fixture
def labels(client: DockerClient) -> Iterator[dict[str, str]]:
    """Labels unique to one test; whatever carries them is removed afterwards."""
    mine = {"ci-runner.run": f"test-{uuid.uuid4().hex[:12]}", "ci-runner.step": "s",
            "ci-runner.attempt": "1"}
    yield mine
    remove_containers(mine, client=client)


def _run(
    executor: ContainerExecutor, spec: CommandSpec, *, on_start: Any = None,
) -> tuple[CommandResult, str]:
    chunks: list[str] = []
    result = asyncio.run(executor.run(spec, chunks.append, on_start=on_start))
    return result, "".join(chunks)


def _spec(argv: list[str] | str, cwd: Path, **kwargs: Any) -> CommandSpec:
    kwargs.setdefault("timeout_s", SAFETY_TIMEOUT)
    return CommandSpec(argv=argv, cwd=cwd, **kwargs)


def _ours(client: DockerClient, labels: dict[str, str]) -> list[Any]:
    filters: dict[str, Any] = {"label": [f"{k}={v}" for k, v in labels.items()]}
    return client.containers.list(all=True, filters=filters)


def test_is_an_executor() -> None:
    executor: Executor = ContainerExecutor(BUSYBOX)
    assert executor is not None


def test_output_streams_in_order_and_the_exit_code_is_kept(
    client: DockerClient, labels: dict[str, str], tmp_path: Path,
) -> None:
    executor = ContainerExecutor(BUSYBOX, labels=labels, client=client)
    result, out = _run(executor, _spec("echo one; echo two >&2; echo three; exit 3", tmp_path))
    assert out == "one\ntwo\nthree\n"
    assert (result.exit_code, result.timed_out) == (3, False)
    assert result.output_tail == "one\ntwo\nthree"
    assert _ours(client, labels) == []


def test_output_reaches_the_sink_while_the_container_runs(
    client: DockerClient, labels: dict[str, str], tmp_path: Path,
) -> None:
    # The step waits for a file only the sink creates on seeing "ready": output
    # delivered at exit would run into the timeout instead.
    script = "echo ready; while [ ! -e /workspace/seen ]; do sleep 0.05; done; echo done"
    seen: list[str] = []

    def sink(text: str) -> None:
        seen.append(text)
        if "ready" in "".join(seen):
            (tmp_path / "seen").touch()

    executor = ContainerExecutor(BUSYBOX, labels=labels, client=client)
    result = asyncio.run(executor.run(_spec(script, tmp_path, timeout_s=20), sink))
    assert (result.exit_code, "".join(seen)) == (0, "ready\ndone\n")


def test_a_silent_step_outlasts_the_clients_read_timeout(
    labels: dict[str, str], tmp_path: Path,
) -> None:
    import docker

    slow_client = docker.from_env(timeout=1)
    executor = ContainerExecutor(BUSYBOX, labels=labels, client=slow_client)
    result, out = _run(executor, _spec("sleep 2.5; echo late", tmp_path))
    assert (result.exit_code, out) == (0, "late\n")


def test_timeout_stops_and_removes_the_container(
    client: DockerClient, labels: dict[str, str], tmp_path: Path,
) -> None:
    started: list[StartInfo] = []
    executor = ContainerExecutor(BUSYBOX, labels=labels, client=client, kill_grace_s=1)
    before = time.monotonic()
    result, out = _run(executor, _spec("echo going; sleep 60", tmp_path, timeout_s=1),
                       on_start=started.append)
    assert (result.exit_code, result.timed_out, out) == (124, True, "going\n")
    assert time.monotonic() - before < 10
    assert started == [{"container": started[0]["container"]}]
    assert _ours(client, labels) == []


def test_hardened_by_default(client: DockerClient, labels: dict[str, str], tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def inspect(info: StartInfo) -> None:
        seen.update(client.api.inspect_container(info["container"]))

    executor = ContainerExecutor(BUSYBOX, labels=labels, client=client, memory="256m",
                                 cpus=0.5, pids_limit=64)
    script = ("grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; "
              "touch /etc/x 2>/dev/null && echo etc-writable; touch /tmp/x && echo tmp-ok")
    result, out = _run(executor, _spec(script, tmp_path), on_start=inspect)
    assert result.exit_code == 0
    assert out.split() == ["CapEff:", "0000000000000000", "NoNewPrivs:", "1", "tmp-ok"]
    host = seen["HostConfig"]
    assert host["CapDrop"] == ["ALL"]
    assert host["Privileged"] is False
    assert host["ReadonlyRootfs"] is True
    # "none", or on an engine without a bridge the default, which is loopback only too
    # (test_no_network_by_default checks what the step can actually reach).
    bridged = bool(client.networks.list(names=["bridge"]))
    assert host["NetworkMode"] == ("none" if bridged else "default")
    assert any("no-new-privileges" in opt for opt in host["SecurityOpt"])
    assert (host["PidsLimit"], host["Memory"], host["NanoCpus"]) == (64, 256 << 20, 500_000_000)
    sources = [m["Source"] for m in seen["Mounts"]]
    assert sources == [str(tmp_path.resolve())]
    assert not any("docker.sock" in json.dumps(m) for m in seen["Mounts"])
    assert seen["Config"]["Labels"]["ci-runner"] == "1"
    assert seen["Config"]["Labels"]["ci-runner.run"] == labels["ci-runner.run"]


def test_no_network_by_default(client: DockerClient, labels: dict[str, str],
                               tmp_path: Path) -> None:
    # Only loopback and no route anywhere (no traffic is sent to check it).
    script = ("cut -d: -f1 /proc/net/dev | tail -n +3 | tr -d ' '; "
              "echo routes=$(tail -n +2 /proc/net/route | wc -l)")
    executor = ContainerExecutor(BUSYBOX, labels=labels, client=client)
    result, out = _run(executor, _spec(script, tmp_path))
    assert (result.exit_code, out.split()) == (0, ["lo", "routes=0"])


def test_network_opt_in_gives_more_than_loopback(
    client: DockerClient, labels: dict[str, str], tmp_path: Path,
) -> None:
    # There may be no outside network here: only check the namespace is not "none".
    executor = ContainerExecutor(BUSYBOX, network=True, labels=labels, client=client)
    result, out = _run(executor, _spec("cut -d: -f1 /proc/net/dev | tail -n +3", tmp_path))
    assert result.exit_code == 0
    assert [name.strip() for name in out.split()] != ["lo"]


def test_files_in_the_worktree_belong_to_the_invoking_user(
    client: DockerClient, labels: dict[str, str], tmp_path: Path,
) -> None:
    (tmp_path / "sub").mkdir()
    executor = ContainerExecutor(BUSYBOX, labels=labels, client=client, workspace=tmp_path)
    result, out = _run(executor, _spec("pwd; echo hi > made; ls ..", tmp_path / "sub"))
    assert (result.exit_code, out.split()) == (0, ["/workspace/sub", "sub"])
    made = tmp_path / "sub" / "made"
    assert (made.stat().st_uid, made.stat().st_gid) == (os.getuid(), os.getgid())


def test_another_user_owns_what_it_writes_and_its_fresh_cache(
    client: DockerClient, labels: dict[str, str], tmp_path: Path,
) -> None:
    tmp_path.chmod(0o777)
    volume = f"ci-runner-test-{uuid.uuid4().hex[:12]}"
    try:
        executor = ContainerExecutor(BUSYBOX, labels=labels, client=client, user="4321:4321",
                                     caches={volume: "/cache"})
        result, out = _run(executor, _spec("id -u; touch made /cache/ok && echo ok", tmp_path))
        assert (result.exit_code, out.split()) == (0, ["4321", "ok"])
        assert (tmp_path / "made").stat().st_uid == 4321
    finally:
        client.volumes.get(volume).remove(force=True)


def test_secrets_reach_the_command_and_are_masked(
    client: DockerClient, labels: dict[str, str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "leaky")
    spec = _spec('echo "token=$TOKEN"; echo "path=$PATH home=$HOME"; env', tmp_path,
                 env={"PASSED": "yes"}, secrets={"TOKEN": "hunter2-s3cret"})
    executor = ContainerExecutor(BUSYBOX, labels=labels, client=client)
    result, out = _run(executor, spec)
    assert result.exit_code == 0
    assert "hunter2" not in out
    assert f"token={MASK}" in out
    assert "path=/usr/sbin:/usr/bin:/sbin:/bin home=/tmp" in out  # the image's PATH
    assert "PASSED=yes" in out
    assert "CI=true" in out
    assert "AWS_SECRET_ACCESS_KEY" not in out


def test_a_cache_volume_persists_between_runs(
    client: DockerClient, labels: dict[str, str], tmp_path: Path,
) -> None:
    volume = f"ci-runner-test-{uuid.uuid4().hex[:12]}"
    try:
        executor = ContainerExecutor(BUSYBOX, labels=labels, client=client,
                                     caches={volume: "/tmp/.cache/pip"})
        first, _ = _run(executor, _spec("echo kept > /tmp/.cache/pip/entry", tmp_path))
        second, out = _run(executor, _spec("cat /tmp/.cache/pip/entry", tmp_path))
        assert (first.exit_code, second.exit_code, out) == (0, 0, "kept\n")
        assert client.volumes.get(volume).attrs["Labels"] == {"ci-runner": "1"}
    finally:
        client.volumes.get(volume).remove(force=True)


@pytest.fixture(scope="module")
def httpd(client: DockerClient) -> Iterator[str]:
    """A service image: busybox httpd serving one page on 127.0.0.1:8080."""
    dockerfile = (
        f"FROM {images.tag_for(BUSYBOX)}\n"
        "RUN mkdir /www && echo served > /www/index.html\n"
        'CMD ["httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/www"]\n'
    )
    client.images.build(fileobj=BytesIO(dockerfile.encode()), tag=HTTPD, network_mode="none",
                        rm=True, forcerm=True)
    yield HTTPD
    client.images.remove(HTTPD, force=True)


def test_services_are_reachable_on_localhost_and_by_name(
    client: DockerClient, httpd: str, labels: dict[str, str], tmp_path: Path,
) -> None:
    seen: list[Any] = []
    executor = ContainerExecutor(BUSYBOX, services={"web": httpd}, labels=labels,
                                 client=client)
    script = ("for i in 1 2 3 4 5 6 7 8 9 10; do wget -q -O - http://web:8080/ && break; "
              "sleep 0.2; done; wget -q -O - http://127.0.0.1:8080/; "
              "cut -d: -f1 /proc/net/dev | tail -n +3 | tr -d ' '")
    result, out = _run(executor, _spec(script, tmp_path),
                       on_start=lambda _info: seen.extend(_ours(client, labels)))
    assert (result.exit_code, out.split()) == (0, ["served", "served", "lo"])
    roles = sorted(c.labels["ci-runner.role"] for c in seen)
    assert roles == ["service", "step"]
    assert _ours(client, labels) == []  # the service went with the step


def test_a_service_that_exits_fails_the_step_clearly(
    client: DockerClient, labels: dict[str, str], tmp_path: Path,
) -> None:
    # busybox's default command is a shell with no input: it exits at once.
    executor = ContainerExecutor(BUSYBOX, services={"db": BUSYBOX}, labels=labels,
                                 client=client)
    with pytest.raises(ExecutorError, match=r"service 'db' .* exited with code 0"):
        _run(executor, _spec("true", tmp_path))
    assert _ours(client, labels) == []


def test_a_missing_image_names_itself_and_what_to_do(
    client: DockerClient, labels: dict[str, str], tmp_path: Path,
) -> None:
    executor = ContainerExecutor("ci-runner-test/not-here:1", labels=labels, client=client)
    with pytest.raises(ExecutorError, match=r"ci-runner-test/not-here:1 .*docker pull or docker"):
        _run(executor, _spec("true", tmp_path))


def test_a_command_missing_from_the_image_exits_127(
    client: DockerClient, labels: dict[str, str], tmp_path: Path,
) -> None:
    executor = ContainerExecutor(BUSYBOX, labels=labels, client=client)
    result, out = _run(executor, _spec(["no-such-tool", "--help"], tmp_path))
    assert result.exit_code == 127
    assert "no-such-tool" in out


def test_a_failing_sink_stops_the_container_and_raises(
    client: DockerClient, labels: dict[str, str], tmp_path: Path,
) -> None:
    def sink(_text: str) -> None:
        raise OSError("disk full")

    executor = ContainerExecutor(BUSYBOX, labels=labels, client=client, kill_grace_s=1)
    before = time.monotonic()
    with pytest.raises(OSError, match="disk full"):
        asyncio.run(executor.run(_spec("echo hi; sleep 60", tmp_path), sink))
    assert time.monotonic() - before < 10
    assert _ours(client, labels) == []


def test_cancelling_the_step_removes_its_containers(
    client: DockerClient, labels: dict[str, str], tmp_path: Path,
) -> None:
    async def scenario() -> None:
        started = asyncio.Event()
        executor = ContainerExecutor(BUSYBOX, labels=labels, client=client, kill_grace_s=1)
        task = asyncio.create_task(executor.run(
            _spec("sleep 60", tmp_path), lambda _t: None, on_start=lambda _i: started.set(),
        ))
        await asyncio.wait_for(started.wait(), 20)
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert _ours(client, labels) == []


# A runner process that starts a step, reports its container and is then SIGKILLed.
_CRASHING_RUNNER = """
import asyncio, json, sys
from pathlib import Path
from ci_runner.executors import CommandSpec, ContainerExecutor

labels, script, cwd, timeout = json.loads(sys.argv[1])
def started(info):
    print(info["container"], flush=True)
executor = ContainerExecutor("busybox", labels=labels)
spec = CommandSpec(argv=script, cwd=Path(cwd), timeout_s=timeout, secrets={"TOKEN": "s3cr3t-v"})
asyncio.run(executor.run(spec, lambda text: None, on_start=started))
"""


def _crash_mid_step(labels: dict[str, str], script: str, cwd: Path,
                    timeout_s: float = SAFETY_TIMEOUT) -> str:
    """Start ``script`` from a runner process, SIGKILL the runner once the container
    runs; returns the container id."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = json.dumps([labels, script, str(cwd), timeout_s])
    with subprocess.Popen([sys.executable, "-c", _CRASHING_RUNNER, args], env=env,
                          stdout=subprocess.PIPE, text=True) as runner:
        assert runner.stdout is not None
        container_id = runner.stdout.readline().strip()
        time.sleep(0.5)  # let it start
        runner.send_signal(signal.SIGKILL)
    assert container_id
    return container_id


def test_adopt_reattaches_to_a_running_container(
    client: DockerClient, labels: dict[str, str], tmp_path: Path,
) -> None:
    script = "echo before; while [ ! -e /workspace/go ]; do sleep 0.05; done; echo after; exit 7"
    container_id = _crash_mid_step(labels, script, tmp_path)
    assert client.containers.get(container_id).status == "running"
    executor = ContainerExecutor(BUSYBOX, client=client)
    chunks: list[str] = []

    async def adopt() -> CommandResult | None:
        task = asyncio.create_task(executor.adopt(labels, chunks.append))
        await asyncio.sleep(0.5)
        (tmp_path / "go").touch()
        return await task

    result = asyncio.run(adopt())
    assert result is not None
    assert (result.exit_code, result.timed_out, "".join(chunks)) == (7, False, "before\nafter\n")
    assert result.duration_s > 0.5
    assert _ours(client, labels) == []


def test_adopt_collects_an_exited_container_without_rerunning_it(
    client: DockerClient, labels: dict[str, str], tmp_path: Path,
) -> None:
    script = ('while [ ! -e /workspace/go ]; do sleep 0.05; done; '
              'echo "run $TOKEN" >> /workspace/runs; cat /workspace/runs; exit 5')
    container_id = _crash_mid_step(labels, script, tmp_path)
    (tmp_path / "go").touch()
    client.containers.get(container_id).wait(timeout=20)
    chunks: list[str] = []
    result = asyncio.run(ContainerExecutor(BUSYBOX, client=client).adopt(labels, chunks.append))
    assert result is not None
    assert (result.exit_code, result.timed_out) == (5, False)
    assert "".join(chunks) == f"run {MASK}\n"  # the secret is masked on adoption too
    assert (tmp_path / "runs").read_text() == "run s3cr3t-v\n"  # it ran once
    assert _ours(client, labels) == []
    assert asyncio.run(ContainerExecutor(BUSYBOX, client=client).adopt(labels)) is None


def test_adopt_keeps_the_original_timeout(
    client: DockerClient, labels: dict[str, str], tmp_path: Path,
) -> None:
    _crash_mid_step(labels, "sleep 60", tmp_path, timeout_s=1.0)
    executor = ContainerExecutor(BUSYBOX, client=client, kill_grace_s=1)
    before = time.monotonic()
    result = asyncio.run(executor.adopt(labels))
    assert result is not None
    assert (result.exit_code, result.timed_out) == (124, True)
    assert time.monotonic() - before < 10
    assert _ours(client, labels) == []
