"""The real CLI on a pseudo-terminal, as a person runs it: what it drew, as text.

One helper for every test of the live view, the prompts and Ctrl-C: the child gets
the terminal as stdout and stderr (and stdin, unless ``stdin_tty=False``) in a
session of its own, and the test may react to what is on screen (type an answer,
press Ctrl-C).
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

# Colours and cursor moves (CSI), window titles and links (OSC), carriage returns.
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")



class Keys:
    """What a test can do to the program on the terminal while it runs."""

    def __init__(self, controller: int, proc: subprocess.Popen[bytes]) -> None:
        self._controller = controller
        self._proc = proc

    def type(self, text: str) -> None:
        os.write(self._controller, text.encode())

    def ctrl_c(self) -> None:
        """SIGINT to the program's process group, as a terminal sends it."""
        os.killpg(self._proc.pid, signal.SIGINT)


def in_terminal(
    args: list[str] | tuple[str, ...], env: Mapping[str, str], *, cwd: Path | None = None,
    stdin_tty: bool = True, timeout: float = 120.0, columns: int = 140,
    react: Callable[[str, Keys], bool] | None = None,
) -> tuple[int, str]:
    """`python -m ci_runner ARGS` on a pseudo-terminal; returns its exit code and all it
    drew, escape sequences removed. ``react(screen, keys)`` sees the screen so far after
    every chunk and returns True once it has done what it waited for (it is not called
    again). Fails the test if the program is still running after ``timeout`` seconds."""
    controller, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ci_runner", *args], cwd=cwd,
        env={**env, "TERM": "xterm-256color", "COLUMNS": str(columns), "LINES": "50"},
        stdin=child if stdin_tty else subprocess.DEVNULL, stdout=child, stderr=child,
        close_fds=True, start_new_session=True)
    os.close(child)
    keys = Keys(controller, proc)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.2)
            if ready:
                try:
                    data = os.read(controller, 65536)
                except OSError:  # EIO: every writer of the terminal is gone
                    break
                if not data:
                    break
                chunks.append(data)
                if react is not None and react(screen_of(chunks), keys):
                    react = None
            elif proc.poll() is not None:
                break
        else:
            raise AssertionError(f"`ci-runner {' '.join(args)}` still ran after {timeout:g}s:"
                                 f"\n{screen_of(chunks)}")
        code = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(controller)
    return code, screen_of(chunks)


def screen_of(chunks: list[bytes]) -> str:
    return ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))
