"""GitHub Actions workflows (``.github/workflows/*.yml``) run offline as ci-runner runs
(issue 15).

A workflow is translated, not emulated: ``plan`` picks the workflows, jobs and matrix
cells; ``runner.WorkflowPipeline`` drives them with the same step API a
``.ci/pipeline.py`` uses, so durability, resume, the live view, masking and caching
apply. ``model`` parses and checks the files, ``actions`` holds the built-in
stand-ins, ``expressions``/``matrix``/``hashfiles`` implement GitHub's expression
language and matrix rules.
"""

from __future__ import annotations

from ci_runner.workflows.source import WorkflowError

__all__ = ["WorkflowError"]
