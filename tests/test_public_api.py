"""The pipeline author's API is exactly these names; changing them is a breaking change."""

from __future__ import annotations

import subprocess
import sys

import ci_runner

EXPECTED = [
    "CIRunnerError", "Cancelled", "CommandFailed", "EventTimeout", "NonRetryableError",
    "Pipeline", "PipelineEvent", "PipelineStep", "Rejected", "RetryPolicy", "StepFailed",
    "StepTimeout",
]


def test_exports_are_pinned_and_sorted() -> None:
    assert ci_runner.__all__ == EXPECTED
    assert sorted(ci_runner.__all__) == ci_runner.__all__
    for name in EXPECTED:
        assert getattr(ci_runner, name).__name__ == name


def test_cli_start_does_not_import_the_engine_runtime() -> None:
    """`ci-runner --help` must not pay for asyncio, gitpython, sqlite-utils or rich."""
    code = ("import sys, ci_runner.cli.app; "
            "print(' '.join(m for m in ('asyncio', 'git', 'sqlite_utils', 'rich') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == ""


def test_every_command_has_help() -> None:
    from typer.testing import CliRunner

    from ci_runner.cli.app import app

    runner = CliRunner()
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0
    import typer

    commands = list(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    assert commands
    for name in commands:
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0, name
        assert "Usage:" in result.output
