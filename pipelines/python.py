"""A Python project's CI: its environment, built once per content of the files that
define it, then lint and test side by side (a flaky test is retried once).

The environment (a venv with the project's dependencies, its build backend, pytest and
ruff) is kept between runs in ~/.cache/ci-runner/python-envs/, named by a hash of
pyproject.toml, setup.cfg, setup.py, requirements*.txt, TOOLS, EXTRAS, this script and
the Python version: while they are unchanged, a run reuses it (the `environment` step says so); a
change builds a new one. The project itself is installed into each run's own `.venv`
(which sees the kept environment's packages), so a run never imports another run's
code (an environment no run uses any more can be deleted at any time). A failing lint
does not stop the tests (``fail_fast=False``): a run shows both. With --only, keep the
environment: `ci-runner run --only environment,test`.
"""

from __future__ import annotations

import sys

from ci_runner import Pipeline

TOOLS = "pytest ruff"  # installed with the dependencies: add yours
EXTRAS = "test"  # the project's optional dependencies to install, comma-separated
INPUTS = "pyproject.toml setup.cfg setup.py requirements*.txt"

ENVIRONMENT = r"""
set -eu
key=$( { echo "$TOOLS [$EXTRAS]"; echo "$ENVIRONMENT"
         "$PYTHON" -c 'import sys; print(sys.version, sys.prefix)'
         for f in $INPUTS; do if [ -f "$f" ]; then echo "$f"; cat "$f"; fi; done
       } | sha256sum | cut -c1-16 )
env="$HOME/.cache/ci-runner/python-envs/$key"
mkdir -p "${env%/*}"
exec 9>"$env.lock"
flock 9  # runs of the same inputs at once build it once
project=""
if [ -f pyproject.toml ] || [ -f setup.py ]; then project=yes; fi
if [ -f "$env/.complete" ]; then
    echo "reusing the environment of these inputs: $env"
else
    echo "building the environment of these inputs: $env"
    rm -rf "$env"
    "$PYTHON" -m venv "$env"
    py="$env/bin/python"
    set --
    for f in requirements*.txt; do if [ -f "$f" ]; then set -- "$@" -r "$f"; fi; done
    if [ -n "$project" ]; then
        # What builds the project (pyproject's build-system), kept in the environment so
        # that each run installs the project without downloading it again; and which of
        # EXTRAS the project has.
        "$py" - > "$env/build-requirements.txt" 3> "$env/extras" <<'PY'
import os
try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib
try:
    with open("pyproject.toml", "rb") as f:
        pyproject = tomllib.load(f)
except FileNotFoundError:
    pyproject = {}
requires = list(pyproject.get("build-system", {}).get("requires", ["setuptools>=40.8.0"]))
if any(r.lower().startswith("setuptools") for r in requires):
    requires.append("wheel")  # setuptools before 70.1 builds wheels with it
if requires:
    print("\n".join(requires))
wanted = [e.strip() for e in os.environ["EXTRAS"].split(",") if e.strip()]
project = pyproject.get("project")
if project is not None and "optional-dependencies" not in project.get("dynamic", []):
    # Declared in pyproject.toml (or not at all): only the extras it has.
    wanted = [e for e in wanted if e in project.get("optional-dependencies", {})]
with open(3, "w") as extras:
    extras.write(",".join(wanted))
PY
        if [ -s "$env/build-requirements.txt" ]; then
            "$py" -m pip install --quiet -r "$env/build-requirements.txt"
        fi
        extras=$(cat "$env/extras")
        # The project with its dependencies, then the project out again: each run
        # installs its own worktree's copy.
        "$py" -m pip install --quiet "$@" $TOOLS -e ".${extras:+[$extras]}"
        names=$("$py" -m pip list --editable --format=freeze | cut -d= -f1)
        if [ -n "$names" ]; then "$py" -m pip uninstall --quiet --yes $names; fi
    else
        "$py" -m pip install --quiet "$@" $TOOLS
    fi
    touch "$env/.complete"
fi
# This run's own .venv: the kept environment's packages, and the project from here.
rm -rf .venv
"$PYTHON" -m venv --without-pip .venv
for site in .venv/lib/python*/site-packages; do
    echo "$env"/lib/python*/site-packages > "$site/_ci_runner_environment.pth"
done
if [ -n "$project" ]; then
    "$env/bin/python" -m pip --python .venv/bin/python install --quiet --no-deps \
        --no-build-isolation -e .
fi
"""


class CI(Pipeline):
    async def run(self, event, step):
        # The script comes in a variable, so the step's command line stays one line.
        await step.run("environment", ["sh", "-c", 'eval "$ENVIRONMENT"'],
                       timeout="15 minutes",
                       env={"ENVIRONMENT": ENVIRONMENT, "PYTHON": sys.executable,
                            "TOOLS": TOOLS, "EXTRAS": EXTRAS, "INPUTS": INPUTS,
                            "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
        python = ".venv/bin/python"
        await step.parallel(
            step.run("lint", [python, "-m", "ruff", "check", "."]),
            step.run("test", [python, "-m", "pytest", "-q"],
                     retries={"limit": 1, "delay": "2 seconds"}, timeout="20 minutes"),
            fail_fast=False,
        )
