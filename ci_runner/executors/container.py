"""Runs heavy steps in hardened Docker containers, behind the same ``Executor`` interface.

A step's container mounts the worktree at ``/workspace`` and runs as the invoking
user, with no network unless asked, every capability dropped, no new privileges,
pids, memory and CPU limits, and a read-only root with a writable ``/tmp``; never
privileged, never the Docker socket. Output streams live through the same masking
as a host step. Service containers (a database, say) start first and the step
joins the first one's network namespace, pod-style, so it reaches them on localhost.

Every container carries ``ci-runner=1``, the caller's labels (run, step, attempt) and
a pod id, so a resumed runner can ``adopt`` a step's container after a crash instead
of running it twice, and cleanup never touches containers ci-runner did not start.

The docker SDK is blocking: short calls run in worker threads, and each step's log
stream gets a thread of its own so long steps cannot starve the shared pool.

A run's broker keeps one client for all its steps (``ready_client``, made in the
background when the pipeline names images) and hands the executor a ``Removals``:
a finished step's container is then deleted while the run goes on, and the broker
waits for those deletions before the run ends, so nothing is left behind.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar

from ci_runner import images
from ci_runner.errors import ExecutorError
from ci_runner.executors.base import CommandResult
from ci_runner.executors.host import scrubbed_env
from ci_runner.executors.masking import Masker
from ci_runner.executors.output import MaskedOutput

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

    from ci_runner.executors.base import CommandSpec, OutputSink, StartInfo

T = TypeVar("T")

LABEL = "ci-runner"
"""Every container ci-runner starts carries ``ci-runner=1``; nothing else is ever removed."""
LABEL_POD = "ci-runner.pod"
LABEL_ROLE = "ci-runner.role"
LABEL_SERVICE = "ci-runner.service"
LABEL_SECRETS = "ci-runner.secrets"
LABEL_DEADLINE = "ci-runner.deadline"

WORKSPACE = "/workspace"
DEFAULT_SOCKET = "unix:///var/run/docker.sock"

# Host paths mean nothing inside the image: PATH comes from the image, HOME is /tmp.
_HOST_ONLY_ENV = ("PATH", "HOME", "SHELL", "TMPDIR")
_TIMEOUT_EXIT_CODE = 124
_SERVICE_READY_S = 60.0
_KILLED_CODES = (128 + 9, 128 + 15)
# Docker keeps stdout and stderr apart and their relative order is lost; one pipe for
# both, as on the host, keeps a step's lines in order. Needs /bin/sh in the image.
_MERGED_OUTPUT = ["/bin/sh", "-c", 'exec "$@" 2>&1', "sh"]


def docker_client(*, step: str | None = None, image: str | None = None) -> DockerClient:
    """A client for the engine ``DOCKER_HOST`` (else the default socket) names.

    Raises ``ExecutorError`` saying where it looked and what to do when no engine
    answers, or when the docker package is missing.
    """
    what = f"step {step!r}" if step else "this step"
    if image:
        what += f" (image={image})"
    try:
        import docker
        from docker.errors import DockerException
    except ImportError as exc:
        raise ExecutorError(
            f"the docker Python package is needed for {what}: pip install 'docker>=7'",
            step=step, image=image,
        ) from exc
    host = os.environ.get("DOCKER_HOST")
    where = f"DOCKER_HOST={host}" if host else f"{DEFAULT_SOCKET} (DOCKER_HOST unset)"

    def no_engine(reason: str) -> ExecutorError:
        return ExecutorError(
            f"a Docker engine is needed for {what}; looked at {where}: {reason}; "
            f"start one (e.g. sudo dockerd, or scripts/docker-engine.sh) or drop image=",
            step=step, image=image, docker_host=host or DEFAULT_SOCKET,
        )

    address = host or DEFAULT_SOCKET
    if address.startswith("unix://"):
        # Probe the socket first: it names the usual failures plainly, and the SDK
        # leaks its socket when the connection fails.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(5)
            try:
                probe.connect(address.removeprefix("unix://"))
            except OSError as exc:
                raise no_engine(exc.strerror or str(exc)) from exc
    try:
        client = docker.from_env()  # asks the engine its API version: no ping needed
    except DockerException as exc:
        raise no_engine(" ".join(str(exc).split())[:200]) from exc
    return client


_NAMES_IMAGES = re.compile(rb"""\bimage\s*=[^=]|["']image["']\s*:""")
_SCAN_FILES = 64
_SCAN_BYTES = 1 << 20


def names_images(folder: Path) -> bool:
    """Whether the Python files of a pipeline's folder pass an ``image=`` (a keyword or
    a dict key) anywhere: a cheap guess that its runs have heavy steps, bounded in files
    and bytes read. Only ever used to prepare early what a heavy step needs."""
    budget = _SCAN_BYTES
    for index, path in enumerate(sorted(folder.rglob("*.py"))):
        if index >= _SCAN_FILES or budget <= 0:
            break
        try:
            with path.open("rb") as source:
                text = source.read(budget)
        except OSError:
            continue
        if _NAMES_IMAGES.search(text):
            return True
        budget -= len(text)
    return False


# A connection made ahead (connect_ahead), for this process's next ready_client().
_AHEAD: list[tuple[str, concurrent.futures.Future[DockerClient | None]]] = []
_AHEAD_LOCK = threading.Lock()


def connect_ahead(folders: Iterable[Path]) -> bool:
    """If the pipeline in the first of ``folders`` that exists names an image, import
    the docker SDK (~90 ms, most of it ``requests``) and connect, for the process's next
    ``ready_client()`` to take; whether it tried. Blocking: for a background thread
    started while a run is being prepared. A failure is left for the step to meet."""
    folder = next((f for f in folders if f.is_dir()), None)
    if folder is None or not names_images(folder):
        return False
    made: concurrent.futures.Future[DockerClient | None] = concurrent.futures.Future()
    with _AHEAD_LOCK:
        if _AHEAD:
            return True  # one ahead is enough
        _AHEAD.append((os.environ.get("DOCKER_HOST", ""), made))
    client = None
    try:
        client = _connected()
    except Exception:  # noqa: S110 - the step connects again, and says why
        pass
    finally:
        made.set_result(client)
    return True


def ready_client(*, step: str | None = None, image: str | None = None) -> DockerClient:
    """``docker_client``, having also asked the engine what every step's container
    needs (its CPU count, whether it has a bridge), so that a run's first heavy step
    costs what the next ones do; the connection made ahead, if there is one. Raises as
    ``docker_client`` does."""
    with _AHEAD_LOCK:
        ahead = _AHEAD.pop() if _AHEAD else None
    if ahead is not None:
        host, made = ahead
        client = made.result()
        if client is not None and host == os.environ.get("DOCKER_HOST", ""):
            return client
    return _connected(step=step, image=image)


def _connected(*, step: str | None = None, image: str | None = None) -> DockerClient:
    client = docker_client(step=step, image=image)
    _engine_facts(client)
    return client


_FACTS: dict[str, dict[str, Any]] = {}


def _engine_facts(client: DockerClient) -> dict[str, Any]:
    """What an engine is like (CPUs, a default bridge), asked once per process."""
    key = str(client.api.base_url)
    if key not in _FACTS:
        _FACTS[key] = {
            "cpus": float(client.info().get("NCPU") or os.cpu_count() or 1),
            "bridged": bool(client.networks.list(names=["bridge"])),
        }
    return _FACTS[key]


def container_env(extra: Mapping[str, str]) -> dict[str, str]:
    """A container step's environment: the host policy (``scrubbed_env``) minus host paths.

    ``PATH`` comes from the image, ``HOME`` is ``/tmp`` (the writable place in a
    read-only root), then ``extra`` applies.
    """
    env = scrubbed_env({})
    for name in _HOST_ONLY_ENV:
        env.pop(name, None)
    env["HOME"] = "/tmp"  # noqa: S108 - the container's own tmpfs
    env.update(extra)
    return env


def remove_containers(labels: Mapping[str, str], *, client: DockerClient | None = None) -> int:
    """Force-remove every ci-runner container carrying ``labels``; return how many.

    For cancellation and cleanup after a crash. Only containers that also carry
    ``ci-runner=1`` are considered, so nothing ci-runner did not start is touched.
    """
    client = client or docker_client()
    found = client.containers.list(all=True, filters={"label": _label_filters(labels)})
    for container in found:
        _remove(container)
    return len(found)


class Removals:
    """Containers of finished steps, being removed in the background.

    Docker takes ~50-100 ms to delete a container; a step's result does not depend
    on it, so its owner (a run's broker) need not wait for it before the next step,
    only before the run ends: ``drain`` waits for every removal handed over.
    Lives on one event loop.
    """

    def __init__(self) -> None:
        self._pending: set[asyncio.Future[None]] = set()

    def add(self, work: Awaitable[None]) -> None:
        future = asyncio.ensure_future(work)
        self._pending.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: asyncio.Future[None]) -> None:
        self._pending.discard(future)
        if not future.cancelled():
            future.exception()  # retrieved: removal errors are suppressed where they occur

    async def drain(self) -> None:
        """Wait until every container handed over so far is removed."""
        while self._pending:
            await asyncio.wait(set(self._pending))

    def __len__(self) -> int:
        return len(self._pending)


class ContainerExecutor:
    """Runs each command in a fresh, hardened container of ``image``.

    ``image`` is a sandbox name (``"python"``, built on first use) or any image
    reference. ``network`` is False (no network), True (the engine's default
    bridge, or the host's network when the engine has no bridge) or a network
    name. ``services`` maps a name to an image started beside the step, reachable
    on localhost and by that name. ``caches`` maps a volume name (the caller scopes
    it per tenant) to a mount path. ``labels`` identify the step for ``adopt``.
    ``user`` defaults to the invoking uid:gid, so files written to the worktree
    are the caller's. ``workspace`` is the worktree to mount when ``spec.cwd`` is a
    directory inside it (default: ``spec.cwd`` itself). With ``removals``, the
    container of a step that ran to its end (with no cache volume and no services)
    is removed in the background and ``removals.drain()`` waits for it; otherwise
    ``run`` returns once its containers are gone.
    """

    def __init__(
        self,
        image: str,
        *,
        network: bool | str = False,
        services: Mapping[str, str] | None = None,
        caches: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        memory: str = "2g",
        cpus: float = 2.0,
        pids_limit: int = 512,
        user: str | None = None,
        workspace: Path | None = None,
        kill_grace_s: float = 2.0,
        client: DockerClient | None = None,
        removals: Removals | None = None,
    ) -> None:
        self.image = image
        self.network = network
        self.services = dict(services or {})
        self.caches = dict(caches or {})
        self.labels = dict(labels or {})
        self.memory = memory
        self.cpus = cpus
        self.pids_limit = pids_limit
        self.user = user or f"{os.getuid()}:{os.getgid()}"
        self.workspace = workspace
        self.kill_grace_s = kill_grace_s
        self._client = client
        self.removals = removals

    async def run(
        self,
        spec: CommandSpec,
        on_output: OutputSink,
        *,
        on_start: Callable[[StartInfo], None] | None = None,
    ) -> CommandResult:
        """Run ``spec`` in a container; ``on_start`` gets ``{"container": id}``.

        See ``Executor.run``. The container and its services are removed however
        the step ends; a timeout stops them and gives exit code 124.
        """
        argv = ["sh", "-c", spec.argv] if isinstance(spec.argv, str) else list(spec.argv)
        masker = Masker([*spec.secrets.values(), *spec.masks])
        if not argv:
            raise ExecutorError(
                f"empty command (step cwd {spec.cwd}): give the step a program to run",
                cwd=str(spec.cwd),
            )
        if not spec.cwd.is_dir():
            raise ExecutorError(
                f"step cwd does not exist: {spec.cwd}: create it or fix the step's cwd",
                cwd=str(spec.cwd),
            )
        env = container_env(spec.env)
        env.update(spec.secrets)
        # Secret names (never values) let adopt() mask a re-attached container's output.
        labels = {**self.labels, LABEL_SECRETS: ",".join(sorted(spec.secrets))}
        client = await self._connect(self.labels)
        pod = _Pod(client, self, labels)
        output = MaskedOutput(masker, on_output, on_mask=spec.on_mask)
        loop = asyncio.get_running_loop()

        def progress(line: str) -> None:
            # A sandbox image built on first use: its progress is the step's output.
            loop.call_soon_threadsafe(output.write, f"{line}\n")

        handed_over = False
        try:
            container = await _settled(asyncio.to_thread(
                pod.create, argv, spec.cwd, env, spec.timeout_s, progress,
            ))
            if on_start is not None:
                on_start({"container": container.id or ""})
            started = time.monotonic()
            await _settled(asyncio.to_thread(pod.start_step, container, masker))
            exit_code, timed_out = await _follow(
                container, output, spec.timeout_s, self.kill_grace_s,
            )
            duration = time.monotonic() - started
            if self.removals is not None and not self.caches and not self.services:
                # Its output and exit code are in: the step is over, the deletion is not
                # part of it. Not so for a pod holding a cache volume (free when the step
                # is, for whoever uses or removes it next) or services (stopped with the
                # step), nor for a step that failed to run or was cancelled.
                self.removals.add(asyncio.to_thread(pod.remove))
                handed_over = True
        finally:
            if not handed_over:
                await _shielded(asyncio.to_thread(pod.remove))
        if output.sink_error is not None:
            raise output.sink_error
        return CommandResult(
            exit_code=_TIMEOUT_EXIT_CODE if timed_out else exit_code,
            duration_s=duration,
            output_tail=output.tail(),
            timed_out=timed_out,
        )

    async def adopt(
        self, labels: Mapping[str, str], on_output: OutputSink | None = None,
    ) -> CommandResult | None:
        """Take over the step container a crashed runner left, found by ``labels``.

        Running, it is re-attached to (its whole output goes to ``on_output`` again)
        and waited for, within what is left of its timeout; exited, its exit code and
        output are collected without running it again. Either way it is removed
        with its services. None when there is nothing to adopt (never started, or
        already removed): the caller runs the step afresh.
        """
        from docker.errors import DockerException

        client = await self._connect(labels)
        filters: dict[str, str | list[str] | bool] = {
            "label": [*_label_filters(labels), f"{LABEL_ROLE}=step"],
        }
        found = await asyncio.to_thread(client.containers.list, all=True, filters=filters)
        if not found:
            return None
        found.sort(key=lambda c: str(c.attrs.get("Created", "")))
        container = found[-1]
        pods = [_Pod(client, self, {}, c.labels.get(LABEL_POD, "")) for c in found]
        try:
            state = container.attrs.get("State", {})
            if state.get("Status") == "created":
                return None  # never started: nothing ran, nothing to record
            env = dict(
                item.split("=", 1) for item in container.attrs["Config"].get("Env") or ()
                if "=" in item
            )
            names = [n for n in container.labels.get(LABEL_SECRETS, "").split(",") if n]
            masker = Masker(env[n] for n in names if n in env)
            output = MaskedOutput(masker, on_output or (lambda _text: None))
            deadline_label = container.labels.get(LABEL_DEADLINE, "")
            deadline = float(deadline_label) if deadline_label else None
            remaining = None if deadline is None else max(0.0, deadline - time.time())
            exit_code, timed_out = await _follow(
                container, output, remaining, self.kill_grace_s,
            )
            with contextlib.suppress(DockerException):  # gone already: keep what we saw
                await asyncio.to_thread(container.reload)
            state = container.attrs.get("State", {})
            started_at = _timestamp(state.get("StartedAt"))
            finished_at = _timestamp(state.get("FinishedAt")) or time.time()
            if (not timed_out and deadline is not None and finished_at >= deadline
                    and exit_code in _KILLED_CODES):
                timed_out = True  # stopped by the runner for its timeout, then it died
            duration = max(0.0, finished_at - started_at) if started_at else 0.0
        finally:
            for pod in pods:
                await _shielded(asyncio.to_thread(pod.remove))
            for leftover in found:
                await _shielded(asyncio.to_thread(_remove, leftover))
        if output.sink_error is not None:
            raise output.sink_error
        return CommandResult(
            exit_code=_TIMEOUT_EXIT_CODE if timed_out else exit_code,
            duration_s=duration,
            output_tail=output.tail(),
            timed_out=timed_out,
        )

    async def _connect(self, labels: Mapping[str, str]) -> DockerClient:
        if self._client is None:
            self._client = await asyncio.to_thread(
                docker_client, step=labels.get("ci-runner.step"), image=self.image,
            )
        return self._client

    def _cpu_limit(self, client: DockerClient) -> float:
        """``cpus``, capped at the engine's CPU count (a limit above it is refused)."""
        return min(self.cpus, float(_engine_facts(client)["cpus"]))

    def _network_mode(self, client: DockerClient) -> str | None:
        bridged = _engine_facts(client)["bridged"]
        if self.network is False:
            # An engine without a bridge (dockerd --bridge=none: CI sandboxes) gives a
            # container loopback only by default; asking for "none" there is equally
            # isolated but costs ~130 ms per container to set up.
            return "none" if bridged else None
        if isinstance(self.network, str):
            return self.network
        return "bridge" if bridged else "host"


class _Pod:
    """The containers of one step (its services, then the step), found again by a pod id.

    Blocking: every method runs in a worker thread.
    """

    def __init__(
        self, client: DockerClient, executor: ContainerExecutor, labels: Mapping[str, str],
        pod_id: str | None = None,
    ) -> None:
        self.client = client
        self.executor = executor
        self.pod_id = pod_id if pod_id is not None else uuid.uuid4().hex
        self.services_started: list[tuple[str, str, Container]] = []
        self.labels = {**labels, LABEL: "1", LABEL_POD: self.pod_id}
        self.image = ""
        # Every container of the pod, once create() has returned; until then a create
        # whose answer was lost may have made one, so removal asks the engine.
        self.known: list[Container] | None = None

    def create(
        self, argv: list[str], cwd: Path, env: dict[str, str], timeout_s: float | None,
        progress: images.Log,
    ) -> Container:
        """Ensure the images, start the services, create (not start) the step container."""
        from docker.errors import DockerException
        from docker.types import Mount

        ex = self.executor
        self.image = images.ensure(ex.image, self.client, log=progress)
        network_mode = ex._network_mode(self.client)
        if ex.services:
            network_mode = self._start_services(network_mode, progress)
        workspace = (ex.workspace or cwd).resolve()
        cwd = cwd.resolve()
        if not cwd.is_relative_to(workspace):
            raise ExecutorError(
                f"step cwd {cwd} is outside the workspace {workspace} that is mounted",
                cwd=str(cwd),
            )
        workdir = PurePosixPath(WORKSPACE, *cwd.relative_to(workspace).parts)
        mounts = [Mount(WORKSPACE, str(workspace), type="bind")]
        mounts += [
            Mount(target, self._cache_volume(volume), type="volume")
            for volume, target in ex.caches.items()
        ]
        # Wall-clock, so a resumed runner can tell what is left of the step's timeout.
        deadline = "" if timeout_s is None else f"{time.time() + timeout_s:.3f}"
        try:
            container = self.client.containers.create(
                self.image,
                entrypoint=_MERGED_OUTPUT,
                command=argv,
                environment=env,
                working_dir=str(workdir),
                user=ex.user,
                mounts=mounts,
                network_mode=network_mode,
                labels={**self.labels, LABEL_ROLE: "step", LABEL_DEADLINE: deadline},
                **self._hardening(),
            )
        except DockerException as exc:  # the engine's refusal, or the SDK's (a bad limit)
            raise ExecutorError(
                f"could not create the container for {self.image}: {_reason(exc)}",
                image=self.image,
            ) from exc
        self.known = [container, *(service for _, _, service in self.services_started)]
        return container

    def start_step(self, container: Container, masker: Masker) -> None:
        from docker.errors import APIError

        try:
            container.start()
        except APIError as exc:
            # A service that exited between its readiness check and now takes the
            # pod's network namespace with it: say so rather than Docker's riddle.
            for name, reference, service in self.services_started:
                _wait_ready(name, reference, service)
            raise ExecutorError(
                masker.mask(f"could not start the step in {self.image}: {_reason(exc)}"),
                image=self.image,
            ) from exc

    def remove(self) -> None:
        """Force-remove every container of this pod, services included."""
        if self.known is not None:
            found = self.known  # the step first: services may own the namespace it joined
        else:
            found = self.client.containers.list(
                all=True, filters={"label": [f"{LABEL}=1", f"{LABEL_POD}={self.pod_id}"]},
            )
            found.sort(key=lambda c: c.labels.get(LABEL_ROLE) != "step")
        for container in found:
            _remove(container)

    def _hardening(self) -> dict[str, Any]:
        ex = self.executor
        return {
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true"],
            "privileged": False,
            "read_only": True,
            "tmpfs": {"/tmp": "rw,exec,nosuid,nodev,mode=1777"},  # noqa: S108 - in the container
            "pids_limit": ex.pids_limit,
            "mem_limit": ex.memory,
            "nano_cpus": int(ex._cpu_limit(self.client) * 1e9),
            "init": True,
            "log_config": {"Type": "json-file", "Config": {}},
        }

    def _start_services(self, network_mode: str | None, progress: images.Log) -> str:
        """Start the services; the first owns the pod's network namespace. Returns the
        network mode that joins it."""
        from docker.errors import APIError

        services = self.executor.services
        owner: Container | None = None
        started: list[tuple[str, str, Container]] = []
        for name, image in services.items():
            reference = images.ensure(image, self.client, log=progress)
            mode = network_mode if owner is None else f"container:{owner.id}"
            options = self._hardening()
            options["tmpfs"] = {**options["tmpfs"], "/run": "rw,nosuid,nodev,mode=1777"}
            if owner is None:
                # Joined containers share the owner's /etc/hosts: every service
                # answers to its name on localhost.
                options["extra_hosts"] = dict.fromkeys(services, "127.0.0.1")
            try:
                container = self.client.containers.create(
                    reference, network_mode=mode,
                    labels={**self.labels, LABEL_ROLE: "service", LABEL_SERVICE: name},
                    **options,
                )
                container.start()
            except APIError as exc:
                raise ExecutorError(
                    f"could not start service {name!r} ({reference}): {_reason(exc)}",
                    service=name, image=reference,
                ) from exc
            owner = owner or container
            started.append((name, reference, container))
        for name, reference, container in started:
            _wait_ready(name, reference, container)
        self.services_started = started
        assert owner is not None
        return f"container:{owner.id}"

    def _cache_volume(self, name: str) -> str:
        """Get or create the named volume; a new one is handed to the step's user."""
        from docker.errors import DockerException, NotFound

        try:
            self.client.volumes.get(name)
        except NotFound:
            self.client.volumes.create(name, labels={LABEL: "1"})
            if self.executor.user.split(":")[0] not in ("0", "root"):
                # A fresh volume is root's; the step runs as the invoking user.
                with contextlib.suppress(DockerException):
                    self.client.containers.run(
                        self.image, entrypoint=["chown", self.executor.user, "/cache"],
                        command=[], user="0:0", network_mode="none", remove=True,
                        cap_drop=["ALL"], cap_add=["CHOWN"],
                        security_opt=["no-new-privileges:true"],
                        volumes={name: {"bind": "/cache", "mode": "rw"}},
                        labels={LABEL: "1", LABEL_ROLE: "chown"},
                    )
        return name


async def _follow(
    container: Container, output: MaskedOutput, timeout_s: float | None, grace_s: float,
) -> tuple[int, bool]:
    """Stream the container's output until it exits or times out; its exit code and
    whether it timed out. The stream is the container's log (all of it, from the start)."""
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[BaseException | None] = loop.create_future()
    aborted: asyncio.Future[None] = loop.create_future()

    def deliver(data: bytes) -> None:
        output.feed(data)
        if output.sink_error is not None and not aborted.done():
            aborted.set_result(None)

    def finish(error: BaseException | None) -> None:
        output.close()
        if not ended.done():
            ended.set_result(error)

    def pump() -> None:
        error: BaseException | None = None
        try:
            for chunk in container.logs(stream=True, follow=True, stdout=True, stderr=True):
                loop.call_soon_threadsafe(deliver, chunk)
        except Exception as exc:  # the engine went away, or the container did
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(finish, error)

    threading.Thread(target=pump, name=f"logs-{container.short_id}", daemon=True).start()
    timed_out = False
    try:
        await asyncio.wait(
            (ended, aborted), timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED,
        )
        if not ended.done():
            timed_out = not aborted.done()
            await asyncio.to_thread(_stop, container, grace_s)
            await asyncio.wait((ended,), timeout=grace_s + 30)
    except BaseException:
        await _shielded(asyncio.to_thread(_stop, container, grace_s))
        raise
    try:
        result = await asyncio.to_thread(container.wait, timeout=grace_s + 30)
    except Exception as exc:  # docker's and requests' errors alike: the engine is gone
        raise ExecutorError(
            f"lost container {container.short_id} before it reported its exit code: {exc}",
            container=container.id,
        ) from exc
    return int(result.get("StatusCode", 1)), timed_out


def _wait_ready(name: str, reference: str, container: Container) -> None:
    """Block until a service is healthy (when its image has a health check) or fail if
    it exited."""
    deadline = time.monotonic() + _SERVICE_READY_S
    while True:
        container.reload()
        state = container.attrs.get("State", {})
        health = (state.get("Health") or {}).get("Status")
        if state.get("Status") in ("exited", "dead"):
            logs = container.logs(tail=10).decode(errors="replace").strip()
            raise ExecutorError(
                f"service {name!r} ({reference}) exited with code {state.get('ExitCode')} "
                f"before the step started: {logs[-500:] or 'no output'}",
                service=name, image=reference,
            )
        if health in (None, "healthy"):
            return
        if health == "unhealthy" or time.monotonic() > deadline:
            raise ExecutorError(
                f"service {name!r} ({reference}) did not become healthy within "
                f"{_SERVICE_READY_S:g}s (health: {health})",
                service=name, image=reference,
            )
        time.sleep(0.1)


def _stop(container: Container, grace_s: float) -> None:
    from docker.errors import DockerException

    with contextlib.suppress(DockerException):
        container.stop(timeout=max(0, round(grace_s)))


def _remove(container: Container) -> None:
    from docker.errors import DockerException

    with contextlib.suppress(DockerException):
        container.remove(force=True, v=True)


async def _settled(work: Awaitable[T]) -> T:
    """Await ``work`` (a worker thread); if cancelled, let it finish before re-raising,
    so cleanup sees whatever it created."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait((task,))
        raise


async def _shielded(work: Awaitable[None]) -> None:
    """Cleanup that a second cancellation cannot interrupt halfway."""
    await asyncio.shield(asyncio.ensure_future(work))


def _label_filters(labels: Mapping[str, str]) -> list[str]:
    return [f"{LABEL}=1", *(f"{key}={value}" for key, value in labels.items())]


def _timestamp(value: Any) -> float | None:
    """Docker's RFC 3339 times (nanoseconds, ``Z``) as Unix time; None when unset."""
    if not isinstance(value, str) or value.startswith("0001-"):
        return None
    stamp, _, fraction = value.rstrip("Z").partition(".")
    digits = "".join(ch for ch in fraction if ch.isdigit())
    zone = fraction[len(digits):] or "+00:00"
    parsed = datetime.fromisoformat(f"{stamp}.{(digits or '0')[:6]:0<6}{zone}")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def _reason(exc: Exception) -> str:
    explanation = getattr(exc, "explanation", None)
    return " ".join(str(explanation or exc).split())[:300]
