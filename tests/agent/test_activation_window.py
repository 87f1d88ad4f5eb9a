"""The probation window is open before the new version serves its first request.

bench/agent.py found the gap: the window used to open after the swap, once the previous
version had been loaded for shadow runs, so a live request answered by the new version in
between (~70 ms for a 20 MB model) was never seen by probation, and a version that answered it
with NaN committed. These tests send that request the moment the new version serves.
"""

from __future__ import annotations

import numpy as np

from edgeops.agent.statefile import State
from tests.agent.test_machine import TRIGGER, committed_v1, event, settle, trigger_inputs



def long_window(agent) -> None:
    """After v1 committed: a window that only the live request can decide."""
    agent.config.probation.window_count = 100_000
    agent.config.probation.window_seconds = 600.0


def test_request_right_after_the_swap_is_watched_by_probation(tmp_path, trust_repo):
    pub = trust_repo.publish("7.0.0-nan", 70, variant="nan", trigger=TRIGGER)
    agent, trace = committed_v1(tmp_path, trust_repo)
    long_window(agent)
    real_serve = agent.serve_current
    answered = []

    def serve_then_live_request():
        real_serve()
        if agent.persisted.state is State.ACTIVATING and agent.serving.sha256 == pub.sha256:
            outputs, model = agent.infer(trigger_inputs())  # arrives as the new version starts serving
            answered.append((model.manifest.version, bool(np.isnan(outputs["probs"]).any())))

    agent.serve_current = serve_then_live_request  # wraps the real method; the agent is otherwise untouched
    agent.submit(trust_repo.command("assign", pub))
    assert settle(agent, timeout=30) is State.FAILED, f"the NaN answer went unobserved; state {agent.persisted.state.value}"
    assert answered == [("7.0.0-nan", True)]
    failed = [g for g in event(agent, "rolled_back")["gates"] if not g["passed"]]
    assert failed[0]["gate"] == "nan_outputs" and failed[0]["measured"] == 1.0
    assert (State.ACTIVATING, State.PROBATION) in trace.pairs() and (State.PROBATION, State.ROLLING_BACK) in trace.pairs()
    assert agent.serving.manifest.version == "1.0.0"
    agent.stop()


def test_window_uses_the_new_versions_budget_and_requests_to_the_old_one_are_not_counted(tmp_path, trust_repo):
    pub = trust_repo.publish("8.0.0", 80, latency_p95_ms=7.5)  # v1 has 20 ms
    agent, _ = committed_v1(tmp_path, trust_repo)
    long_window(agent)
    seen = {}

    def at_swap(state, label):
        if state is State.ACTIVATING and label == "swapped":
            seen["old_answered"] = agent.infer(trigger_inputs())[1].manifest.version

    agent.hooks.checkpoint = at_swap
    agent.submit(trust_repo.command("assign", pub))
    assert agent.run_until(lambda: agent.persisted.state is State.PROBATION, 30)
    monitor = agent.probation_monitor()
    assert monitor.budget_p95_ms == 7.5 and monitor.task == "classifier"
    assert seen["old_answered"] == "1.0.0"
    assert agent.status()["probation"]["inferences"] == monitor.count  # what the old version answered is not in it
    agent.stop()
