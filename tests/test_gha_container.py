"""A workflow job's ``container:`` through the real CLI and a real Docker engine: its
``run:`` steps are heavy steps in that image (outputs and ::add-mask:: as on the host,
the job's checkout at /workspace); an image that is not here, and services without a
container, skip their job with one line. Nothing is ever pulled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ci_runner import images
from tests.gitrepos import make_repo
from tests.test_container import require_engine

WORKFLOW = """\
on: push
jobs:
  boxed:
    runs-on: ubuntu-latest
    container:
      image: busybox
      env:
        WHERE: in-a-box
    steps:
      - uses: actions/checkout@v4
      - id: in
        name: inside
        run: |
          ls
          test -f /.dockerenv && echo "a container, $WHERE"
          echo "where=$GITHUB_WORKSPACE" >> "$GITHUB_OUTPUT"
          echo "::add-mask::hush-hush-42"
          echo "said hush-hush-42"
      - name: after
        run: echo "saw ${{ steps.in.outputs.where }} in $PWD"
  missing:
    runs-on: ubuntu-latest
    container: example.invalid/not-here:1
    steps: [{run: echo never}]
  svc:
    runs-on: ubuntu-latest
    services:
      db: postgres
    steps: [{run: echo never}]
"""


def test_container_jobs_run_their_steps_in_the_image(cli: Any, tmp_path: Path) -> None:
    images.build("busybox", client=require_engine())
    repo = make_repo(tmp_path / "boxed", {".github/workflows/ci.yml": WORKFLOW,
                                          "README": "hi\n"})
    done = cli("run", "--json", cwd=repo)
    assert done.code == 0, done.err + done.out
    record = done.json()
    steps = {s["name"]: s for s in record["steps"]}
    assert steps["boxed / inside"]["sandbox"] == "docker"
    assert steps["boxed / Run actions/checkout@v4"]["sandbox"] != "docker"
    inside = cli("logs", record["run_id"], "boxed / inside", cwd=repo).out
    assert "README" in inside and "a container, in-a-box" in inside
    assert "said ***" in inside and "hush-hush-42" not in inside
    after = cli("logs", record["run_id"], "boxed / after", cwd=repo).out
    assert ("saw /workspace/.ci-runner-jobs/boxed-0 in /workspace/.ci-runner-jobs/boxed-0"
            in after)
    assert steps["missing"]["skipped_because"] == (
        "image example.invalid/not-here:1 is not here and is never pulled: docker pull or"
        " docker load it first")
    assert steps["svc"]["skipped_because"].startswith("services: run here only beside a"
                                                      " container: job's steps")
