"""`ci-runner worker`: a long-running process that drives whatever needs a driver.

Each run is driven by its own `ci-runner resume RUN_ID` process, so a run that
misbehaves cannot take the worker down, and the lease (not the worker) decides
who drives a run: two workers never drive one run at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import FrameType

from ci_runner import paths
from ci_runner.dispatch.control import needs_driver
from ci_runner.dispatch.runs import REQUEUE_ENV, open_engine

GRACE_S = 30.0


class Worker:
    def __init__(self, *, concurrency: int, poll_s: float) -> None:
        self.concurrency = concurrency
        self.poll_s = poll_s
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.stopping = False

    def _stop(self, _signum: int, _frame: FrameType | None) -> None:
        self.stopping = True

    def serve(self, *, once: bool = False) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        print(f"worker {os.getpid()}: driving up to {self.concurrency} runs", flush=True)
        try:
            with open_engine() as engine:
                while not self.stopping:
                    self._reap_finished()
                    for run_id in needs_driver(engine):
                        if len(self.running) >= self.concurrency:
                            break
                        if run_id not in self.running:
                            self._start(run_id)
                    if once and not self.running:
                        return
                    time.sleep(self.poll_s if not once else 0.05)
        except KeyboardInterrupt:
            pass
        self._shutdown()

    def _start(self, run_id: str, env: dict[str, str] | None = None) -> None:
        log_dir = paths.run_logs(run_id)
        log_dir.mkdir(parents=True, exist_ok=True)
        with (log_dir / "worker.log").open("ab") as log:
            self.running[run_id] = subprocess.Popen(
                [sys.executable, "-m", "ci_runner", "resume", run_id],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                # Our SIGINT at shutdown hands the run back for the next worker.
                env={**os.environ, REQUEUE_ENV: "requeue", **(env or {})},
            )
        print(f"driving {run_id}", flush=True)

    def _reap_finished(self) -> None:
        for run_id, proc in list(self.running.items()):
            code = proc.poll()
            if code is not None:
                del self.running[run_id]
                print(f"{run_id} stopped (exit {code})", flush=True)

    def _shutdown(self) -> None:
        """Let running steps finish for a grace period; then interrupt the rest, which
        release their runs for the next worker (nothing is lost)."""
        deadline = time.monotonic() + GRACE_S
        while self.running and time.monotonic() < deadline:
            self._reap_finished()
            time.sleep(0.1)
        for proc in self.running.values():
            proc.send_signal(signal.SIGINT)
        for proc in self.running.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
