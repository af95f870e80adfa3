"""A workflow translated into a ci-runner run: ``WorkflowPipeline`` is the built-in
pipeline of a repo that has ``.github/workflows/*.yml`` but no ``.ci/pipeline.py``.

Each job cell is a group of steps named ``test (3.11) / Run tests``; ``needs`` is
ordering, independent jobs and cells run side by side (asyncio tasks); every
``run:`` is a ``step.run`` and each stand-in action a ``step.do`` or ``step.run``.
Every decision a later step depends on (a step's outputs, its GITHUB_ENV/PATH, its
outcome, a job's result) comes out of a durable step result, so a resumed run
replays to the same decisions without running anything twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ci_runner.dispatch.pipeline import Pipeline, PipelineEvent, PipelineStep
from ci_runner.errors import StepFailed
from ci_runner.workflows import commands, contexts
from ci_runner.workflows.model import Job, Step, Workflow
from ci_runner.workflows.plan import Cell, Selection, choose, expand_job, job_order, platform
from ci_runner.workflows.source import WorkflowError

if TYPE_CHECKING:
    from ci_runner.workflows.expressions import Status

JOBS_DIR = ".ci-runner-jobs"  # each job cell's own checkout, inside the run's worktree
CONTAINER_WORKSPACE = "/workspace"  # where a heavy step sees the run's worktree
_IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_NAME_MAX = 190


@dataclass
class JobResult:
    result: str  # success | failure | cancelled | skipped
    outputs: dict[str, str] = field(default_factory=dict)


class WorkflowPipeline(Pipeline):
    """Runs the workflows the run's metadata selected, from its own worktree."""

    name = "github-workflows"

    def __init__(self, metadata: Mapping[str, Any]) -> None:
        self.metadata = metadata

    async def run(self, event: PipelineEvent, step: PipelineStep) -> Any:
        from ci_runner.workflows.plan import load_all

        gha = self.metadata["gha"]
        selection = Selection.from_json(gha["selection"])
        root = event.workspace

        def read(path: str) -> bytes | None:
            try:
                return (root / path).read_bytes()
            except OSError:
                return None

        workflows = choose(load_all(read, gha["files"]), selection, ref=event.ref)
        several = len(workflows) > 1
        runs = [WorkflowRun(self.metadata, w, selection, step, root, several)
                for w in workflows]
        for flow in runs:  # --param NAME=VALUE gives a workflow_dispatch input
            flow.inputs.update({k: v for k, v in event.payload.items() if k in flow.inputs})
        results = await asyncio.gather(*(r.run() for r in runs))
        summaries = [s for r in runs for s in r.summaries]
        for title, text in summaries:
            print(f"--- summary of {title}\n{text.rstrip()}")
        failed = [label for r in results for label, res in r.items()
                  if res.result == "failure"]
        jobs = {label: {"result": res.result, "outputs": res.outputs}
                for r in results for label, res in r.items()}
        if failed:
            raise StepFailed(f"jobs failed: {', '.join(failed)}", jobs=failed)
        return {"jobs": jobs, "summary": "\n".join(t for _, t in summaries)}


class WorkflowRun:
    """One workflow's jobs, each started once what it needs has ended."""

    def __init__(self, metadata: Mapping[str, Any], workflow: Workflow, selection: Selection,
                 step: PipelineStep, root: Path, prefix: bool) -> None:
        self.metadata = metadata
        self.workflow = workflow
        self.selection = selection
        self.step = step
        self.root = root
        self.prefix = f"{Path(workflow.path).stem}: " if prefix else ""
        gha = metadata["gha"]
        self.tools: dict[str, Any] = gha.get("tools", {})
        # RUNNER_TEMP: in the run's worktree (each cell its own), so it goes with it.
        self.runner = contexts.runner_context(str(root / JOBS_DIR / ".temp"))
        self.github = contexts.github_context(metadata, selection.event, workflow, str(root))
        self.secrets = {name: contexts.secret_marker(name)
                        for name in gha.get("secret_names", [])}
        self.inputs = _input_defaults(workflow.on.get("workflow_dispatch"))
        self.results: dict[str, asyncio.Future[JobResult]] = {}
        self.labels: dict[str, JobResult] = {}
        self.summaries: list[tuple[str, str]] = []
        self.base_path = os.environ.get("PATH", "/usr/bin:/bin")

    def contexts(self, **more: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "github": self.github, "runner": self.runner, "secrets": self.secrets,
            "vars": {}, "inputs": self.inputs, "env": {}, "matrix": {}, "strategy": {},
            "steps": {}, "needs": {}, "job": {"status": "success"}, "jobs": {},
        }
        base.update(more)
        return base

    async def run(self) -> dict[str, JobResult]:
        jobs = job_order(self.workflow, self.selection.job)
        loop = asyncio.get_running_loop()
        for job in jobs:
            self.results[job.id] = loop.create_future()
        tasks = [asyncio.ensure_future(self._job(job)) for job in jobs]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()
        return self.labels

    async def _job(self, job: Job) -> None:
        needs = {n: await self.results[n] for n in job.needs}
        try:
            result = await self._job_cells(job, needs)
        except BaseException:
            self.results[job.id].set_result(JobResult("failure"))
            raise
        self.results[job.id].set_result(result)

    async def _job_cells(self, job: Job, needs: dict[str, JobResult]) -> JobResult:
        from ci_runner.workflows import expressions

        needs_ctx = {n: {"result": r.result, "outputs": r.outputs} for n, r in needs.items()}
        ctx = self.contexts(needs=needs_ctx, env=self._env(self.workflow.env, {}))
        label = self.prefix + str(job.name or job.id) if job.name is None \
            or "${{" not in str(job.name) else self.prefix + job.id
        results = {r.result for r in needs.values()}
        status: Status = "failure" if "failure" in results else \
            "cancelled" if "cancelled" in results else "success"
        cond = job.if_
        if "skipped" in results and status == "success" and not _has_status_function(cond):
            return await self._skip_job(label, "a job it needs was skipped")
        try:
            run_it = expressions.evaluate_if(cond, ctx, expressions.Functions(status=status))
        except expressions.ExpressionError as exc:
            raise WorkflowError(f"{self.workflow.path}:{job.line}: jobs.{job.id}.if: {exc}"
                                ) from None
        if not run_it:
            why = "a job it needs failed" if status == "failure" and cond is None \
                else f"if: {_shown(cond)} was false"
            return await self._skip_job(label, why)
        if job.uses is not None:
            from ci_runner.workflows.reusable import run_reusable

            return await run_reusable(self, job, ctx, label)
        try:
            expanded = expand_job(job, ctx, self.selection.matrix)
        except WorkflowError as exc:
            raise WorkflowError(f"{self.workflow.path}:{job.line_of('strategy')}:"
                                f" {exc.message}") from None
        if not expanded.cells:
            return await self._skip_job(label, "no matrix cell matches --matrix")
        limit = asyncio.Semaphore(expanded.max_parallel or len(expanded.cells))
        failed: list[str] = []  # with fail-fast: the cell that failed first
        tasks: list[asyncio.Task[JobResult]] = []

        async def one(cell: Cell) -> JobResult:
            label = self.prefix + cell.label
            started = False
            try:
                async with limit:
                    if failed:
                        return await self._skip_job(label, f"fail-fast: {failed[0]} failed")
                    started = True
                    strategy = {"fail-fast": expanded.fail_fast, "job-index": cell.index,
                                "job-total": cell.total,
                                "max-parallel": expanded.max_parallel or cell.total}
                    result = await JobCell(self, job, cell, {**ctx,
                                                             "strategy": strategy}).run()
            except asyncio.CancelledError:
                if not failed:
                    raise  # the run is stopping or hibernating: so does every cell
                # Cancelled by fail-fast (its running step is recorded cancelled).
                uncancel = getattr(asyncio.current_task(), "uncancel", None)  # 3.11+
                if uncancel is not None:
                    uncancel()
                if not started:
                    return await self._skip_job(label, f"fail-fast: {failed[0]} failed")
                self.labels[label] = JobResult("cancelled")
                return self.labels[label]
            if result.result == "failure" and expanded.fail_fast and not failed:
                failed.append(label)
                for task in tasks:
                    if task is not asyncio.current_task() and not task.done():
                        task.cancel(f"fail-fast: {label} failed")
            return result

        tasks.extend(asyncio.ensure_future(one(c)) for c in expanded.cells)
        try:
            cells = await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()
        return _aggregate(cells)

    async def _skip_job(self, label: str, reason: str) -> JobResult:
        await self.step.skip(_clip(label), reason)
        result = JobResult("skipped")
        self.labels[label] = result
        return result

    def _env(self, raw: Mapping[str, Any], ctx: Mapping[str, Any], where: str = "env",
             ) -> dict[str, str]:
        """Evaluate an ``env:`` mapping (each value may hold ``${{ }}``)."""
        from ci_runner.workflows import expressions

        try:
            if "__expression__" in raw:
                value = expressions.interpolate(raw["__expression__"], self.contexts(**ctx))
                raw = value if isinstance(value, Mapping) else {}
            env = {}
            for key, value in raw.items():
                shown = expressions.interpolate(value, self.contexts(**ctx)) \
                    if isinstance(value, str) else value
                env[key] = expressions.to_string(shown)
        except expressions.ExpressionError as exc:
            raise WorkflowError(f"{self.workflow.path}: {where}: {exc}") from None
        return env


class JobCell:
    """One job (one matrix cell of it): its steps in order, in its own checkout."""

    def __init__(self, run: WorkflowRun, job: Job, cell: Cell, ctx: dict[str, Any]) -> None:
        self.flow = run
        self.job = job
        self.cell = cell
        self.label = run.prefix + cell.label
        self.step = run.step
        # Its own folder and RUNNER_TEMP: cells and jobs run side by side. The prefix
        # tells apart two workflows' jobs, and one reusable workflow called twice.
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{run.prefix}{job.id}-{cell.index}").strip("-")
        self.dir_rel = f"{JOBS_DIR}/{slug}"
        self.dir = run.root / self.dir_rel
        self.temp_rel = f"{JOBS_DIR}/.temp/{slug}"
        self.runner = {**run.runner, "temp": str(run.root / self.temp_rel)}
        self.ctx = {**ctx, "matrix": dict(cell.matrix), "runner": self.runner,
                    "github": {**run.github, "job": job.id, "workspace": str(self.dir)}}
        self.extra_env: dict[str, str] = {}
        self.path: list[str] = []
        self.steps_ctx: dict[str, Any] = {}
        self.failed = False
        self.spent_s = 0.0  # of the job's timeout-minutes, from the steps' own results
        self.post: list[Any] = []  # stand-ins' post steps (actions/cache saves), in order
        self.inside: tuple[str, int] | None = None  # a composite action's file and line
        self.image: str | None = None  # the job's container: its run: steps are heavy
        self.services: dict[str, str] = {}

    # -- contexts -------------------------------------------------------------------

    def contexts(self, step_env: Mapping[str, str] | None = None) -> dict[str, Any]:
        env = {**self.job_env, **self.extra_env, **(step_env or {})}
        return {**self.ctx, "env": env, "steps": self.steps_ctx,
                "job": {"status": "failure" if self.failed else "success",
                        "container": {"id": "", "network": ""}, "services": {}}}

    def interpolate(self, value: Any, where: str, step_env: Mapping[str, str] | None = None,
                    ) -> Any:
        from ci_runner.workflows import expressions

        if not isinstance(value, str):
            return value
        try:
            return expressions.interpolate(value, self.contexts(step_env),
                                           expressions.Functions(
                                               status="failure" if self.failed else "success",
                                               hash_files=self.hash_files))
        except expressions.ExpressionError as exc:
            raise WorkflowError(f"{where}: {exc}") from None

    def text(self, value: Any, where: str, step_env: Mapping[str, str] | None = None) -> str:
        from ci_runner.workflows import expressions

        return str(expressions.to_string(self.interpolate(value, where, step_env)))

    def hash_files(self, patterns: Any) -> str:
        from ci_runner.workflows.hashfiles import hash_files

        return str(hash_files(self.dir if self.dir.is_dir() else self.flow.root, list(patterns)))

    def where(self, step: Step | None = None, key: str = "") -> str:
        """``file:line: key`` of a job's (or a composite action's) step, for errors."""
        if self.inside is not None:
            file, line = self.inside
            return f"{file}:{step.line if step else line}: runs.steps" + \
                (f"[{step.index}]" if step else "") + (f".{key}" if key else "")
        path = self.flow.workflow.path
        if step is None:
            return f"{path}:{self.job.line}: jobs.{self.job.id}{'.' + key if key else ''}"
        return f"{path}:{step.line}: jobs.{self.job.id}.steps[{step.index}]" + \
            (f".{key}" if key else "")

    # -- the job ----------------------------------------------------------------------

    async def run(self) -> JobResult:
        from ci_runner.workflows import actions

        self.job_env = self.flow._env(self.flow.workflow.env, {"matrix": self.ctx["matrix"]})
        self.job_env.update(self.flow._env(self.job.env, {
            "matrix": self.ctx["matrix"], "env": self.job_env, "needs": self.ctx["needs"],
            "strategy": self.ctx["strategy"]}, f"jobs.{self.job.id}.env"))
        runs_on = self.interpolate(self.job.runs_on, self.where(key="runs-on"))
        where = platform(runs_on, dict(self.flow.selection.platforms))
        reason = where.skip or self._containers() or actions.preflight(self)
        if reason is not None:
            return await self.flow._skip_job(self.label, reason)
        self.dir.mkdir(parents=True, exist_ok=True)
        for step in self.job.steps:
            await self._step(step)
        for post in self.post:
            await post()
        outputs = {}
        for key, value in self.job.outputs.items():
            outputs[key] = self.text(value, self.where(key=f"outputs.{key}"))
        failed = self.failed and not _truthy(self.interpolate(
            self.job.continue_on_error, self.where(key="continue-on-error")))
        result = JobResult("failure" if failed else "success", outputs)
        self.flow.labels[self.label] = result
        return result

    def _containers(self) -> str | None:
        """Read ``container:`` and ``services:``; why the cell cannot run, or None."""
        container = self.job.container
        if container is not None:
            raw = container.get("image") if isinstance(container, Mapping) else container
            self.image = self.text(raw, self.where(key="container")) or None
            if isinstance(container, Mapping) and isinstance(container.get("env"), Mapping):
                for key, value in container["env"].items():
                    self.job_env[key] = self.text(value, self.where(key=f"container.env.{key}"))
        for name, spec in self.job.services.items():
            raw = spec.get("image") if isinstance(spec, Mapping) else spec
            image = self.text(raw, self.where(key=f"services.{name}"))
            if image:
                self.services[name] = image
        if self.services and self.image is None:
            return ("services: run here only beside a container: job's steps (give the job"
                    " a container:)")
        checked = self.flow.metadata["gha"].get("images", {})
        for wanted in [self.image, *self.services.values()]:
            if wanted is not None and checked.get(wanted):
                return str(checked[wanted])
        return None

    async def _step(self, step: Step) -> None:
        from ci_runner.workflows import actions, expressions

        step_env = self.step_env(step)
        name = await self.step.redacted(self.step_name(step, step_env))
        status: Status = "failure" if self.failed else "success"
        try:
            go = expressions.evaluate_if(step.if_, self.contexts(step_env),
                                         expressions.Functions(status=status,
                                                               hash_files=self.hash_files))
        except expressions.ExpressionError as exc:
            raise WorkflowError(f"{self.where(step, 'if')}: {exc}") from None
        record = {"outputs": {}, "outcome": "skipped", "conclusion": "skipped"}
        if not go:
            why = "an earlier step failed" if step.if_ is None and self.failed \
                else f"if: {_shown(step.if_)} was false"
            await self.step.skip(name, why)
            self._record(step, record)
            return
        try:
            if step.run is not None:
                handed = await self.run_script(step, name, step_env)
            else:
                handed = await actions.run_action(self, step, name, step_env)
        except StepFailed:
            outcome = "failure"
            handed = {}
        else:
            outcome = "success"
        # ci-runner's own variables stay its own (the wrapper and the broker set them).
        self.extra_env.update({k: v for k, v in handed.get("env", {}).items()
                               if not k.startswith("CI_RUNNER")})
        self.path[:0] = handed.get("path", [])
        if handed.get("summary", "").strip():
            self.flow.summaries.append((name, handed["summary"]))
        conclusion = outcome
        if outcome == "failure" and _truthy(self.interpolate(
                step.continue_on_error, self.where(step, "continue-on-error"), step_env)):
            conclusion = "success"
        if conclusion == "failure":
            self.failed = True
        self._record(step, {"outputs": handed.get("outputs", {}), "outcome": outcome,
                            "conclusion": conclusion})

    def _record(self, step: Step, record: dict[str, Any]) -> None:
        if step.id is not None:
            self.steps_ctx[step.id] = record

    def step_env(self, step: Step) -> dict[str, str]:
        ctx = self.contexts()
        env: dict[str, str] = {}
        raw = step.env
        if "__expression__" in raw:
            value = self.interpolate(raw["__expression__"], self.where(step, "env"))
            raw = dict(value) if isinstance(value, Mapping) else {}
        from ci_runner.workflows import expressions

        for key, value in raw.items():
            try:
                shown = expressions.interpolate(value, {**ctx, "env": {**ctx["env"], **env}}) \
                    if isinstance(value, str) else value
            except expressions.ExpressionError as exc:
                raise WorkflowError(f"{self.where(step, 'env.' + key)}: {exc}") from None
            env[key] = expressions.to_string(shown)
        return env

    def step_name(self, step: Step, step_env: Mapping[str, str]) -> str:
        if step.name is not None:
            shown = self.text(step.name, self.where(step, "name"), step_env)
        elif step.run is not None:
            first = next((line for line in step.run.splitlines() if line.strip()), "")
            # A value the step masks must not be in its name: names are stored as they are.
            shown = f"Run {re.sub(r'::add-mask::.*', '::add-mask::…', first.strip())}"
        else:
            shown = f"Run {step.uses}"
        shown = " ".join(contexts._MARKER.sub("***", shown).split())
        return _clip(f"{self.label} / {shown}")

    # -- running commands ---------------------------------------------------------------

    def command_env(self, step_env: Mapping[str, str], *, heavy: bool = False,
                    ) -> tuple[dict[str, str], list[str]]:
        """The environment of a step's command, and the secrets it needs."""
        github = self.ctx["github"]
        workspace = f"{CONTAINER_WORKSPACE}/{self.dir_rel}" if heavy else str(self.dir)
        env = {**contexts.default_env(github, self.runner),
               "GITHUB_WORKSPACE": workspace, "GITHUB_JOB": self.job.id,
               **self.job_env, **self.extra_env, **step_env}
        if heavy:  # the image's own PATH, unless a step added to it
            env["RUNNER_TEMP"] = f"{CONTAINER_WORKSPACE}/{self.temp_rel}"
            if self.path or "PATH" in env:
                env["PATH"] = os.pathsep.join([*self.path, env.get("PATH") or _IMAGE_PATH])
        else:
            env["PATH"] = os.pathsep.join([*self.path,
                                           env.get("PATH") or self.flow.base_path])
        secrets: list[str] = []
        aliases = []
        for key in list(env):
            value = env[key]
            if contexts.has_secret(value):
                secrets += contexts.secret_names_in(value)
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                    raise WorkflowError(f"{self.label}: env {key!r} holds a secret but is"
                                        " not a shell variable name")
                aliases.append(f'export {key}="{contexts.shell_reference(value)}"')
                del env[key]
        if aliases:
            env["CI_RUNNER_SECRET_ENV"] = "\n".join(aliases)
        return env, list(dict.fromkeys(secrets))

    def timeout_s(self, step: Step | None, step_env: Mapping[str, str]) -> float:
        limits = [360 * 60.0]
        if self.job.timeout_minutes is not None:
            minutes = _number(self.interpolate(self.job.timeout_minutes,
                                               self.where(key="timeout-minutes")),
                              self.where(key="timeout-minutes"))
            limits.append(max(minutes * 60.0 - self.spent_s, 1.0))
        if step is not None and step.timeout_minutes is not None:
            where = self.where(step, "timeout-minutes")
            limits.append(_number(self.interpolate(step.timeout_minutes, where, step_env),
                                  where) * 60.0)
        return min(limits)

    def workdir(self, step: Step, step_env: Mapping[str, str]) -> str:
        wd = step.working_directory or self.job.defaults_run.get("working-directory") \
            or self.flow.workflow.defaults_run.get("working-directory")
        if wd is None:
            return self.dir_rel
        shown = self.text(wd, self.where(step, "working-directory"), step_env)
        target = Path(os.path.normpath(self.dir / shown))
        if not target.is_relative_to(self.flow.root):
            raise WorkflowError(f"{self.where(step, 'working-directory')}: {shown!r} is"
                                " outside the job's workspace")
        return str(target.relative_to(self.flow.root))

    async def run_script(self, step: Step, name: str, step_env: Mapping[str, str],
                         ) -> dict[str, Any]:
        assert step.run is not None
        shell = step.shell or self.job.defaults_run.get("shell") \
            or self.flow.workflow.defaults_run.get("shell")
        shell_text = None if shell is None else self.text(shell, self.where(step, "shell"))
        template = commands.shell_argv(shell_text, self.where(step, "shell"))
        if shell_text is None and self.image is not None:
            template = list(commands.CONTAINER_DEFAULT)  # bash if the image has it, else sh
        script = self.text(step.run, self.where(step, "run"), step_env)
        script = contexts.in_script(script, shell_text, self.where(step, "run"))
        return await self.execute(name, template, script, step, step_env,
                                  heavy=self.image is not None)

    async def execute(self, name: str, template: list[str], script: str, step: Step | None,
                      step_env: Mapping[str, str], *, cwd: str | None = None,
                      artifacts: list[str] | None = None, heavy: bool = False,
                      ) -> dict[str, Any]:
        """Run ``script`` through ``template`` as a light step (``heavy``: in the job's
        container, its services beside it); returns what it hands on."""
        env, secrets = self.command_env(step_env, heavy=heavy)
        env[commands.SCRIPT_ENV] = script
        env[commands.EVENT_ENV] = json.dumps(self.ctx["github"]["event"])
        env[commands.WRAPPER_ENV] = commands.WRAPPER
        timeout = self.timeout_s(step, step_env)
        result = await self.step.run(
            name, commands.command(template), env=env, secrets=secrets,
            timeout=timeout, cwd=cwd or (self.workdir(step, step_env) if step is not None
                                         else self.dir_rel),
            files=True, add_mask=True, artifacts=artifacts or (),
            image=self.image if heavy else None,
            services=self.services if heavy else None)
        # What the job's timeout-minutes has left: the durations its steps' results
        # recorded (a failed step's is not known; it does not count).
        self.spent_s += float(result.get("duration_s") or 0.0)
        if result.get("skipped"):
            return {}
        return commands.step_files(result, name)


def _aggregate(cells: list[JobResult]) -> JobResult:
    outputs: dict[str, str] = {}
    for cell in cells:
        outputs.update({k: v for k, v in cell.outputs.items() if v != ""})
    results = {c.result for c in cells}
    for result in ("failure", "cancelled", "success"):
        if result in results:
            return JobResult(result, outputs)
    return JobResult("skipped", outputs)


def _has_status_function(cond: Any) -> bool:
    return isinstance(cond, str) and re.search(
        r"\b(success|failure|always|cancelled)\s*\(", cond, re.IGNORECASE) is not None


def _input_defaults(dispatch: Any) -> dict[str, Any]:
    if not isinstance(dispatch, Mapping):
        return {}
    inputs = dispatch.get("inputs")
    if not isinstance(inputs, Mapping):
        return {}
    return {k: (v.get("default") if isinstance(v, Mapping) else None) for k, v in inputs.items()}


def _shown(cond: Any) -> str:
    text = " ".join(str(cond).split())
    return text if len(text) <= 80 else text[:77] + "..."


def _truthy(value: Any) -> bool:
    from ci_runner.workflows import expressions

    return expressions.is_truthy(value)


def _number(value: Any, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise WorkflowError(f"{where}: must be a number of minutes, not {value!r}") from None
    if number <= 0:
        raise WorkflowError(f"{where}: must be more than 0")
    return number


def _clip(name: str) -> str:
    return name if len(name) <= _NAME_MAX else name[:_NAME_MAX - 1] + "…"


__all__ = ["JobResult", "WorkflowPipeline"]
