"""A secret is masked wherever ci-runner writes or shows it, not only in step output:
returned by ``step.do``, raised in an exception, printed by the pipeline's own code,
or put in a step's name (refused). The pipeline gets the secret the way a hostile or
careless one would: a step writes it to a file in the worktree, pipeline code reads it."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.gitrepos import make_repo

SECRET = "tok-8c1f0e55aa"

LEAKY = '''
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("write", ["sh", "-c", 'printf %s "$DEPLOY_TOKEN" > tok'],
                       secrets=["DEPLOY_TOKEN"])
        tok = open("tok").read()
        print("the pipeline prints", tok, flush=True)
        await step.do("returns", lambda: {"token": tok, tok: [tok]})
        if event.payload.get("name"):
            await step.do("deploy-" + tok, lambda: 1)
        raise RuntimeError("failed with " + tok)
'''


@pytest.mark.parametrize("mode", ["bwrap", "off"])
def test_a_secret_is_masked_in_everything_ci_runner_stores_or_shows(
    cli, home: Path, tmp_path: Path, mode: str,
) -> None:
    if mode == "bwrap":
        from tests.test_isolation_cli import _require

        _require(mode)
    secrets = tmp_path / "secrets.yaml"
    secrets.write_text(f"DEPLOY_TOKEN: {SECRET}\n")
    secrets.chmod(0o600)
    repo = make_repo(tmp_path / "leaky", {".ci/pipeline.py": LEAKY})
    done = cli("run", "-C", str(repo), "--sandbox", mode, "--json",
               "--secrets-file", str(secrets))
    assert done.code == 1, done.err + done.out
    record = done.json()
    assert record["error"]["message"] == "failed with ***"
    run_id = record["run_id"]
    shown = [done.out, done.err, cli("show", run_id, "--json").out, cli("logs", run_id).out]
    with sqlite3.connect(home / "ci-runner.db") as db:
        stored = [json.dumps(row) for row in db.execute(
            "SELECT * FROM steps WHERE instance_id = ?", (run_id,))]
        stored += [json.dumps(row) for row in db.execute(
            "SELECT * FROM instances WHERE id = ?", (run_id,))]
        result = json.loads(db.execute(
            "SELECT result FROM steps WHERE instance_id = ? AND name = 'returns'",
            (run_id,)).fetchone()[0])
    files = [p.read_text() for p in (home / "logs" / run_id).iterdir()]
    assert result == {"token": "***", "***": ["***"]}
    assert "the pipeline prints ***" in (home / "logs" / run_id / "pipeline.log").read_text()
    for where, text in (("shown", "\n".join(shown)), ("database", "\n".join(stored)),
                        ("logs", "\n".join(files))):
        assert SECRET not in text, f"the secret is in clear in the {where}"

    named = cli("run", "-C", str(repo), "--sandbox", mode, "--json",
                "--secrets-file", str(secrets), "--param", "name=1")
    message = named.json()["error"]["message"]
    assert "a step's name must not hold a secret" in message and SECRET not in named.out
