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


def test_an_update_reads_golden_json_once(tmp_path, trust_repo, monkeypatch):
    """Probation's synthetic traffic reuses the vectors the self-test read: a second parse of
    golden.json during probation was the agent's peak while installing (+4 MiB measured)."""
    import edgeops.agent.core as core
    import edgeops.agent.selftest as selftest

    agent, _ = committed_v1(tmp_path, trust_repo)
    reads = []
    real = selftest.load_golden

    def counting(files_dir):
        reads.append(files_dir)
        return real(files_dir)

    monkeypatch.setattr(selftest, "load_golden", counting)
    monkeypatch.setattr(core, "load_golden", counting)
    pub = trust_repo.publish("43.0.0", 4300)
    agent.submit(trust_repo.command("assign", pub))
    agent.tick()
    assert agent.run_until(lambda: agent.persisted.state is State.PROBATION and agent.probation_monitor().count > 0, 30)
    assert settle(agent) is State.COMMITTED and agent.serving.manifest.version == "43.0.0"
    assert len(reads) == 1, reads
    agent.stop()
