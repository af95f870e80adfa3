"""A light step's network, as the README promises: the host's by default (a local run
may `pip install`), loopback only with ``network=False``, and none at all for a fork's
pull request however the step asks. Seen from inside bubblewrap through the step's
own /proc/net/dev (its network namespace's interfaces)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.test_gha_step_api import _run_result
from tests.test_isolation_cli import _require

PIPELINE = r'''
from ci_runner import Pipeline

LIST = ["sh", "-c", "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort"]

class CI(Pipeline):
    async def run(self, event, step):
        default = await step.run("default", LIST)
        offline = await step.run("offline", LIST, network=False)
        online = await step.run("online", LIST, network=True)
        return {k: r["output_tail"].split() for k, r in
                (("default", default), ("offline", offline), ("online", online))}
'''


def _host_interfaces() -> list[str]:
    lines = Path("/proc/net/dev").read_text().splitlines()[2:]
    return sorted(line.split(":")[0].strip() for line in lines)


def test_a_light_step_has_the_host_network_unless_it_says_network_false(
        cli: Any, repo_with: Any) -> None:
    _require("bwrap")
    repo = repo_with(PIPELINE)
    done = cli("run", "--sandbox", "bwrap", "--json", cwd=repo)
    assert done.code == 0, done.err + done.out
    seen = _run_result(json.loads(done.out)["run_id"])
    assert seen["offline"] == ["lo"]
    assert seen["default"] == seen["online"] == _host_interfaces()
    assert len(_host_interfaces()) > 1  # else this proves nothing


def test_a_light_steps_network_must_be_true_or_false(cli: Any, repo_with: Any) -> None:
    repo = repo_with(PIPELINE.replace("network=True", 'network="bridge"'))
    done = cli("run", "--sandbox", "off", "--json", cwd=repo)
    assert done.code == 2, done.err + done.out  # the pipeline's mistake: a usage error
    assert "a light step's network is True or False" in done.err
