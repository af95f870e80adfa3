"""Starter pipelines that `ci-runner init` copies into a repo as .ci/pipeline.py."""
