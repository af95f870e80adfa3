"""`ci-runner secrets set|list|rm` through the real CLI, and what a run does with the
stored secrets: a step gets only the ones it names, and no value reaches anything
ci-runner writes, however the step prints it."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, Result
from tests.gitrepos import ISOLATED_GIT_ENV, git, make_repo

Cli = Callable[..., Result]
PY = sys.executable


def secrets(home: Path, *args: str, stdin: str | None = None, cwd: Path | None = None) -> Result:
    """`ci-runner secrets ARGS` with ``stdin`` piped in (not a terminal)."""
    env = {**os.environ, **ISOLATED_GIT_ENV, "CI_RUNNER_HOME": str(home),
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [PY, "-m", "ci_runner", "secrets", *args], input=stdin if stdin is not None else "",
        text=True, capture_output=True, env=env, cwd=cwd, timeout=60, check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def store_files(home: Path) -> list[Path]:
    return sorted(p for p in (home / "secrets").glob("*.yaml"))


def test_set_list_rm_keep_values_private(home: Path, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "proj", {"README.md": "x\n"})
    other = make_repo(tmp_path / "other", {"README.md": "y\n"})
    value = "s3cr3t-" + uuid.uuid4().hex

    done = secrets(home, "set", "API_TOKEN", stdin=value + "\n", cwd=repo)
    assert done.code == 0, done.err
    assert secrets(home, "set", "OTHER_ONE", "-C", str(repo), stdin="two").code == 0
    (store,) = store_files(home)
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.parent.stat().st_mode) == 0o700
    assert value in store.read_text()  # the one place the value lives
    assert [p.name for p in store.parent.iterdir() if p.name.endswith(".tmp")] == []

    listed = secrets(home, "list", cwd=repo)
    assert listed.out.split() == ["API_TOKEN", "OTHER_ONE"]
    assert secrets(home, "list", "--json", "-C", str(repo)).json() == ["API_TOKEN", "OTHER_ONE"]
    assert "no secrets stored" in secrets(home, "list", cwd=other).out  # per repo
    # Every worktree of a repo is the same repo.
    git(repo, "worktree", "add", "--detach", "-q", str(tmp_path / "wt"))
    assert secrets(home, "list", cwd=tmp_path / "wt").out.split() == ["API_TOKEN", "OTHER_ONE"]

    replaced = secrets(home, "set", "API_TOKEN", stdin=value + "-2\n", cwd=repo)
    assert replaced.code == 0
    assert store.read_text().count("API_TOKEN") == 1
    assert secrets(home, "rm", "OTHER_ONE", cwd=repo).code == 0
    assert secrets(home, "list", cwd=repo).out.split() == ["API_TOKEN"]
    missing = secrets(home, "rm", "OTHER_ONE", cwd=repo)
    assert missing.code == 2 and "no secret 'OTHER_ONE'" in missing.err
    assert secrets(home, "rm", "API_TOKEN", cwd=repo).code == 0
    assert store_files(home) == []  # the last one gone, the file too

    # A value is never an argument; names are checked; nothing empty is stored.
    assert secrets(home, "set", "API_TOKEN", value, cwd=repo).code == 2
    assert secrets(home, "set", "9LIVES", stdin="x", cwd=repo).code == 2
    empty = secrets(home, "set", "EMPTY", stdin="\n", cwd=repo)
    assert empty.code == 2 and "empty value" in empty.err
    assert store_files(home) == []
    for output in (done, listed, replaced):
        assert value not in output.out + output.err


def test_a_store_open_to_others_is_refused(home: Path, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "proj", {"README.md": "x\n"})
    assert secrets(home, "set", "A", stdin="aaaa", cwd=repo).code == 0
    (store,) = store_files(home)
    store.chmod(0o644)
    refused = secrets(home, "list", cwd=repo)
    assert refused.code == 2 and f"chmod 600 {store}" in refused.err


ONLY_NAMED = """
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("gets-alpha", 'echo "alpha=${#ALPHA} beta=${BETA:-unset}"',
                       secrets=["ALPHA"])
        await step.run("gets-none", 'echo "alpha=${ALPHA:-unset} beta=${BETA:-unset}"')
"""


def test_a_step_receives_only_the_secrets_it_names(
    cli: Cli, repo_with: Callable[..., Path], home: Path,
) -> None:
    repo = repo_with(ONLY_NAMED)
    alpha, beta = "alpha-" + uuid.uuid4().hex, "beta-" + uuid.uuid4().hex
    assert secrets(home, "set", "ALPHA", stdin=alpha, cwd=repo).code == 0
    assert secrets(home, "set", "BETA", stdin=beta, cwd=repo).code == 0

    done = cli("run", "--json", cwd=repo)  # no --secrets-file: the repo's store
    assert done.code == 0, done.err
    logs = cli("logs", done.json()["run_id"]).out
    assert f"alpha={len(alpha)} beta=unset" in logs
    assert "alpha=unset beta=unset" in logs


MASKING = """
import sys
from ci_runner import Pipeline

SPLIT = '''
import os, sys, time
v = os.environ["TOKEN"]
h = len(v) // 2
sys.stdout.write("split=" + v[:h]); sys.stdout.flush(); time.sleep(0.2)
sys.stdout.write(v[h:] + "\\\\n"); sys.stdout.flush()
sys.stderr.write("errsplit=" + v[:3]); sys.stderr.flush(); time.sleep(0.1)
sys.stderr.write(v[3:] + "\\\\n")
'''

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("whole", 'echo "token=$TOKEN"; echo "err=$TOKEN" >&2; echo "len=${#TOKEN}"',
                       secrets=["TOKEN"])
        await step.run("split", [sys.executable, "-c", SPLIT], secrets=["TOKEN"])
        await step.run("multi", 'printf "key=%s\\\\n" "$KEY"; echo "$KEY" | tail -n 1',
                       secrets=["KEY"])
        await step.run("leaks-then-fails", 'printf "fail=%s\\\\n" "$TOKEN $KEY"; exit 9',
                       secrets=["TOKEN", "KEY"])
"""


def test_stored_secrets_never_reach_anything_ci_runner_writes(
    cli: Cli, repo_with: Callable[..., Path], home: Path,
) -> None:
    token = "tok-" + uuid.uuid4().hex + "-$.*+?()[]{}|^\\'\""  # regex and shell metacharacters
    key_lines = [f"line{i}-{uuid.uuid4().hex}" for i in range(3)]
    key = "-----BEGIN TEST KEY-----\n" + "\n".join(key_lines) + "\n-----END TEST KEY-----"
    repo = repo_with(textwrap.dedent(MASKING))
    assert secrets(home, "set", "TOKEN", stdin=token + "\n", cwd=repo).code == 0
    assert secrets(home, "set", "KEY", stdin=key + "\n", cwd=repo).code == 0

    # A reader holding the database open keeps the -wal file after the CLI closes it, as
    # a running `watch` or worker would: its raw bytes are checked too.
    assert cli("runs").code == 0
    reader = sqlite3.connect(home / "ci-runner.db")
    try:
        reader.execute("SELECT count(*) FROM instances").fetchone()
        done = cli("run", cwd=repo)
        assert done.code == 1, (done.out, done.err)  # the last step fails after echoing both
        (record,) = cli("runs", "--json").json()
        run_id = record["run_id"]
        assert run_id.encode() in (home / "ci-runner.db-wal").read_bytes()
        _assert_nowhere(home, [token, key, *key_lines], cli, record, done, repo)
    finally:
        reader.close()


def _assert_nowhere(
    home: Path, values: list[str], cli: Cli, record: dict[str, Any], done: Result, repo: Path,
) -> None:
    run_id = record["run_id"]
    token = values[0]
    logs = cli("logs", run_id)
    shown = cli("show", run_id, "--json")
    assert f"len={len(token)}" in logs.out  # the step really had the value
    for masked in ("token=***", "err=***", "split=***", "errsplit=***", "key=***", "fail=***"):
        assert masked in logs.out, masked
    assert "exited with code 9" in shown.json()["steps"][-1]["error"]

    outputs = [done.out, done.err, logs.out, logs.err, shown.out, shown.err,
               json.dumps(record), cli("show", run_id).out,
               secrets(home, "list", cwd=repo).out]
    for value in values:
        for text in outputs:
            assert value not in text
    (store,) = store_files(home)
    written = [p for p in home.rglob("*") if p.is_file() and p != store]
    assert home / "ci-runner.db" in written
    assert home / "ci-runner.db-wal" in written
    for path in written:  # logs, the db and its -wal, artifacts, anything else
        data = path.read_bytes()
        for value in values:
            assert value.encode() not in data, path
