"""A caller's NaN/Inf input during probation is refused (400) and never blamed on the new
version (issue 13, finding 7): before, one such request made the good model output NaN, failed
``nan_outputs`` (max 0), rolled the update back and marked the version failed."""

from __future__ import annotations

import numpy as np
import pytest

from edgeops.agent.api import InferenceServer
from edgeops.agent.client import AgentApiError, AgentClient
from edgeops.agent.statefile import State
from tests.agent.test_machine import committed_v1, event, events, settle
from tests.support.bundles import sample_inputs


def test_nan_inputs_during_probation_do_not_roll_back_a_good_model(tmp_path, trust_repo):
    agent, trace = committed_v1(tmp_path, trust_repo, probation={"window_count": 30, "window_seconds": 0.5})
    server = InferenceServer(agent, "127.0.0.1:0").start()
    try:
        agent.submit(trust_repo.command("assign", trust_repo.v2))
        assert agent.run_until(lambda: agent.persisted.state is State.PROBATION, 30)
        agent.tick()  # the window is open and records what is served
        assert agent.persisted.state is State.PROBATION and agent.status()["probation"] is not None
        client = AgentClient(server.address)
        for value in (np.nan, np.inf, -np.inf):
            x = sample_inputs(1)
            x[0, 5] = value
            with pytest.raises(AgentApiError) as e:
                client.infer({"input": x})
            assert e.value.status == 400 and "NaN/Inf" in str(e.value)
        assert np.isfinite(client.infer({"input": sample_inputs(1)})["probs"]).all()
        assert agent.counters["inference_errors"] == 0
        assert settle(agent) is State.COMMITTED
        assert agent.serving.manifest.version == "2.0.0" and trust_repo.v2.sha256 not in agent.persisted.failed
        gates = {g["gate"]: g for g in event(agent, "probation_passed")["gates"]}
        assert gates["nan_outputs"]["passed"] and gates["nan_outputs"]["measured"] == 0
        assert gates["error_rate"]["measured"] == 0
        assert not [e for e in events(agent) if e["kind"] == "rolled_back"]
        assert (State.PROBATION, State.ROLLING_BACK) not in trace.pairs()
    finally:
        server.stop()
        agent.stop()
