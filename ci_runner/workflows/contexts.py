"""The expression contexts of a workflow run (``github``, ``runner``, ``secrets``...)
and the environment GitHub gives every step, built from the run's stored metadata
only, so that a resumed run evaluates every expression the same way.

Secret values never reach the pipeline process: ``secrets.NAME`` evaluates to a
marker (``\\x00secret:NAME\\x00``) that ``secret_refs`` later turns into a reference
to the environment variable the broker fills with the value, masked.
"""

from __future__ import annotations

import platform as host_platform
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ci_runner.workflows.source import WorkflowError

_MARKER = re.compile("\x00secret:([A-Za-z_][A-Za-z0-9_]*)\x00")


def secret_marker(name: str) -> str:
    return f"\x00secret:{name}\x00"


def has_secret(value: str) -> bool:
    return "\x00secret:" in value


def secret_names_in(value: str) -> list[str]:
    return list(dict.fromkeys(_MARKER.findall(value)))


def shell_reference(value: str) -> str:
    """A marker-holding text as the body of a double-quoted sh string."""
    parts = []
    last = 0
    for match in _MARKER.finditer(value):
        parts.append(_sh_escape(value[last:match.start()]))
        parts.append("${" + match.group(1) + "}")
        last = match.end()
    parts.append(_sh_escape(value[last:]))
    return "".join(parts)


def in_script(script: str, shell: str | None, where: str) -> str:
    """``${{ secrets.X }}`` written into a run: script, as a reference to ``$X``."""
    if not has_secret(script):
        return script
    if shell not in (None, "bash", "sh") and not (shell or "").startswith(("bash", "sh ")):
        raise WorkflowError(f"{where}: a secret in a {shell} script cannot be passed here:"
                            " put it in the step's env: and read it from there")
    return _MARKER.sub(lambda m: "${" + m.group(1) + "}", script)


def _sh_escape(text: str) -> str:
    return re.sub(r'([\\"$`])', r"\\\1", text)


def runner_context(temp: str) -> dict[str, Any]:
    machine = host_platform.machine().lower()
    arch = {"x86_64": "X64", "amd64": "X64", "aarch64": "ARM64", "arm64": "ARM64",
            "armv7l": "ARM", "i686": "X86"}.get(machine, machine.upper())
    return {"os": "Linux", "arch": arch, "name": "ci-runner", "temp": temp,
            "tool_cache": str(Path(temp).parent / "hostedtoolcache"), "debug": "",
            "environment": "self-hosted"}


def github_context(metadata: Mapping[str, Any], event_name: str, workflow: Any,
                   workspace: str) -> dict[str, Any]:
    """What ``github.*`` says, from the run's metadata: the sha, ref, event..."""
    sha = str(metadata.get("sha", ""))
    ref = metadata.get("ref") or ""
    ref_name = ref.split("/", 2)[2] if ref.startswith(("refs/heads/", "refs/tags/")) else ""
    repo_name = str(metadata.get("repo_name") or Path(str(metadata.get("repo", "repo"))).name)
    repository = str(metadata.get("gha", {}).get("repository") or f"local/{repo_name}")
    owner = repository.split("/", 1)[0]
    actor = str(metadata.get("gha", {}).get("actor") or "ci-runner")
    run_id = str(metadata.get("run_id", ""))
    event: dict[str, Any] = {
        "ref": ref, "after": sha, "before": "0" * 40,
        "repository": {"full_name": repository, "name": repo_name,
                       "owner": {"login": owner}, "default_branch": ref_name or "main"},
        "sender": {"login": actor}, "head_commit": {"id": sha},
    }
    base_ref = head_ref = ""
    if event_name == "pull_request":
        head_ref = ref_name
        base_ref = "main"
        event["pull_request"] = {"number": 0, "head": {"ref": head_ref, "sha": sha},
                                 "base": {"ref": base_ref}}
    return {
        "sha": sha, "ref": ref, "ref_name": ref_name,
        "ref_type": "tag" if ref.startswith("refs/tags/") else "branch",
        "ref_protected": False, "event_name": event_name, "event": event,
        "repository": repository, "repository_owner": owner,
        "repositoryUrl": f"file://{metadata.get('repo', '')}",
        "workspace": workspace, "run_id": run_id, "run_number": "1", "run_attempt": "1",
        "actor": actor, "triggering_actor": actor, "job": "", "action": "",
        "action_path": "", "workflow": workflow.name, "workflow_ref":
        f"{repository}/{workflow.path}@{ref}", "head_ref": head_ref, "base_ref": base_ref,
        "server_url": "https://github.com", "api_url": "https://api.github.com",
        "graphql_url": "https://api.github.com/graphql", "token": "",
        "retention_days": "90", "secret_source": "None", "path": "", "env": "",
        "output": "", "state": "", "step_summary": "",
    }


def default_env(github: Mapping[str, Any], runner: Mapping[str, Any]) -> dict[str, str]:
    """The ``GITHUB_*`` and ``RUNNER_*`` variables every step gets."""
    return {
        "CI": "true", "GITHUB_ACTIONS": "true", "GITHUB_SHA": github["sha"],
        "GITHUB_REF": github["ref"], "GITHUB_REF_NAME": github["ref_name"],
        "GITHUB_REF_TYPE": github["ref_type"], "GITHUB_EVENT_NAME": github["event_name"],
        "GITHUB_REPOSITORY": github["repository"],
        "GITHUB_REPOSITORY_OWNER": github["repository_owner"],
        "GITHUB_RUN_ID": github["run_id"], "GITHUB_RUN_NUMBER": github["run_number"],
        "GITHUB_RUN_ATTEMPT": github["run_attempt"], "GITHUB_ACTOR": github["actor"],
        "GITHUB_TRIGGERING_ACTOR": github["actor"], "GITHUB_WORKFLOW": github["workflow"],
        "GITHUB_WORKFLOW_REF": github["workflow_ref"], "GITHUB_HEAD_REF": github["head_ref"],
        "GITHUB_BASE_REF": github["base_ref"], "GITHUB_SERVER_URL": github["server_url"],
        "GITHUB_API_URL": github["api_url"], "GITHUB_GRAPHQL_URL": github["graphql_url"],
        "RUNNER_OS": runner["os"], "RUNNER_ARCH": runner["arch"],
        "RUNNER_NAME": runner["name"], "RUNNER_TEMP": runner["temp"],
        "RUNNER_TOOL_CACHE": runner["tool_cache"], "RUNNER_ENVIRONMENT": "self-hosted",
    }

