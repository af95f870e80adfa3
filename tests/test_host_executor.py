"""The host executor against real processes: streaming, exit codes, groups, env, masking."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ci_runner.errors import ExecutorError
from ci_runner.executors import (
    MASK,
    CommandResult,
    CommandSpec,
    Executor,
    HostExecutor,
    StartInfo,
    kill_process_group,
    scrubbed_env,
)
from tests.procs import alive

if TYPE_CHECKING:
    from collections.abc import Callable

PY = sys.executable
# Generous: only a broken executor ever waits for it.
SAFETY_TIMEOUT = 30.0


def _run(
    spec: CommandSpec,
    *,
    on_start: Callable[[StartInfo], None] | None = None,
    grace: float = 2.0,
) -> tuple[CommandResult, list[str]]:
    chunks: list[str] = []
    executor = HostExecutor(kill_grace_s=grace)
    result = asyncio.run(executor.run(spec, chunks.append, on_start=on_start))
    return result, chunks


def test_is_an_executor() -> None:
    executor: Executor = HostExecutor()
    assert executor is not None


def test_stdout_and_stderr_stream_in_order(tmp_path: Path) -> None:
    script = "echo one; echo two >&2; echo three"
    result, chunks = _run(CommandSpec(argv=script, cwd=tmp_path))
    assert "".join(chunks) == "one\ntwo\nthree\n"
    assert result == CommandResult(
        exit_code=0, duration_s=result.duration_s, output_tail="one\ntwo\nthree", timed_out=False
    )


def test_output_reaches_the_sink_while_the_command_runs(tmp_path: Path) -> None:
    # The command waits for a file that only the sink creates on seeing "ready":
    # buffered-until-exit output would run into the safety timeout instead.
    marker = tmp_path / "seen"
    script = f"echo ready; while [ ! -e {marker} ]; do sleep 0.01; done; echo done"
    seen: list[str] = []

    def sink(text: str) -> None:
        seen.append(text)
        if "ready" in "".join(seen):
            marker.touch()

    spec = CommandSpec(argv=script, cwd=tmp_path, timeout_s=SAFETY_TIMEOUT)
    result = asyncio.run(HostExecutor().run(spec, sink))
    assert not result.timed_out
    assert "".join(seen) == "ready\ndone\n"


@pytest.mark.parametrize(
    ("script", "code"),
    [("exit 0", 0), ("exit 3", 3), ("exit 255", 255), ("kill -TERM $$", 143), ("kill -9 $$", 137)],
)
def test_exit_codes(tmp_path: Path, script: str, code: int) -> None:
    result, _ = _run(CommandSpec(argv=script, cwd=tmp_path))
    assert (result.exit_code, result.timed_out) == (code, False)


def test_string_runs_through_sh_and_a_list_never_does(tmp_path: Path) -> None:
    _, chunks = _run(CommandSpec(argv="echo $((1 + 2)) | tr 3 x", cwd=tmp_path))
    assert "".join(chunks) == "x\n"
    _, chunks = _run(CommandSpec(argv=["echo", "$HOME", "a|b"], cwd=tmp_path))
    assert "".join(chunks) == "$HOME a|b\n"


def test_runs_in_the_step_cwd(tmp_path: Path) -> None:
    _, chunks = _run(CommandSpec(argv=["pwd"], cwd=tmp_path))
    assert Path("".join(chunks).strip()).resolve() == tmp_path.resolve()


def test_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    script = f"sh -c 'sleep 100 & echo $! > {pid_file}; wait' & wait"
    result, _ = _run(CommandSpec(argv=script, cwd=tmp_path, timeout_s=0.5))
    assert (result.exit_code, result.timed_out) == (124, True)
    assert not alive(int(pid_file.read_text()))


def test_timeout_kills_what_ignores_sigterm(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    # An ignored SIGTERM survives exec, so this sleep needs the SIGKILL after grace.
    script = f"sh -c \"trap '' TERM; exec sleep 100\" & echo $! > {pid_file}; wait"
    result, _ = _run(CommandSpec(argv=script, cwd=tmp_path, timeout_s=0.3), grace=0.2)
    assert (result.exit_code, result.timed_out) == (124, True)
    assert not alive(int(pid_file.read_text()))


def test_leftover_background_processes_die_with_the_step(tmp_path: Path) -> None:
    # The forgotten sleep also holds the output pipe open: the step must still end.
    script = "sleep 100 & echo $!; exit 0"
    result, chunks = _run(CommandSpec(argv=script, cwd=tmp_path, timeout_s=SAFETY_TIMEOUT))
    assert (result.exit_code, result.timed_out) == (0, False)
    assert not alive(int("".join(chunks)))


def test_on_start_gets_the_process_group_of_a_new_session(tmp_path: Path) -> None:
    started: list[StartInfo] = []
    code = "import os; print(os.getpgrp(), os.getsid(0))"
    _, chunks = _run(CommandSpec(argv=[PY, "-c", code], cwd=tmp_path), on_start=started.append)
    pgrp, sid = map(int, "".join(chunks).split())
    assert started == [{"pgid": pgrp}] == [{"pgid": sid}]
    assert pgrp != os.getpgrp()


def test_environment_is_scrubbed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "leaky")
    monkeypatch.setenv("LANG", "C.UTF-8")
    spec = CommandSpec(argv=["env"], cwd=tmp_path, env={"PASSED": "yes", "CI": "custom"})
    _, chunks = _run(spec)
    env = dict(line.split("=", 1) for line in "".join(chunks).splitlines())
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert env["PASSED"] == "yes"
    assert env["CI"] == "custom"
    assert env["CI_RUNNER"] == "1"
    assert env["LANG"] == "C.UTF-8"


def test_scrubbed_env_keeps_only_basics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/x")
    monkeypatch.setenv("GITHUB_TOKEN", "t")
    monkeypatch.delenv("TZ", raising=False)
    env = scrubbed_env({"EXTRA": "1"})
    assert env["HOME"] == "/home/x"
    assert env["CI"] == "true"
    assert env["EXTRA"] == "1"
    assert "GITHUB_TOKEN" not in env
    assert "TZ" not in env


def test_secret_is_in_the_env_and_masked_even_when_written_in_two_halves(tmp_path: Path) -> None:
    secret = "s3cr3t-v4lue-xyz"
    code = (
        "import os, sys, time\n"
        "s = os.environ['API_TOKEN']\n"
        "sys.stdout.write('token=' + s[:7]); sys.stdout.flush()\n"
        "time.sleep(0.05)\n"
        "sys.stdout.write(s[7:] + ' end\\n'); sys.stdout.flush()\n"
        "sys.stderr.write(s + '\\n')\n"
    )
    spec = CommandSpec(argv=[PY, "-c", code], cwd=tmp_path, secrets={"API_TOKEN": secret})
    result, chunks = _run(spec)
    streamed = "".join(chunks)
    assert streamed == f"token={MASK} end\n{MASK}\n"
    assert all(secret[:7] not in chunk for chunk in chunks)
    assert result.output_tail == f"token={MASK} end\n{MASK}"
    assert secret not in repr(spec)


def test_multiline_secret_printed_line_by_line_is_masked(tmp_path: Path) -> None:
    key = "-----BEGIN KEY-----\nMIIEowIBAAKCAQEA\n-----END KEY-----"
    spec = CommandSpec(
        argv='printf "%s\\n" "$KEY" | while read -r line; do echo "got $line"; done',
        cwd=tmp_path,
        secrets={"KEY": key},
    )
    _, chunks = _run(spec)
    assert "".join(chunks) == f"got {MASK}\ngot {MASK}\ngot {MASK}\n"


def test_stdin_is_closed(tmp_path: Path) -> None:
    result, chunks = _run(CommandSpec(argv=["cat"], cwd=tmp_path, timeout_s=SAFETY_TIMEOUT))
    assert (result.exit_code, result.timed_out, chunks) == (0, False, [])


def test_output_tail_is_the_last_twenty_lines(tmp_path: Path) -> None:
    result, chunks = _run(CommandSpec(argv=["seq", "1", "5000"], cwd=tmp_path))
    assert "".join(chunks).count("\n") == 5000
    assert result.output_tail == "\n".join(str(n) for n in range(4981, 5001))


def test_output_tail_is_capped_in_characters(tmp_path: Path) -> None:
    code = "print('x' * 10000)"
    result, _ = _run(CommandSpec(argv=[PY, "-c", code], cwd=tmp_path))
    assert result.output_tail == "x" * 4000


def test_utf8_split_between_writes_and_invalid_bytes(tmp_path: Path) -> None:
    code = (
        "import sys, time\n"
        "out = sys.stdout.buffer\n"
        "out.write(b'caf\\xc3'); out.flush(); time.sleep(0.05)\n"
        "out.write(b'\\xa9 \\xff\\n'); out.flush()\n"
    )
    _, chunks = _run(CommandSpec(argv=[PY, "-c", code], cwd=tmp_path))
    assert "".join(chunks) == "café \ufffd\n"


def test_command_not_found(tmp_path: Path) -> None:
    spec = CommandSpec(argv=["no-such-command-ci-runner"], cwd=tmp_path)
    with pytest.raises(ExecutorError, match=r"^command not found: no-such-command-ci-runner "):
        _run(spec)


def test_missing_cwd_is_reported_as_such(tmp_path: Path) -> None:
    with pytest.raises(ExecutorError, match="step cwd does not exist"):
        _run(CommandSpec(argv=["true"], cwd=tmp_path / "absent"))


def test_empty_argv_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExecutorError, match="empty command"):
        _run(CommandSpec(argv=[], cwd=tmp_path))


def test_cancelling_the_run_kills_the_group(tmp_path: Path) -> None:
    async def scenario() -> int:
        printed = asyncio.Event()
        chunks: list[str] = []

        def sink(text: str) -> None:
            chunks.append(text)
            printed.set()

        spec = CommandSpec(argv="sleep 100 & echo $!; wait", cwd=tmp_path)
        task = asyncio.ensure_future(HostExecutor().run(spec, sink))
        await printed.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return int("".join(chunks))

    assert not alive(asyncio.run(scenario()))


def test_a_failing_sink_stops_the_step_and_raises(tmp_path: Path) -> None:
    class SinkBroke(Exception):
        pass

    def sink(text: str) -> None:
        raise SinkBroke(text)

    pid_file = tmp_path / "pid"
    spec = CommandSpec(argv=f"echo $$ > {pid_file}; echo hi; sleep 100", cwd=tmp_path)
    with pytest.raises(SinkBroke):
        asyncio.run(HostExecutor().run(spec, sink))
    assert not alive(int(pid_file.read_text()))


def test_kill_process_group_kills_a_detached_group() -> None:
    proc = subprocess.Popen(
        ["sh", "-c", "sleep 100 & echo $!; wait"], stdout=subprocess.PIPE, start_new_session=True
    )
    assert proc.stdout is not None
    grandchild = int(proc.stdout.readline())
    kill_process_group(proc.pid, grace_s=1.0)
    assert proc.wait() == -15
    proc.stdout.close()
    assert not alive(grandchild)


def test_kill_process_group_of_a_gone_group_is_quiet() -> None:
    proc = subprocess.Popen(["true"], start_new_session=True)
    proc.wait()
    kill_process_group(proc.pid)


@pytest.mark.parametrize("pgid", [0, 1, -5])
def test_kill_process_group_refuses_special_groups(pgid: int) -> None:
    with pytest.raises(ValueError, match="refusing"):
        kill_process_group(pgid)
