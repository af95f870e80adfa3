"""Starting and driving CI runs: resolve the sha, wrap the envelope, create the
instance, drive it, and clean up the worktree when the run is over.

A run holds a worktree only while a driver drives it: a queued run has none (the
number of waiting runs must not slow git, whose worktree commands read every entry),
the driver forks one at the run's sha holding only ``.ci/`` (the broker checks out
the rest when a step first needs the files, so a run served from the cache checks
out nothing else), and removes it when the run hibernates or is handed back; the
next drive forks it again at the same sha."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ci_runner import paths
from ci_runner.dispatch.envelope import PIPELINE_FILE, WORKFLOW, unwrap_params, wrap_params
from ci_runner.engine.driver import Engine, new_instance_id
from ci_runner.engine.process import ChildProcess, start_child
from ci_runner.engine.service import Observer
from ci_runner.errors import PipelineNotFound, UsageError
from ci_runner.store.db import immediate, now

if TYPE_CHECKING:
    from ci_runner.workflows.plan import Selection

TERMINAL = ("complete", "errored", "terminated")


@dataclass(frozen=True)
class RunRequest:
    """What `ci-runner run` (or a webhook, or watch) asks for."""

    repo_path: Path
    rev: str = "HEAD"
    include_uncommitted: bool = False
    params: dict[str, Any] = field(default_factory=dict)
    pipeline: str | None = None
    trigger: str = "cli"
    keep_workspace: bool = False
    secrets_file: Path | None = None
    only: tuple[str, ...] = ()  # run just these steps; the others are recorded as skipped
    skip: tuple[str, ...] = ()  # skip these steps
    no_cache: bool = False  # ignore the input-keyed step cache
    sandbox: str | None = None  # auto | bwrap | landlock | off (None: CI_RUNNER_SANDBOX or auto)
    timeout_s: float | None = None  # how long each drive of the run may last
    # More metadata for the envelope (a webhook's forge, delivery, PR...): no secrets.
    extra: dict[str, Any] = field(default_factory=dict)
    # Run the repo's GitHub workflows (--workflow, --job, --event...): a
    # ``workflows.plan.Selection``; also taken when the repo has no .ci/pipeline.py.
    workflows: Selection | None = None


def check_names(only: tuple[str, ...], skip: tuple[str, ...]) -> None:
    """--only/--skip name steps: any name is taken (a step the last run never reached,
    one new in this commit), and the run's record says at its end which of them it never
    reached (``selection.unreached``). Refused: what cannot be a step's name (as
    ``step.run`` refuses it), and a name both selected and skipped."""
    for name in (*only, *skip):
        if not name or len(name) > 200:
            raise UsageError(f"--only/--skip: {name!r} cannot be a step's name (a step's"
                             " name is 1-200 characters)")
    both = [n for n in dict.fromkeys(only) if n in skip]
    if both:
        raise UsageError(f"{', '.join(map(repr, both))} is in both --only and --skip:"
                         " say one of them")


def reap_orphan(detail: dict[str, Any]) -> None:
    """Kill the process group a dead runner's light step left behind."""
    pgid = detail.get("pgid")
    if not isinstance(pgid, int) or pgid <= 1:
        return
    from ci_runner.dispatch.seal import sealed

    if not sealed(detail):
        return  # relayed by the pipeline process, not reported by the broker: not ours
    if detail.get("host", socket.gethostname()) != socket.gethostname():
        return  # another machine's process: its own runner (or reboot) deals with it
    from ci_runner.engine.leases import start_time
    from ci_runner.executors import kill_process_group

    now_start = start_time(pgid)
    if now_start != "0" and now_start != detail.get("pgid_start", now_start):
        return  # the pid was recycled by an unrelated process group leader
    kill_process_group(pgid)


class RunRules:
    """The engine's ``Rules`` for CI runs, from each run's stored metadata: a fork's
    run writes its step cache under its pull request and reads the repo's too; a wait
    may be recorded as skipped only when the run's --only/--skip leave it out."""

    def cache_scopes(self, instance: Mapping[str, Any]) -> tuple[str, list[str]]:
        from ci_runner.dispatch.broker import cache_scope

        tenant = str(instance["tenant"])
        metadata = _metadata(instance)
        scope = cache_scope({**metadata, "tenant": tenant})
        return scope, list(dict.fromkeys([scope, tenant]))

    def may_skip(
        self, instance: Mapping[str, Any], name: str, kind: str, *, after_skipped_wait: bool
    ) -> bool:
        metadata = _metadata(instance)
        only, skip = set(metadata.get("only") or ()), set(metadata.get("skip") or ())
        if not (only or skip):
            return False
        return after_skipped_wait or (bool(only) and name not in only) or name in skip


def _metadata(instance: Mapping[str, Any]) -> dict[str, Any]:
    try:
        metadata, _ = unwrap_params(json.loads(instance["payload"]))
    except (ValueError, TypeError, UsageError):
        return {}
    return metadata


# A driver started by a worker or the server is interrupted to hand its run back
# (shutdown): it says so with this variable, and the run is queued for the next one.
# Anyone else's Ctrl-C means stop: the run is 'interrupted', driven again only by resume.
REQUEUE_ENV = "CI_RUNNER_ON_INTERRUPT"


def sweep_orphans(instance: Mapping[str, Any]) -> None:
    """Stop what a dead driver of this run left running in its worktree that the journal
    does not name: the command of a step it began just before it died, whose process
    group was not written yet. Where pids cgroups can be had, the broker also stops
    what is left in the run's; this is the net where they cannot. Processes of this
    driver (the pipeline process already started for this drive) are spared."""
    workspace = _metadata(instance).get("workspace")
    if not isinstance(workspace, str) or not workspace:
        return
    from ci_runner.executors import stop_processes_in

    stop_processes_in(Path(workspace), spare=_descendants(os.getpid()))


def _descendants(pid: int) -> set[int]:
    """The processes started, directly or not, by ``pid``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])  # "pid (comm) state ppid ..."
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def open_engine() -> Engine:
    engine = Engine(paths.database(), reap_orphan=reap_orphan, fork_children=True,
                    rules=RunRules(), sweep_orphans=sweep_orphans)
    if os.environ.get(REQUEUE_ENV) != "requeue":
        engine.interrupted_status = "interrupted"
    return engine


def warm_child(
    run_id: str, *, repo_path: Path | None = None, sandbox: str | None = None,
    metadata: dict[str, Any] | None = None, log_dir: Path | None = None,
) -> ChildProcess:
    """Start the run's pipeline process early, so its start-up overlaps the git work.

    Forked when this process has one thread (the CLI) and the sandbox allows it:
    best before the database is opened, though the child closes every descriptor but
    its pipe, its broker socket and stdio anyway. In a bubblewrap sandbox it is
    spawned, its worktree's folder made empty now for git to fill in.
    """
    meta = metadata or {
        "run_id": run_id, "workspace": str(paths.worktrees() / run_id),
        "repo": str(Path(repo_path or ".").absolute()), "sandbox": sandbox,
    }
    from ci_runner.dispatch.confine import plan

    confinement = plan(meta)
    child = _start_child(run_id, meta, confinement, fork=True, log_dir=log_dir)
    # Meanwhile, Docker (the SDK's import, a connection) if the pipeline names an image;
    # after the fork, which a live thread would have made a spawn.
    folders = [Path(meta["workspace"]) / ".ci", Path(str(meta["repo"])) / ".ci"]
    threading.Thread(target=_connect_docker, args=(folders,), daemon=True).start()
    return child


def _connect_docker(folders: list[Path]) -> None:
    from ci_runner.executors.container import connect_ahead

    connect_ahead(folders)


def discard_child(run_id: str, child: ChildProcess) -> None:
    """Stop a pipeline process started for a run that never got stored, and leave
    nothing of that run behind: its log folder, its empty worktree folder, its scratch."""
    import shutil

    from ci_runner.dispatch.confine import remove_scratch

    child.close()
    shutil.rmtree(paths.run_logs(run_id), ignore_errors=True)
    workspace = paths.worktrees() / run_id
    with contextlib.suppress(OSError):
        workspace.rmdir()  # only if git never filled it
    remove_scratch(run_id)


def _start_child(
    run_id: str, metadata: dict[str, Any], confinement: Any, *, fork: bool,
    log_dir: Path | None = None,
) -> ChildProcess:
    from ci_runner.dispatch.confine import BROKER_FD_ENV
    from ci_runner.dispatch.unfilled import FILES_FD_ENV

    workspace = Path(metadata["workspace"])
    workspace.mkdir(parents=True, exist_ok=True)  # bound into the sandbox before git fills it
    confinement.prepare()
    log_dir = log_dir or paths.run_logs(run_id)
    log_dir.mkdir(parents=True, exist_ok=True)
    ours, theirs = socket.socketpair()
    # The pipeline's code asks through this one, blocking, for the worktree's files when
    # it reads them outside a step before any step needed them (dispatch.unfilled).
    files_ours, files_theirs = socket.socketpair()
    # The pipeline's own output goes through the broker, which masks it into
    # pipeline.log (a print of a secret it read from a file, say).
    out_r, out_w = os.pipe()
    try:
        env = confinement.child_env(os.environ)
        env[BROKER_FD_ENV] = str(theirs.fileno())
        env[FILES_FD_ENV] = str(files_theirs.fileno())
        # What a CI run's pipeline process needs, imported while git forks the worktree.
        env["CI_RUNNER_PRELOAD"] = ",".join((
            "ci_runner.dispatch.dispatcher", "ci_runner.dispatch.loader",
            "ci_runner.dispatch.pipeline", "ci_runner.dispatch.broker",
            "ci_runner.dispatch.steplog", "ci_runner.engine.policy"))
        with os.fdopen(out_w, "wb", closefd=True) as stdio:
            child = start_child(stdio=stdio, env=env, fork=fork, confinement=confinement.process(
                (theirs.fileno(), files_theirs.fileno())))
    except BaseException:
        ours.close()
        files_ours.close()
        os.close(out_r)
        raise
    finally:
        theirs.close()
        files_theirs.close()
    child.side = ours
    child.extra = (files_ours,)
    child.info = confinement
    child.output = out_r
    (log_dir / paths.PIPELINE_LOG).touch()
    return child


def start_run(engine: Engine, request: RunRequest, *, run_id: str | None = None) -> str:
    """Store the queued run; returns the run id. Its worktree is forked by its driver.

    Nothing is left when the repo, the rev or the pipeline file is missing. The git
    processes on this path are counted (tests/test_cli_startup.py): one finds the repo
    and the commit, one reads the pipeline file.
    """
    from ci_runner.workspace import hold, open_repo, resolve_rev, snapshot_uncommitted, tenant_key
    from ci_runner.workspace.worktree import RepoInfo, locate

    if request.include_uncommitted and request.rev != "HEAD":
        raise UsageError(
            "--include-uncommitted runs the working tree; it cannot be combined with --rev"
        )
    check_names(request.only, request.skip)
    if request.secrets_file is not None:
        from ci_runner.secrets import check_secrets_file

        check_secrets_file(request.secrets_file)
    store: RepoInfo | None = None  # where the snapshot's objects are, not the user's .git
    if request.include_uncommitted:
        repo = open_repo(request.repo_path)
        snapshot = snapshot_uncommitted(repo)
        sha, store = snapshot.sha, snapshot.store
        try:
            ref = resolve_rev(repo, "HEAD").ref
        except Exception:
            ref = None
    else:
        repo, resolved = locate(request.repo_path, request.rev)
        sha, ref = resolved.sha, resolved.ref
    secrets_file = request.secrets_file
    if secrets_file is None:  # else the repo's own store (`ci-runner secrets set`), if any
        from ci_runner.secrets import stored_secrets_file

        secrets_file = stored_secrets_file(tenant_key(repo))
    source_repo = store or repo
    from ci_runner.workspace import file_at
    from ci_runner.workspace.submodules import declared_submodules

    # What to run, read from git (no checkout: the driver forks the worktree).
    source = (None if request.workflows is not None
              else file_at(source_repo, sha, PIPELINE_FILE))
    workflow_meta: dict[str, Any] = {}
    if source is None:
        workflow_meta = _workflow_metadata(source_repo, sha, ref, request, secrets_file,
                                           shown=repo.root)
    submodules = declared_submodules(source, request.pipeline) if source is not None else True
    run_id = run_id or new_instance_id()
    workspace = paths.worktrees() / run_id
    tenant = tenant_key(repo)
    metadata = {
        "tenant": tenant, "repo": str(repo.root), "repo_name": repo.name, "sha": sha,
        "git_common_dir": str(repo.common_dir),
        "ref": ref, "pipeline": request.pipeline, "pipeline_file": PIPELINE_FILE,
        "workspace": str(workspace), "trigger": request.trigger,
        "snapshot": request.include_uncommitted, "run_id": run_id,
        "snapshot_store": str(store.root) if store is not None else None,
        "keep_workspace": request.keep_workspace,
        "secrets_file": str(secrets_file) if secrets_file else None,
        "only": list(request.only), "skip": list(request.skip), "no_cache": request.no_cache,
        "sandbox": request.sandbox, "timeout_s": request.timeout_s,
        "submodules": submodules,
        **workflow_meta,
        **request.extra,
    }
    if store is not None:
        hold(store, run_id, sha)
    _upsert_tenant(engine, tenant, repo.name, str(repo.root))
    engine.create(WORKFLOW, wrap_params(metadata, request.params), tenant=tenant,
                  instance_id=run_id, claim=True)
    return run_id


def _pipeline_source(repo: Any, sha: str, workspace: Path) -> bytes | None:
    """The run's pipeline file, read from its fresh checkout (no git process); from git
    when the checkout has no plain file there (a symlink, a sparse checkout); None when
    the commit has none."""
    from ci_runner.workspace import file_at

    path = workspace / PIPELINE_FILE
    if not (path.is_symlink() or path.parent.is_symlink()) and path.is_file():
        return path.read_bytes()
    return file_at(repo, sha, PIPELINE_FILE)


def _workflow_metadata(repo: Any, sha: str, ref: str | None, request: RunRequest,
                       secrets_file: Path | None, *, shown: Path | None = None
                       ) -> dict[str, Any]:
    """A run of the repo's GitHub workflows, checked now: the repo has no
    .ci/pipeline.py, or the user asked for workflows. ``repo`` holds ``sha``: a
    snapshot's store, or the repository itself; ``shown``, the one messages name."""
    from ci_runner.workflows.launch import has_workflows, workflow_metadata
    from ci_runner.workflows.plan import Selection

    if request.workflows is None and not has_workflows(repo, sha):
        raise PipelineNotFound(
            f"no {PIPELINE_FILE} and no .github/workflows/*.yml in {shown or repo.root} at"
            f" {sha[:12]}: `ci-runner init` writes a starter (commit it, or run with"
            " --include-uncommitted)"
        )
    event = request.extra.get("event")  # a webhook's: push or pull_request
    selection = request.workflows if request.workflows is not None else Selection(
        event=event if event in ("push", "pull_request") else "push")
    # A fork's run gets no secrets: its workflows see none of their names either.
    meta = workflow_metadata(repo, sha, ref, selection,
                             None if request.extra.get("untrusted") else secrets_file)
    if request.extra.get("loader"):  # a fork's gate: it loads the workflows once approved
        meta["inner_loader"] = meta.pop("loader")
    if request.extra.get("sender"):
        meta["gha"]["actor"] = str(request.extra["sender"])
    return meta


def say_of_workspace(run_id: str, notes: list[str]) -> None:
    """What the run's worktree lacks (a submodule left empty, and why), in the run's
    own output (``ci-runner logs RUN``) and on stderr."""
    if not notes:
        return
    log_dir = paths.run_logs(run_id)
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / "pipeline.log").open("a", encoding="utf-8") as out:
        out.writelines(f"ci-runner: {note}\n" for note in notes)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


def drive_run(
    engine: Engine,
    run_id: str,
    observer: Observer | None = None,
    *,
    child: ChildProcess | None = None,
) -> str:
    """Drive the run in this process until it ends or hibernates; returns its status.

    Its pipeline process runs in the run's sandbox, and its steps' commands are run
    by a broker in this process (``dispatch.broker``), from what the run's stored
    metadata allows."""
    from ci_runner.dispatch.broker import RunContext, StepBroker
    from ci_runner.dispatch.confine import plan

    row = engine.get(run_id)
    run_id = str(row["id"])
    from ci_runner.dispatch.fleet import localize

    metadata = localize(engine.conn, row)  # a run created on another host: forked here
    workspace = Path(metadata["workspace"])
    if not (workspace / ".git").exists():
        _refork(metadata, workspace)  # here, not in the sandbox: it cannot write git's files
    try:
        confinement = plan(metadata)
    except BaseException:
        if child is not None:
            child.close()
        raise
    if child is not None and not _same_sandbox(child.info, confinement):
        child.close()  # started before the run's own metadata was known
        child = None
    if child is None:
        child = _start_child(run_id, metadata, confinement, fork=engine.fork_children)
    else:
        confinement.prepare()
    assert child.side is not None
    from ci_runner.dispatch.redact import Redactor

    context = RunContext.from_metadata(metadata, confinement)
    redactor = Redactor.for_secrets_file(context.secrets_file)
    log_dir = paths.run_logs(run_id)
    log_dir.mkdir(parents=True, exist_ok=True)
    broker = StepBroker(context, child.side, redactor=redactor, output=child.output,
                        files=child.extra[0] if child.extra else None,
                        pipeline_log=log_dir / paths.PIPELINE_LOG,
                        on_output=_pipeline_output(observer))
    child.output = None  # the broker's now: it reads it to the end, then closes it
    broker.start()
    try:
        try:
            status = engine.drive(run_id, observer=observer, child=child, redactor=redactor,
                                  timeout_s=metadata.get("timeout_s"))
        finally:
            broker.close()
    except KeyboardInterrupt:
        put_away_workspace(engine, metadata)  # handed back or interrupted: driven again later
        raise
    except (OSError, sqlite3.OperationalError) as exc:
        from ci_runner.errors import disk_full

        if not disk_full(exc):
            raise
        _out_of_space(engine, metadata, exc)
        raise
    if status in ("terminated", "errored"):
        # Cancelled or crashed: a command started just before may not have had its
        # process group recorded, so the engine could not stop it. Find it by where
        # it runs, even if `cancel` removed the folder meanwhile (the pipeline process
        # is gone, so nothing new starts there).
        from ci_runner.executors import stop_processes_in

        stop_processes_in(workspace)
    if status in TERMINAL:
        if metadata.get("keep_workspace"):
            _fill(metadata)  # kept to be looked at: with its files, even if no step ran
        finish_workspace(metadata)
    else:
        put_away_workspace(engine, metadata)
    return status


def put_away_workspace(engine: Engine, metadata: dict[str, Any]) -> None:
    """Remove the worktree of a run that is no longer driven but not over (it waits for
    an approval, an event or a timer, or was handed back): it holds none until a driver
    takes it again, which forks it anew at the same sha. Files its steps made are gone
    then, as between the jobs of other CI systems; artifacts keep what must last.
    A worktree the run keeps (``--keep-workspace``) stays."""
    if metadata.get("keep_workspace"):
        return
    try:
        row = engine.get(str(metadata["run_id"]))
    except Exception:
        return
    if row["status"] in ("running", *TERMINAL):
        return  # taken over by another driver meanwhile, or ended by another process
    from ci_runner.dispatch.confine import remove_scratch
    from ci_runner.errors import CIRunnerError
    from ci_runner.workspace import remove

    try:
        remove(_checkout_source(metadata), Path(metadata["workspace"]))
    except CIRunnerError as exc:  # the repo moved away, say: nothing of ours to remove
        print(f"note: the worktree of run {metadata['run_id']} was left: {exc.message}",
              file=sys.stderr)
    remove_scratch(str(metadata["run_id"]))


def _checkout_source(metadata: dict[str, Any]) -> Any:
    """The repository (or snapshot store) the run's worktree is a worktree of."""
    from ci_runner.workspace.snapshots import checkout_source

    return checkout_source(metadata["repo"], metadata.get("snapshot_store"),
                           metadata.get("git_common_dir"))


def _fill(metadata: dict[str, Any]) -> None:
    from ci_runner.errors import CIRunnerError
    from ci_runner.workspace import fill

    try:
        notes = fill(_checkout_source(metadata), str(metadata["sha"]),
                     Path(metadata["workspace"]), submodules=metadata.get("submodules", True))
    except CIRunnerError as exc:
        print(f"note: the kept worktree holds only .ci/: {exc.message}", file=sys.stderr)
        return
    say_of_workspace(str(metadata["run_id"]), notes)


def _pipeline_output(observer: Observer | None) -> Callable[[str], None] | None:
    """The pipeline process's own output (masked) as observer events, for the live view."""
    if observer is None:
        return None
    return lambda text: observer({"type": "pipeline_output", "text": text})


def _out_of_space(engine: Engine, metadata: dict[str, Any], exc: BaseException) -> None:
    """The disk filled up while the run ran (its own output, most likely): free what the
    run holds (its processes, worktree and private folders), then record it as failed,
    so that it is not driven again into the same wall and the machine's other runs go on.
    Raises the one line to show; nothing committed before is lost."""
    from ci_runner.dispatch.confine import remove_scratch
    from ci_runner.errors import CIRunnerError
    from ci_runner.executors import stop_processes_in
    from ci_runner.store import journal as j

    run_id, workspace = str(metadata["run_id"]), Path(metadata["workspace"])
    stop_processes_in(workspace)
    finish_workspace(metadata, even_kept=True)
    remove_scratch(run_id)
    why = (f"the disk filled up while the run ran ({exc}); its worktree was removed to free"
           " the space")
    try:
        j.terminate(engine.conn, run_id, status="errored",
                    error={"type": "StepFailed", "message": why, "fields": {}})
    except Exception:
        raise CIRunnerError(
            f"run {run_id}: the disk is full ({paths.home()}); nothing committed is lost:"
            f" free space, then `ci-runner resume {run_id}`") from exc
    raise CIRunnerError(f"run {run_id} failed: {why}") from exc


def _same_sandbox(started: Any, wanted: Any) -> bool:
    if started is None:
        return False
    return bool(started.kind == wanted.kind and started.network == wanted.network
                and started.workspace == wanted.workspace and started.ids == wanted.ids)


def _refork(metadata: dict[str, Any], workspace: Path) -> None:
    from ci_runner.workspace import fork
    from ci_runner.workspace.snapshots import checkout_source

    folder = str(Path(str(metadata.get("pipeline_file", PIPELINE_FILE))).parent)
    # --force: git may still have it registered, its folder gone or left empty.
    fork(checkout_source(metadata["repo"], metadata.get("snapshot_store"),
                         metadata.get("git_common_dir")),
         str(metadata["sha"]), workspace, again=True,
         submodules=metadata.get("submodules", True), only=folder)


def finish_workspace(metadata: dict[str, Any], *, even_kept: bool = False) -> str | None:
    """Remove the run's worktree (unless kept, or ``even_kept``) and let go of its
    snapshot; returns why nothing could be done when the repo cannot be opened (moved,
    deleted): its files are then not ours to touch."""
    from ci_runner.workspace import release, remove
    from ci_runner.workspace.snapshots import checkout_source

    try:  # the repository, or the snapshot's store: the worktree is one of its
        repo = checkout_source(metadata["repo"], metadata.get("snapshot_store"),
                               metadata.get("git_common_dir"))
    except Exception as exc:
        return str(getattr(exc, "message", exc))
    if even_kept or not metadata.get("keep_workspace"):
        remove(repo, Path(metadata["workspace"]))
        from ci_runner.dispatch.confine import remove_scratch

        remove_scratch(str(metadata["run_id"]))
    if metadata.get("snapshot"):
        release(repo, str(metadata["run_id"]))
    return None


def _upsert_tenant(engine: Engine, key: str, name: str, location: str) -> None:
    with immediate(engine.conn):
        engine.conn.execute(
            "INSERT INTO tenants (key, name, location, created_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(key) DO UPDATE SET location = excluded.location",
            (key, name, location, now()),
        )
