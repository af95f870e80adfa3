"""The broker's thread keeps its own handle on the pipeline's socket: the driver may close
its side at any moment (a pipeline that failed to load goes at once), and the thread
must neither crash on a closed descriptor nor stop answering what already arrived."""

from __future__ import annotations

import json
import socket
import struct
import threading
from pathlib import Path
from typing import Any

import pytest

from ci_runner.dispatch.broker import RunContext, StepBroker

HEADER = struct.Struct("!I")


def make(tmp_path: Path) -> tuple[StepBroker, socket.socket, socket.socket]:
    workspace = tmp_path / "worktree"
    (workspace / ".ci").mkdir(parents=True)
    (workspace / ".ci" / "pipeline.py").write_text("")
    no_light_steps: Any = None
    context = RunContext(run_id="r1", tenant="t", repo=workspace, workspace=workspace,
                         sha="0" * 40, secrets_file=None, untrusted=False, cache_scope="t",
                         confinement=no_light_steps)
    ours, theirs = socket.socketpair()
    return StepBroker(context, ours), ours, theirs


def ask(sock: socket.socket, message: dict[str, Any]) -> dict[str, Any]:
    data = json.dumps(message).encode()
    sock.sendall(HEADER.pack(len(data)) + data)
    sock.settimeout(20)
    (size,) = HEADER.unpack(sock.recv(HEADER.size, socket.MSG_WAITALL))
    reply: dict[str, Any] = json.loads(sock.recv(size, socket.MSG_WAITALL))
    return reply


@pytest.fixture
def thread_errors(monkeypatch: pytest.MonkeyPatch) -> list[BaseException]:
    seen: list[BaseException] = []

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None:
            seen.append(args.exc_value)

    monkeypatch.setattr(threading, "excepthook", hook)
    return seen


def test_the_owner_closing_its_socket_at_once_does_not_break_the_thread(
    tmp_path: Path, thread_errors: list[BaseException],
) -> None:
    for i in range(20):  # the race needed the close to land before the thread's dup
        broker, _ours, theirs = make(tmp_path / f"r{i}")
        broker.start()
        broker._sock.close()  # what a driver whose pipeline process died does first
        reply = ask(theirs, {"id": 1, "op": "nonsense", "args": {}})
        assert "no request 'nonsense'" in reply["error"]["message"]
        theirs.close()
        broker.close()
    assert thread_errors == []


def test_a_broker_closed_before_it_serves_leaves_no_thread_or_descriptor(
    tmp_path: Path, thread_errors: list[BaseException],
) -> None:
    broker, _ours, theirs = make(tmp_path)
    before = len(list(Path("/proc/self/fd").iterdir()))
    broker.start()
    broker.close()
    theirs.close()
    assert broker._thread is not None and not broker._thread.is_alive()
    assert len(list(Path("/proc/self/fd").iterdir())) <= before - 1  # ours went too
    assert thread_errors == []
