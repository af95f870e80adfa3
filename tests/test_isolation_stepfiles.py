"""A hostile step against the folder it hands files back in (``step.run(files=True)``,
what GitHub workflows' ``GITHUB_OUTPUT``/``GITHUB_ENV`` ride on).

The step owns that folder and the one above it in its private /tmp; the broker that
makes, reads and removes them runs as the server, outside the sandbox. A step that
puts links there must not make the broker read a host file into the run's result,
nor create, chown or delete anything of the host's on the next attempt.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.test_gha_step_api import _run_result
from tests.test_isolation_cli import _require

READ_THROUGH_A_LINK = r'''
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        victim = event.payload["victim"]
        await step.run("swap", ["sh", "-c",
            f'rm -rf "$CI_RUNNER_FILES" && ln -s {victim} "$CI_RUNNER_FILES"'], files=True)
'''

SWAP_THE_PARENT = r'''
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        victim = event.payload["victim"]
        # Every files folder of the run lies under this one, in the run's /tmp.
        await step.run("plant", ["sh", "-c",
            f'rm -rf /tmp/.ci-runner-files && ln -s {victim} /tmp/.ci-runner-files'])
        done = await step.run("use", ["sh", "-c", 'echo fine > "$CI_RUNNER_FILES/out"'],
                              files=True)
        return done["files"]
'''


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    (victim / "secret.txt").write_text("the-host-secret-0451\n")
    return victim


def _everything_stored(home: Path) -> str:
    text = "".join(p.read_text(errors="replace") for p in (home / "logs").rglob("*")
                   if p.is_file())
    return text + (home / "ci-runner.db").read_bytes().decode(errors="replace")


def test_a_link_in_place_of_the_files_folder_is_never_read(
        cli: Any, repo_with: Any, home: Path, tmp_path: Path) -> None:
    _require("bwrap")
    victim = _victim(tmp_path)
    repo = repo_with(READ_THROUGH_A_LINK)
    done = cli("run", "--sandbox", "bwrap", "--json", "-p", f"victim={victim}", cwd=repo)
    assert done.code == 1, done.err + done.out
    step = done.json()["steps"][0]
    assert step["status"] == "failed"
    assert "in place of its files folder" in json.dumps(step), step
    assert "the-host-secret-0451" not in done.out + done.err + _everything_stored(home)
    assert (victim / "secret.txt").read_text() == "the-host-secret-0451\n"


def test_a_link_planted_for_the_next_files_folder_is_replaced_not_followed(
        cli: Any, repo_with: Any, home: Path, tmp_path: Path) -> None:
    _require("bwrap")
    victim = _victim(tmp_path)
    before = victim.stat()
    repo = repo_with(SWAP_THE_PARENT)
    done = cli("run", "--sandbox", "bwrap", "--json", "-p", f"victim={victim}", cwd=repo)
    assert done.code == 0, done.err + done.out
    assert _run_result(done.json()["run_id"]) == {"out": "fine\n"}  # its own folder, anew
    # Nothing was made, chowned or removed in the folder the link pointed to.
    after = victim.stat()
    assert (after.st_uid, after.st_gid, after.st_mode) == (before.st_uid, before.st_gid,
                                                         before.st_mode)
    assert sorted(p.name for p in victim.iterdir()) == ["secret.txt"]
    assert (victim / "secret.txt").read_text() == "the-host-secret-0451\n"
    assert "the-host-secret-0451" not in _everything_stored(home)
