"""A workflow file as data: ``Workflow``, its ``Job``s and their ``Step``s, checked.

Parsing only checks shape (which keys, which types, ``needs`` that name jobs, no
cycles); what ``${{ }}`` expressions say is decided when the run gets there. Every
error is one line: ``.github/workflows/ci.yml:14: jobs.test.needs: unknown job 'bulid'``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ci_runner.workflows.source import Located, WorkflowError, load_yaml

WORKFLOWS_DIR = ".github/workflows"

_WORKFLOW_KEYS = {"name", "run-name", "on", "env", "defaults", "jobs", "permissions",
                  "concurrency"}
_JOB_KEYS = {"name", "runs-on", "needs", "if", "strategy", "env", "defaults",
             "timeout-minutes", "continue-on-error", "outputs", "steps", "services",
             "container", "uses", "with", "secrets", "permissions", "concurrency",
             "environment"}
_STEP_KEYS = {"id", "name", "uses", "run", "shell", "with", "env", "if",
              "working-directory", "continue-on-error", "timeout-minutes"}
_STRATEGY_KEYS = {"matrix", "fail-fast", "max-parallel"}
_ID = r"^[A-Za-z_][A-Za-z0-9_-]*$"


@dataclass(frozen=True)
class Step:
    index: int  # 0-based, in its job
    line: int
    id: str | None
    name: Any  # may hold ${{ }}
    uses: str | None
    run: str | None
    shell: str | None
    with_: dict[str, Any]
    env: dict[str, Any]
    if_: Any
    working_directory: str | None
    continue_on_error: Any
    timeout_minutes: Any


@dataclass(frozen=True)
class Job:
    id: str
    line: int
    name: Any
    runs_on: Any
    needs: tuple[str, ...]
    if_: Any
    strategy: Any  # the raw mapping (expanded by workflows.matrix) or None
    env: dict[str, Any]
    defaults_run: dict[str, Any]
    timeout_minutes: Any
    continue_on_error: Any
    outputs: dict[str, Any]
    steps: tuple[Step, ...]
    services: dict[str, Any]
    container: Any
    uses: str | None  # a reusable workflow
    with_: dict[str, Any]
    secrets: Any
    lines: dict[str, int] = field(default_factory=dict)  # where each of its keys is

    def line_of(self, key: str) -> int:
        return self.lines.get(key, self.line)


@dataclass(frozen=True)
class Workflow:
    path: str  # relative to the repo: .github/workflows/ci.yml
    name: str
    on: dict[str, Any]  # event -> its filters (a mapping, maybe empty)
    env: dict[str, Any]
    defaults_run: dict[str, Any]
    jobs: dict[str, Job] = field(default_factory=dict)

    def triggered_by(self, event: str) -> bool:
        return event in self.on


class _Check:
    """Validation helpers that know the file, so each error names file, line and key."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, line: int, key: str, message: str) -> WorkflowError:
        return WorkflowError(f"{self.path}:{line}: {key}: {message}")

    def mapping(self, value: Any, line: int, key: str, allowed: set[str] | None = None,
                ) -> Located:
        if value is None:
            empty = Located()
            empty.line, empty.lines = line, {}
            return empty
        if not isinstance(value, Located):
            raise self.fail(line, key, f"must be a mapping, not {_kind(value)}")
        if allowed is not None:
            for name in value:
                if name not in allowed:
                    raise self.fail(value.line_of(name), f"{key}.{name}",
                                    f"unknown key (expected one of: {', '.join(sorted(allowed))})")
        return value

    def string(self, value: Any, line: int, key: str, *, optional: bool = True) -> str | None:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.fail(line, key, f"must be a string, not {_kind(value)}")
        return str(value)

    def env(self, value: Any, line: int, key: str) -> dict[str, Any]:
        if isinstance(value, str) and value.strip().startswith("${{"):
            return {"__expression__": value}
        env = self.mapping(value, line, key)
        for name, item in env.items():
            if isinstance(item, (Located, list)):
                raise self.fail(env.line_of(name), f"{key}.{name}",
                                f"must be a string, number or boolean, not {_kind(item)}")
        return dict(env)


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", Located: "a mapping", list: "a list", str: "a string",
            bool: "a boolean", int: "a number", float: "a number"}.get(type(value),
                                                                         type(value).__name__)


def parse_workflow(text: str | bytes, path: str) -> Workflow:
    """Parse and check one workflow file (``path`` as shown in errors)."""
    import re

    raw = load_yaml(text, path)
    check = _Check(path)
    if not isinstance(raw, Located):
        raise WorkflowError(f"{path}:1: the file must be a mapping with `on:` and `jobs:`")
    check.mapping(raw, raw.line, "workflow", _WORKFLOW_KEYS)
    if "on" not in raw:
        raise check.fail(raw.line, "on", "missing: say which events run the workflow")
    if "jobs" not in raw:
        raise check.fail(raw.line, "jobs", "missing: a workflow needs at least one job")
    on = _triggers(check, raw["on"], raw.line_of("on"))
    defaults = check.mapping(raw.get("defaults"), raw.line_of("defaults"), "defaults",
                             {"run"})
    defaults_run = dict(check.mapping(defaults.get("run"), defaults.line_of("run"),
                                      "defaults.run", {"shell", "working-directory"}))
    jobs_raw = check.mapping(raw["jobs"], raw.line_of("jobs"), "jobs")
    if not jobs_raw:
        raise check.fail(raw.line_of("jobs"), "jobs", "a workflow needs at least one job")
    jobs: dict[str, Job] = {}
    for job_id, value in jobs_raw.items():
        if not re.match(_ID, job_id):
            raise check.fail(jobs_raw.line_of(job_id), f"jobs.{job_id}",
                             "a job id must start with a letter or _ and hold only letters,"
                             " digits, - and _")
        jobs[job_id] = _job(check, job_id, value, jobs_raw.line_of(job_id))
    name = raw.get("name")
    workflow = Workflow(path=path, name=str(name) if name is not None else path,
                        on=on, env=check.env(raw.get("env"), raw.line_of("env"), "env"),
                        defaults_run=defaults_run, jobs=jobs)
    _check_needs(check, workflow)
    _check_expressions(check, raw, "", raw.line)
    return workflow


def _triggers(check: _Check, value: Any, line: int) -> dict[str, Any]:
    if isinstance(value, str):
        return {value: {}}
    if isinstance(value, list):
        if not value or not all(isinstance(v, str) for v in value):
            raise check.fail(line, "on", "a list of events must hold event names")
        return {v: {} for v in value}
    if isinstance(value, Located):
        return {k: (v if v is not None else {}) for k, v in value.items()}
    raise check.fail(line, "on", f"must be an event, a list or a mapping, not {_kind(value)}")


def _job(check: _Check, job_id: str, value: Any, line: int) -> Job:
    key = f"jobs.{job_id}"
    raw = check.mapping(value, line, key, _JOB_KEYS)
    uses = check.string(raw.get("uses"), raw.line_of("uses"), f"{key}.uses")
    if uses is None and "steps" not in raw:
        raise check.fail(raw.line, key, "a job needs `steps:` (or `uses:` for a reusable"
                         " workflow)")
    if uses is not None and "steps" in raw:
        raise check.fail(raw.line_of("steps"), f"{key}.steps",
                         "a job that `uses:` a workflow cannot have steps")
    if uses is None and "runs-on" not in raw:
        raise check.fail(line, f"{key}.runs-on", "missing: say where the job runs")
    needs_raw = raw.get("needs")
    if needs_raw is None:
        needs: tuple[str, ...] = ()
    elif isinstance(needs_raw, str):
        needs = (needs_raw,)
    elif isinstance(needs_raw, list) and all(isinstance(n, str) for n in needs_raw):
        needs = tuple(needs_raw)
    else:
        raise check.fail(raw.line_of("needs"), f"{key}.needs",
                         "must be a job id or a list of them")
    steps_raw = raw.get("steps")
    steps: list[Step] = []
    if uses is None:
        if not isinstance(steps_raw, list) or not steps_raw:
            raise check.fail(raw.line_of("steps"), f"{key}.steps",
                             "must be a non-empty list of steps")
        seen: dict[str, int] = {}
        for index, item in enumerate(steps_raw):
            step = _step(check, f"{key}.steps[{index}]", index, item, raw.line_of("steps"))
            if step.id is not None:
                if step.id in seen:
                    raise check.fail(step.line, f"{key}.steps[{index}].id",
                                     f"{step.id!r} is already the id of step {seen[step.id]}")
                seen[step.id] = index
            steps.append(step)
    strategy = raw.get("strategy")
    if strategy is not None and not isinstance(strategy, str):
        strategy = check.mapping(strategy, raw.line_of("strategy"), f"{key}.strategy",
                                 _STRATEGY_KEYS)
    defaults = check.mapping(raw.get("defaults"), raw.line_of("defaults"), f"{key}.defaults",
                             {"run"})
    defaults_run = check.mapping(defaults.get("run"), defaults.line_of("run"),
                                 f"{key}.defaults.run", {"shell", "working-directory"})
    outputs = check.mapping(raw.get("outputs"), raw.line_of("outputs"), f"{key}.outputs")
    services = check.mapping(raw.get("services"), raw.line_of("services"), f"{key}.services")
    with_ = check.mapping(raw.get("with"), raw.line_of("with"), f"{key}.with")
    return Job(
        id=job_id, line=line, lines=dict(raw.lines), name=raw.get("name"),
        runs_on=raw.get("runs-on"),
        needs=needs, if_=raw.get("if"), strategy=strategy,
        env=check.env(raw.get("env"), raw.line_of("env"), f"{key}.env"),
        defaults_run=dict(defaults_run), timeout_minutes=raw.get("timeout-minutes"),
        continue_on_error=raw.get("continue-on-error", False), outputs=dict(outputs),
        steps=tuple(steps), services=dict(services), container=raw.get("container"),
        uses=uses, with_=dict(with_), secrets=raw.get("secrets"),
    )


def _step(check: _Check, key: str, index: int, value: Any, line: int) -> Step:
    raw = check.mapping(value, line, key, _STEP_KEYS)
    uses = check.string(raw.get("uses"), raw.line_of("uses"), f"{key}.uses")
    run = check.string(raw.get("run"), raw.line_of("run"), f"{key}.run")
    if (uses is None) == (run is None):
        raise check.fail(raw.line, key, "a step needs exactly one of `run:` or `uses:`")
    step_id = check.string(raw.get("id"), raw.line_of("id"), f"{key}.id")
    if step_id is not None:
        import re

        if not re.match(_ID, step_id):
            raise check.fail(raw.line_of("id"), f"{key}.id",
                             f"{step_id!r} must start with a letter or _ and hold only"
                             " letters, digits, - and _")
    with_ = check.mapping(raw.get("with"), raw.line_of("with"), f"{key}.with")
    return Step(
        index=index, line=raw.line, id=step_id, name=raw.get("name"), uses=uses, run=run,
        shell=check.string(raw.get("shell"), raw.line_of("shell"), f"{key}.shell"),
        with_=dict(with_), env=check.env(raw.get("env"), raw.line_of("env"), f"{key}.env"),
        if_=raw.get("if"),
        working_directory=check.string(raw.get("working-directory"),
                                       raw.line_of("working-directory"),
                                       f"{key}.working-directory"),
        continue_on_error=raw.get("continue-on-error", False),
        timeout_minutes=raw.get("timeout-minutes"),
    )


def _check_needs(check: _Check, workflow: Workflow) -> None:
    jobs = workflow.jobs
    for job in jobs.values():
        for need in job.needs:
            if need not in jobs:
                raise check.fail(job.line_of("needs"), f"jobs.{job.id}.needs",
                                 f"unknown job {need!r} (jobs: {', '.join(jobs)})")
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(job_id: str, trail: list[str]) -> None:
        if state.get(job_id) == 2:
            return
        if state.get(job_id) == 1:
            cycle = [*trail[trail.index(job_id):], job_id]
            raise check.fail(jobs[job_id].line_of("needs"), f"jobs.{job_id}.needs",
                             f"a cycle: {' -> '.join(cycle)}")
        state[job_id] = 1
        for need in jobs[job_id].needs:
            visit(need, [*trail, job_id])
        state[job_id] = 2

    for job_id in jobs:
        visit(job_id, [])


# Every context a workflow may name somewhere: which key may use which is GitHub's
# finer rule, left to the run (a name unknown everywhere is an error at once).
_CONTEXTS = dict.fromkeys(("github", "env", "vars", "job", "jobs", "steps", "runner",
                           "secrets", "strategy", "matrix", "needs", "inputs"))


def _check_expressions(check: _Check, value: Any, key: str, line: int) -> None:
    """Parse every ``${{ }}`` (and each bare ``if:``) of the file, so a syntax error or
    an unknown context fails before any job runs, naming where it is."""
    from ci_runner.workflows.expression_syntax import ExpressionError, parse

    if isinstance(value, Located):
        for name, item in value.items():
            _check_expressions(check, item, f"{key}.{name}" if key else name,
                               value.line_of(name))
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_expressions(check, item, f"{key}[{index}]",
                               item.line if isinstance(item, Located) else line)
        return
    if not isinstance(value, str):
        return
    try:
        if key.endswith(".if") and "${{" not in value:
            parse(value, _CONTEXTS)
        for expression in _expressions(value):
            parse(expression.strip(), _CONTEXTS)
    except ExpressionError as exc:
        raise check.fail(line, key, str(exc)) from None


def _expressions(text: str) -> list[str]:
    """The texts inside ``${{ }}`` (a ``}}`` in a quoted string does not close one)."""
    from ci_runner.workflows.expression_syntax import ExpressionError

    found = []
    start = text.find("${{")
    while start >= 0:
        j, quoted = start + 3, False
        while j < len(text) and (quoted or not text.startswith("}}", j)):
            quoted ^= text[j] == "'"
            j += 1
        if j >= len(text):
            raise ExpressionError(f"the expression is not closed: {text[start:start + 60]}")
        found.append(text[start + 3:j])
        start = text.find("${{", j + 2)
    return found
