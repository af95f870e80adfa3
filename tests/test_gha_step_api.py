"""The step API additions workflows are built on, from a plain .ci/pipeline.py:
``step.run(files=True)`` (files handed back in the durable result, fresh per attempt,
bounded), ``add_mask=True`` (``::add-mask::``), ``step.skip`` and ``step.redacted``."""

from __future__ import annotations

from typing import Any

PIPELINE = r'''
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        first = await step.run("write", ["sh", "-c",
            'echo "a=1" > "$CI_RUNNER_FILES/out"; mkdir "$CI_RUNNER_FILES/sub";'
            ' echo x > "$CI_RUNNER_FILES/sub/ignored"; echo note > "$CI_RUNNER_FILES/n"'],
            files=True)
        flaky = await step.run("flaky", ["sh", "-c",
            'n=$(ls "$CI_RUNNER_FILES" | wc -l); echo "$n" > "$CI_RUNNER_FILES/count";'
            ' echo "attempt" > "$CI_RUNNER_FILES/left";'
            ' if [ ! -f marker ]; then touch marker; exit 1; fi'],
            files=True, retries={"limit": 1, "delay": 0})
        masked = await step.run("mask", ["sh", "-c",
            'v=pa55-w0rd-$((6 * 7)); echo "::add-mask::$v"; echo "said $v";'
            ' echo "$v" > "$CI_RUNNER_FILES/v"'], files=True, add_mask=True)
        later = await step.run("later", ["sh", "-c", "echo again pa55-w0rd-$((6 * 7))"])
        await step.skip("not here", "no reason to run")
        name = await step.redacted("step pa55-w0rd-42")
        return {"first": first["files"], "flaky": flaky["files"], "masked": masked["files"],
                "later": later["output_tail"], "name": name}
'''

BIG = r'''
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("big", ["sh", "-c",
            'head -c 300000 /dev/zero | tr "\\0" x > "$CI_RUNNER_FILES/huge"'], files=True)
'''


def test_files_masks_and_skips_from_a_pipeline(cli: Any, repo_with: Any) -> None:
    repo = repo_with(PIPELINE)
    done = cli("run", "--json", cwd=repo)
    assert done.code == 0, done.err + done.out
    record = done.json()
    assert record["steps"][1]["attempts"] == 2
    skipped = next(s for s in record["steps"] if s["name"] == "not here")
    assert skipped["status"] == "skipped" and skipped["skipped_because"] == "no reason to run"
    result = cli("show", record["run_id"], "--json", cwd=repo).json()
    logs = cli("logs", record["run_id"], cwd=repo).out
    assert "said ***" in logs and "again ***" in logs and "pa55-w0rd-42" not in logs
    assert not any(line.startswith("::add-mask::") for line in logs.splitlines())
    assert result["status"] == "complete"
    # The run's own result holds what each step handed back.
    out = _run_result(record["run_id"])
    assert out["first"] == {"out": "a=1\n", "n": "note\n"}  # folders are not files
    assert out["flaky"] == {"count": "0\n", "left": "attempt\n"}  # empty again on retry
    assert out["masked"] == {"v": "***\n"}
    assert out["later"] == "again ***"
    assert out["name"] == "step ***"


def test_too_big_a_file_fails_its_step_in_one_line(cli: Any, repo_with: Any) -> None:
    repo = repo_with(BIG)
    done = cli("run", "--json", cwd=repo)
    assert done.code == 1, done.err + done.out
    step = done.json()["steps"][0]
    assert step["status"] == "failed"
    assert step["error"] == "huge: the step wrote more than 256 KiB to it"


def _run_result(run_id: str) -> Any:
    """The run's returned value, as stored (the CLI shows no pipeline's return value)."""
    import json
    import sqlite3

    from ci_runner import paths

    with sqlite3.connect(paths.database()) as conn:
        row = conn.execute("SELECT output FROM instances WHERE id = ?", (run_id,)).fetchone()
    return json.loads(row[0])
