"""GitHub Actions workflows run offline as ci-runner runs (issue 15)."""
