"""How a ``run:`` step runs, GitHub's way, and what it hands to later steps.

A step's script goes through a small ``sh`` wrapper: it writes the script to the
step's own folder (``step.run(files=True)``), points ``GITHUB_OUTPUT``, ``GITHUB_ENV``,
``GITHUB_PATH`` and ``GITHUB_STEP_SUMMARY`` at files beside it, then runs the shell
template with ``{0}`` replaced by the script's path. The files come back in the
step's durable result, so a resumed run replays the same outputs without re-running.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from ci_runner.workflows.source import WorkflowError

SHELLS = {
    None: ["bash", "-e", "{0}"],
    "bash": ["bash", "--noprofile", "--norc", "-eo", "pipefail", "{0}"],
    "sh": ["sh", "-e", "{0}"],
    "python": ["python", "{0}"],
}
# A container job's default (GitHub's): bash when the image has it, else sh.
CONTAINER_DEFAULT = ["sh", "-c", 'if command -v bash >/dev/null 2>&1; then exec bash -e "$1";'
                     ' else exec sh -e "$1"; fi', "sh", "{0}"]
SCRIPT_ENV = "CI_RUNNER_SCRIPT"
EVENT_ENV = "CI_RUNNER_EVENT"  # github.event as JSON, written to $GITHUB_EVENT_PATH
# The wrapper: $1.. is the shell template; {0} in it becomes the script's path (in a
# folder of the step's own: only the files beside it come back in the result).
WRAPPER = r"""f=$CI_RUNNER_FILES
eval "${CI_RUNNER_SECRET_ENV:-}"; unset CI_RUNNER_SECRET_ENV
mkdir "$f/run" && printf '%s\n' "$CI_RUNNER_SCRIPT" > "$f/run/script"; unset CI_RUNNER_SCRIPT
printf '%s' "${CI_RUNNER_EVENT:-{\}}" > "$f/run/event.json"; unset CI_RUNNER_EVENT
export GITHUB_EVENT_PATH="$f/run/event.json"
for n in output env path summary; do : > "$f/$n"; done
export GITHUB_OUTPUT="$f/output" GITHUB_ENV="$f/env" GITHUB_PATH="$f/path"
export GITHUB_STEP_SUMMARY="$f/summary"
[ -z "${RUNNER_TEMP:-}" ] || mkdir -p "$RUNNER_TEMP"
n=$#; while [ "$n" -gt 0 ]; do a=$1; shift; n=$((n - 1))
  while case $a in *'{0}'*) true;; *) false;; esac; do
    a="${a%%'{0}'*}$f/run/script${a#*'{0}'}"; done
  set -- "$@" "$a"; done
unset CI_RUNNER_STEP; exec "$@"
"""


def shell_argv(shell: str | None, where: str) -> list[str]:
    """The argv template of a step's ``shell:`` (``{0}`` is the script's path)."""
    if shell in SHELLS:
        return list(SHELLS[shell])
    assert shell is not None
    if shell in ("pwsh", "powershell", "cmd"):
        raise WorkflowError(f"{where}: shell {shell!r} is not available on Linux here")
    argv = shlex.split(shell)
    if not argv:
        raise WorkflowError(f"{where}: shell is empty")
    if not any("{0}" in a for a in argv):
        argv.append("{0}")
    return argv


WRAPPER_ENV = "CI_RUNNER_STEP"


def command(template: list[str]) -> list[str]:
    """The step's argv: short, as logs and errors show it; the wrapper comes in
    ``$CI_RUNNER_STEP`` (``env(...)`` adds it)."""
    return ["sh", "-c", f'eval "${WRAPPER_ENV}"', "step", *template]


_HEREDOC = re.compile(r"^([^=<\s][^=<]*?)<<(.+)$")


def parse_assignments(text: str, what: str) -> dict[str, str]:
    """``GITHUB_OUTPUT``/``GITHUB_ENV`` content: ``name=value`` lines and the heredoc
    form (``name<<DELIM`` ... ``DELIM``); later lines win."""
    found: dict[str, str] = {}
    lines = text.split("\n")
    index = 0
    while index < len(lines):
        line = lines[index].rstrip("\r")
        index += 1
        if not line.strip():
            continue
        heredoc = _HEREDOC.match(line)
        if heredoc is not None and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = heredoc.group(1), heredoc.group(2)
            body: list[str] = []
            while True:
                if index >= len(lines):
                    raise WorkflowError(f"{what}: {name}<<{delimiter} has no closing"
                                        f" {delimiter!r} line")
                current = lines[index].rstrip("\r")
                index += 1
                if current == delimiter:
                    break
                body.append(current)
            found[name] = "\n".join(body)
            continue
        name, sep, value = line.partition("=")
        if not sep or not name:
            raise WorkflowError(f"{what}: a line must be NAME=VALUE or NAME<<DELIMITER,"
                                f" not {line[:60]!r}")
        found[name] = value
    return found


def parse_paths(text: str) -> list[str]:
    """``GITHUB_PATH``: one folder per line, the last line first on PATH."""
    return [line.strip() for line in text.splitlines() if line.strip()][::-1]


def step_files(result: dict[str, Any], what: str) -> dict[str, Any]:
    """What a finished step hands on: ``{outputs, env, path, summary}``."""
    files = result.get("files") or {}
    return {
        "outputs": parse_assignments(files.get("output", ""), f"{what}: GITHUB_OUTPUT"),
        "env": parse_assignments(files.get("env", ""), f"{what}: GITHUB_ENV"),
        "path": parse_paths(files.get("path", "")),
        "summary": files.get("summary", ""),
    }
