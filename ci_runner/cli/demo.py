"""`ci-runner demo`: make a small git repo with a pipeline, so a first run needs nothing else."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ci_runner.cli.starters import _starter_dir
from ci_runner.errors import UsageError

FILES = {
    "VERSION": "0.1.0\n",
    "app.py": 'def greet(name: str) -> str:\n    return f"hello, {name}"\n',
    "test_app.py": (
        "import unittest\n\nfrom app import greet\n\n\n"
        "class GreetTest(unittest.TestCase):\n"
        "    def test_greet(self) -> None:\n"
        "        self.assertEqual(greet('ci'), 'hello, ci')\n\n\n"
        "if __name__ == '__main__':\n    unittest.main()\n"
    ),
    # Fails on its first attempt in each worktree, so the demo shows a retry.
    "flaky.py": (
        "import pathlib, sys\n"
        "mark = pathlib.Path('.flaky-tried')\n"
        "if not mark.exists():\n"
        "    mark.touch()\n"
        "    sys.exit('first try fails (on purpose: watch it retry)')\n"
        "print('second try passes')\n"
    ),
    ".gitignore": ".flaky-tried\n",
}


def make_demo_repo(path: Path) -> Path:
    if path.exists() and any(path.iterdir()):
        if (path / ".ci" / "pipeline.py").exists() and (path / ".git").exists():
            return path  # the demo repo from an earlier `ci-runner demo`
        raise UsageError(f"{path} exists and is not empty; pick another folder for the demo")
    (path / ".ci").mkdir(parents=True, exist_ok=True)
    for name, text in FILES.items():
        (path / name).write_text(text, encoding="utf-8")
    pipeline = (_starter_dir() / "_demo.py").read_text(encoding="utf-8")
    (path / ".ci" / "pipeline.py").write_text(pipeline, encoding="utf-8")
    ident = ["-c", "user.name=ci-runner demo", "-c", "user.email=demo@ci-runner.invalid"]
    for args in (["init", "-q", "-b", "main"], ["add", "-A"],
                 [*ident, "commit", "-q", "-m", "demo project"]):
        subprocess.run(["git", *args], cwd=path, check=True, stdin=subprocess.DEVNULL)
    return path
