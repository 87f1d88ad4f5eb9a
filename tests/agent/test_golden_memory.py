"""A served version holds its golden vectors only while probation's synthetic traffic needs
them: a 224x224 model's are ~2 MB of arrays that would otherwise stay resident for good."""

from __future__ import annotations

from edgeops.agent.statefile import State
from tests.agent.test_machine import TRIGGER, committed_v1, settle, trigger_inputs


def test_golden_vectors_are_held_only_during_probation(tmp_path, trust_repo):
    agent, _ = committed_v1(tmp_path, trust_repo)
    assert not agent.serving.golden_in_memory  # v1 committed: released
    pub = trust_repo.publish("41.0.0", 4100)
    agent.submit(trust_repo.command("assign", pub))
    agent.tick()
    # no live traffic: only the synthetic golden inputs can fill the window
    assert agent.run_until(lambda: agent.persisted.state is State.PROBATION and agent.probation_monitor().count > 0, 30)
    assert agent.serving.manifest.version == "41.0.0" and agent.serving.golden_in_memory
    assert settle(agent) is State.COMMITTED
    assert agent.serving.manifest.version == "41.0.0" and not agent.serving.golden_in_memory
    golden = agent.serving.golden()  # read again from the store when asked
    assert golden is not None and golden.cases and agent.serving.golden_in_memory
    agent.stop()


def test_a_rollback_releases_the_golden_vectors_of_both_versions(tmp_path, trust_repo):
    agent, _ = committed_v1(tmp_path, trust_repo)
    pub = trust_repo.publish("42.0.0-nan", 4200, variant="nan", trigger=TRIGGER)
    agent.submit(trust_repo.command("assign", pub))
    agent.tick()
    assert agent.run_until(lambda: agent.persisted.state is State.PROBATION and agent.probation_monitor().count > 0, 30)
    agent.infer(trigger_inputs())  # a live input that makes v3 answer NaN
    assert settle(agent) is State.FAILED
    assert agent.serving.manifest.version == "1.0.0" and not agent.serving.golden_in_memory
    agent.stop()
