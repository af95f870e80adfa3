"""Starting a workflow run: read the repo's workflow files at the run's sha, check
them and the selection (before anything is stored, so a bad file is one line and
exit 2), and build the metadata the run replays from: which files and jobs, the
interpreters found on this machine, the names (never values) of the repo's secrets.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ci_runner.workflows.model import WORKFLOWS_DIR, Workflow
from ci_runner.workflows.plan import Selection, choose, load_all, workflow_files

if TYPE_CHECKING:
    from ci_runner.workspace.worktree import RepoInfo

LOADER = "ci_runner.workflows.loader:load_runner"


def listing_at(repo: RepoInfo, sha: str) -> list[str]:
    """The paths under .github/workflows at ``sha``."""
    from ci_runner.workspace.gitcmd import run_git

    found = run_git(repo.root, "ls-tree", "--name-only", f"{sha}", f"{WORKFLOWS_DIR}/")
    if found.status != 0:
        return []
    return [line for line in found.text.splitlines() if line]


def workflows_at(repo: RepoInfo, sha: str) -> list[Workflow]:
    """Every workflow file of the repo at ``sha``, parsed (the first bad one raises)."""
    from ci_runner.workspace import file_at

    return load_all(lambda path: file_at(repo, sha, path),
                    workflow_files(listing_at(repo, sha)))


def has_workflows(repo: RepoInfo, sha: str) -> bool:
    return bool(workflow_files(listing_at(repo, sha)))


def workflow_metadata(repo: RepoInfo, sha: str, ref: str | None, selection: Selection,
                      secrets_file: Path | None) -> dict[str, Any]:
    """The run metadata of a workflow run (checked: raises ``WorkflowError``)."""
    from ci_runner.workflows import tools

    workflows = workflows_at(repo, sha)
    chosen = choose(workflows, selection, ref=ref)
    found = tools.discover()
    names: list[str] = []
    if secrets_file is not None and secrets_file.is_file():
        from ci_runner.secrets import secret_names

        names = secret_names(secrets_file)
    return {
        "loader": LOADER,
        "pipeline": ", ".join(Path(w.path).name for w in chosen),
        "gha": {"selection": selection.to_json(), "files": [w.path for w in workflows],
                "tools": found, "secret_names": names, "repository": _repository(repo),
                "images": check_images(job_images(chosen, selection))},
        "toolchains": tools.toolchain_dirs(found),
    }


def job_images(workflows: list[Workflow], selection: Selection) -> list[str]:
    """The images of the chosen jobs' ``container:`` and ``services:``, per matrix cell
    (those that hold expressions of other jobs' outputs are checked when they run)."""
    from ci_runner.workflows import expressions
    from ci_runner.workflows.plan import expand_job

    found: list[str] = []
    for workflow in workflows:
        for job in workflow.jobs.values():
            if job.container is None and not job.services:
                continue
            ctx: dict[str, Any] = {"github": {}, "env": {}, "vars": {}, "secrets": {},
                                   "inputs": {}, "needs": {}, "runner": {}, "strategy": {},
                                   "matrix": {}, "steps": {}, "job": {}, "jobs": {}}
            try:
                cells = [c.matrix for c in expand_job(job, ctx, selection.matrix).cells]
            except Exception:
                cells = []
            for cell in cells:
                specs = [job.container, *job.services.values()]
                for spec in specs:
                    raw = spec.get("image") if isinstance(spec, dict) else spec
                    if not isinstance(raw, str):
                        continue
                    try:
                        image = expressions.interpolate(raw, {**ctx, "matrix": cell})
                    except expressions.ExpressionError:
                        continue
                    if isinstance(image, str) and image and image not in found:
                        found.append(image)
    return found


def check_images(names: list[str]) -> dict[str, str | None]:
    """``{image: None}`` for each image present here (or a sandbox image ci-runner
    builds), ``{image: why not}`` otherwise: nothing is pulled, no registry is reachable."""
    if not names:
        return {}
    from ci_runner import images

    try:
        import docker

        client = docker.from_env(timeout=10)
        client.ping()
    except Exception as exc:
        reason = f"Docker is not available here ({str(exc).splitlines()[0][:120]})"
        return dict.fromkeys(names, reason)
    checked: dict[str, str | None] = {}
    known = set(images.known_names())
    for name in names:
        reference = images.resolve(name)
        short = reference.split("/", 1)[-1].split(":", 1)[0]
        if images._exists(client, reference) or (reference != name and short in known):
            checked[name] = None
        else:
            checked[name] = (f"image {name} is not here and is never pulled: docker pull or"
                             " docker load it first")
    client.close()
    return checked


def _repository(repo: RepoInfo) -> str:
    """``owner/name`` from the origin remote's URL when it has one, as GitHub names it."""
    import re

    from ci_runner.workspace.gitcmd import run_git

    url = run_git(repo.root, "config", "--get", "remote.origin.url").text
    match = re.search(r"[:/]([^/:]+)/([^/]+?)(?:\.git)?/?$", url)
    if match:
        return f"{match.group(1)}/{match.group(2)}"
    return f"local/{repo.name}"
