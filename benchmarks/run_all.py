"""Run every benchmark in turn, then repeat each one's goal rows in one summary.

    python benchmarks/run_all.py                 # all of them
    python benchmarks/run_all.py fork startup    # only those whose name contains a word

Exits non-zero only when a benchmark crashes; a MISS is a finding, not a failure.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ("bench_light_step", "bench_heavy_step", "bench_startup", "bench_fork",
         "bench_engine_vs_dbos", "bench_hibernation", "bench_webhooks", "bench_watch",
         "bench_cached_run", "bench_sandbox", "bench_output", "bench_input_keys",
         "bench_web", "bench_postgres", "bench_burst", "bench_uncommitted")


def main() -> None:
    words = sys.argv[1:]
    names = [n for n in ORDER if not words or any(w in n for w in words)]
    summary: list[str] = []
    crashed: list[str] = []
    for name in names:
        print(f"\n##### {name}", flush=True)
        proc = subprocess.Popen([sys.executable, str(HERE / f"{name}.py")],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            if line.rstrip().endswith(("PASS", "MISS")):
                summary.append(f"{name}: " + re.sub(r"\s{2,}", " | ", line.strip()))
        if proc.wait() != 0:
            crashed.append(name)
    print("\n##### summary (goal rows)")
    for line in summary:
        print(f"  {line}")
    for name in crashed:
        print(f"  {name}: CRASHED (exit code non-zero, see its output above)")
    sys.exit(1 if crashed else 0)


if __name__ == "__main__":
    main()
