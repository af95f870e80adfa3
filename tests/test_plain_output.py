"""Plain output (a pipe, not --json): written in buffers, not a flush per line, yet a
reader of the pipe sees a step's line as soon as the run goes quiet; the excerpt's
error finder skips lines cheaply without missing one it would have found."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from ci_runner.cli.view import ERROR_LOOKING, may_look_like_error
from tests.conftest import ROOT
from tests.gitrepos import ISOLATED_GIT_ENV

PIECES = ["error", "Error", "ERROR", "ERR!", "Exception", "FAIL", "FAILED", "Traceback",
          " (most recent call last)", "npm ", "fatal:", "panic:", "E", "  ", " ", ":", "12",
          "3", "-->", "a.py", "src/x.ts", "F401 ", "[*] ", "x", "0", "TS2345", "(", "[",
          "\t", "é", "TypeError", "warning", "rror", "RR"]


@settings(max_examples=5000, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=12).map("".join))
def test_the_cheap_test_passes_every_line_the_expression_finds(line: str) -> None:
    if ERROR_LOOKING.search(line):
        assert may_look_like_error(line), line


def test_a_line_reaches_the_pipe_while_the_step_still_runs(
    repo_with: Callable[..., Path], home: Path, tmp_path: Path,
) -> None:
    gate = tmp_path / "go"
    repo = repo_with(f'''
from ci_runner import Pipeline


class CI(Pipeline):
    async def run(self, event, step):
        await step.run("talk", ["sh", "-c", "echo first-line; sleep 0.5; echo later-line; "
                                "while [ ! -e {gate} ]; do sleep 0.05; done; echo second-line"])
''')
    env = {**os.environ, **ISOLATED_GIT_ENV, "CI_RUNNER_HOME": str(home),
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "ci_runner", "run", "-C", str(repo)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    seen = b""
    try:
        deadline = time.monotonic() + 60
        # Nothing changes state after the later line (the step's start was said
        # before it), so only the quiet pipe can send it.
        while b"[talk] later-line" not in seen:
            left = deadline - time.monotonic()
            assert left > 0, f"the step's first line never reached the pipe: {seen!r}"
            ready, _, _ = select.select([proc.stdout], [], [], left)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 65536)
                assert chunk, f"the CLI ended first: {seen!r}"
                seen += chunk
        assert b"second-line" not in seen  # the step is still waiting for the gate
        gate.touch()
        rest, err = proc.communicate(timeout=60)
    finally:
        gate.touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = (seen + rest).decode()
    assert proc.returncode == 0, err
    assert out.index("[talk] first-line") < out.index("[talk] second-line") < out.index(
        "complete in")
