"""``python -m ci_runner``: the same as the ``ci-runner`` command."""

from ci_runner.cli.app import main

main()
