"""The local inference API and its client, over TCP loopback and a Unix socket."""

from __future__ import annotations

import numpy as np
import pytest

from edgeops.agent.api import InferenceServer
from edgeops.agent.client import AgentApiError, AgentClient
from tests.agent.test_machine import committed_v1, make_agent
from tests.support.bundles import sample_inputs


@pytest.fixture(scope="module")
def served(tmp_path_factory, trust_repo):
    tmp = tmp_path_factory.mktemp("api")
    agent, _ = committed_v1(tmp, trust_repo)
    tcp = InferenceServer(agent, "127.0.0.1:0").start()
    unix = InferenceServer(agent, f"unix:{tmp}/agent.sock").start()
    yield agent, tcp, unix
    tcp.stop()
    unix.stop()
    agent.stop()


@pytest.mark.parametrize("which", ["tcp", "unix"])
def test_json_and_raw_inference_match_the_model(served, which):
    agent, tcp, unix = served
    client = AgentClient((tcp if which == "tcp" else unix).address)
    x = sample_inputs(3)
    expected = agent.serving.runtime.run({"input": x})["probs"]
    full = client.infer_full({"input": x})
    np.testing.assert_allclose(full["outputs"]["probs"], expected, rtol=1e-6)
    assert full["model"]["version"] == "1.0.0"
    np.testing.assert_allclose(client.infer_raw(x), expected, rtol=1e-6)
    assert client.health()["model"]["sha256"] == agent.serving.sha256
    assert client.status()["state"] == "committed"


def test_every_inference_is_seen_by_the_agent(served):
    agent, tcp, _ = served
    before = agent.counters["inferences"]
    AgentClient(tcp.address).infer({"input": sample_inputs(1)})
    assert agent.counters["inferences"] == before + 1


@pytest.mark.parametrize(
    "call, status",
    [
        (lambda c: c.infer({"wrong": sample_inputs(1)}), 400),
        (lambda c: c.infer_raw(np.zeros((1, 3), np.float32)), 500),  # wrong shape: the runtime refuses it
        (lambda c: c._json("POST", "/v1/infer", {"inputs": {"input": {"dtype": "float32", "shape": [1, 16], "data": "!!"}}}), 400),
        (lambda c: c._json("GET", "/v1/nothing"), 404),
    ],
)
def test_bad_requests_get_clear_errors(served, call, status):
    _, tcp, _ = served
    with pytest.raises(AgentApiError) as e:
        call(AgentClient(tcp.address))
    assert e.value.status == status


def test_health_is_503_without_a_model(tmp_path, trust_repo):
    agent = make_agent(tmp_path, trust_repo)
    server = InferenceServer(agent, "127.0.0.1:0").start()
    try:
        with pytest.raises(AgentApiError) as e:
            AgentClient(server.address).health()
        assert e.value.status == 503
        with pytest.raises(AgentApiError) as e:
            AgentClient(server.address).infer({"input": sample_inputs(1)})
        assert e.value.status == 503
    finally:
        server.stop()
        agent.stop()
