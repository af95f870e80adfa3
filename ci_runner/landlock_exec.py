"""The exec helper that puts one light step under Landlock, where bubblewrap cannot be had.

Landlock must be entered by the process it confines, before ``exec``; the broker
runs in a thread of the driver, where ``preexec_fn`` is unsafe. So a step's command
starts as ``python -I -S landlock_exec.py --ro P... --rw P... [--nocaps] -- CMD...``:
this drops every capability (``--nocaps``: ci-runner is root), restricts itself and
execs the command,
which inherits the restriction with everything it starts. About 10 ms a step.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    ro: list[Path] = []
    rw: list[Path] = []
    nocaps = False
    args = iter(argv)
    for arg in args:
        if arg == "--":
            break
        if arg == "--nocaps":
            nocaps = True
            continue
        value = next(args, "")
        if arg == "--ro":
            ro.append(Path(value))
        elif arg == "--rw":
            rw.append(Path(value))
        else:
            sys.exit(f"landlock_exec: unknown option {arg!r}")
    command = list(args)
    if not command:
        sys.exit("landlock_exec: no command after --")
    # -I -S: neither the user's site nor the environment; the package sits above us.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from ci_runner import sandbox

    if nocaps:
        sandbox.drop_capabilities()
    base_ro, base_rw = sandbox.landlock_defaults()
    sandbox.landlock_restrict(ro=[*base_ro, *ro], rw=[*base_rw, *rw])
    try:
        os.execvp(command[0], command)  # noqa: S606 - the step's own argv, no shell
    except OSError as exc:
        print(f"landlock_exec: cannot run {command[0]}: {exc.strerror}", file=sys.stderr)
        sys.exit(127)


if __name__ == "__main__":
    main(sys.argv[1:])
