"""The dispatch primitive: an envelope per tenant, the runner loaded from its metadata."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ci_runner.dispatch import METADATA_KEY, dispatch, unwrap_params, wrap_params
from ci_runner.engine.driver import Engine
from ci_runner.errors import UsageError
from tests.conftest import ROOT


def test_envelope_round_trip() -> None:
    payload = wrap_params({"tenant": "t"}, {"a": 1})
    assert set(payload) == {METADATA_KEY, "params"}
    assert unwrap_params(payload) == ({"tenant": "t"}, {"a": 1})


def test_a_bare_payload_says_what_to_do() -> None:
    with pytest.raises(UsageError, match="wrap_params"):
        unwrap_params({"a": 1})


def test_dispatch_loads_the_tenants_runner_in_the_child(tmp_path: Path) -> None:
    with Engine(tmp_path / "e.db") as engine:
        ids = [
            dispatch(engine, tenant=tenant, params={"n": n},
                     metadata={"loader": "tests.workflows:load_echo"})
            for n, tenant in enumerate(("acme", "globex"))
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for iid in ids:
            assert engine.drive(iid, env=env, cwd=ROOT) == "complete"
        outputs = [json.loads(engine.get(i)["output"]) for i in ids]
        assert outputs == [{"tenant": "acme", "params": {"n": 0}},
                           {"tenant": "globex", "params": {"n": 1}}]
        assert [engine.get(i)["tenant"] for i in ids] == ["acme", "globex"]
