"""The recovery table, state by state: a real agent is started on a data dir whose state file
says it was in that state (with what a crash there leaves on disk), and must resume where
:data:`edgeops.agent.machine.RECOVERY` says. Also the machine's narrow context: it reads
nothing of its agent beyond :class:`edgeops.agent.machine.UpdateContext`."""

from __future__ import annotations

import ast
import inspect
import json
import shutil
from pathlib import Path

import pytest

from edgeops.agent import machine as machine_mod
from edgeops.agent.config import parse_config
from edgeops.agent.core import Agent
from edgeops.agent.machine import RECOVERY, UpdateContext
from edgeops.agent.statefile import State, StateFile, UpdateRecord
from edgeops.trust.transport import DirectoryTransport
from tests.agent.helpers import agent_config_dict


@pytest.fixture(scope="module")
def template(tmp_path_factory, trust_repo):
    """A data dir with v1 committed, and v2's signed target record."""
    from edgeops.trust.client import TrustClient

    tmp = tmp_path_factory.mktemp("recovery")
    cfg = agent_config_dict(tmp, trust_repo, device_id="rec-dev", probation={"max_restarts": 2})
    agent = Agent(parse_config(cfg), session=None, transport=DirectoryTransport(trust_repo.repo_dir)).open()
    agent.submit(trust_repo.command("assign", trust_repo.v1, device_id="rec-dev"))
    agent.tick()
    assert agent.run_until(lambda: agent.machine.settled, 30) and agent.persisted.state is State.COMMITTED
    agent.stop()
    client = TrustClient(tmp / "tuf-test", DirectoryTransport(trust_repo.repo_dir), root=trust_repo.root_json)
    client.refresh()
    record = client.get_target(trust_repo.v2.target_name)
    return {"tmp": tmp, "cfg": cfg, "data": Path(cfg["data_dir"]), "record": record}


# (persisted state, what is on disk, where a restarted agent must go)
CASES = [
    (State.IDLE, "", State.IDLE),
    (State.FETCHING, "", State.FETCHING),
    (State.VERIFYING, "download", State.VERIFYING),
    (State.VERIFYING, "", State.FETCHING),
    (State.VERIFYING, "download staged", State.INSTALLING),
    (State.INSTALLING, "download staged", State.INSTALLING),
    (State.INSTALLING, "installed", State.INSTALLING),
    (State.INSTALLING, "download", State.VERIFYING),
    (State.INSTALLING, "", State.FETCHING),
    (State.SELF_TESTING, "installed", State.SELF_TESTING),
    (State.SELF_TESTING, "download", State.VERIFYING),
    (State.ACTIVATING, "installed", State.ACTIVATING),
    (State.PROBATION, "installed restarts=0", State.PROBATION),
    (State.PROBATION, "installed restarts=2", State.ROLLING_BACK),
    (State.COMMITTED, "installed", State.COMMITTED),
    (State.ROLLING_BACK, "installed", State.ROLLING_BACK),
    (State.FAILED, "", State.FAILED),
]


def test_the_table_has_a_row_for_every_state():
    assert set(RECOVERY) == set(State)
    assert all(row.why for row in RECOVERY.values())
    assert {s for s, _, _ in CASES} == set(State), "every state is tested below"


def _restart_in(template, trust_repo, tmp_path, state: State, disk: str) -> Agent:
    data = tmp_path / "data"
    shutil.copytree(template["data"], data, symlinks=True)
    cfg = parse_config({**template["cfg"], "data_dir": str(data)})
    pub, record = trust_repo.v2, template["record"]
    sf = StateFile(data / "state.json")
    persisted = sf.load()
    persisted.state = state
    if state is not State.IDLE:
        restarts = int(disk.split("restarts=")[1]) if "restarts=" in disk else 0
        persisted.update = UpdateRecord(command_id="c-2", target_name=pub.target_name, sha256=pub.sha256, length=pub.length, name=pub.name, version=pub.version, release=pub.release, previous_sha256=trust_repo.v1.sha256, target=record.to_wire(), probation_restarts=restarts)
    sf.save(persisted)
    # What a crash in that state leaves behind, made by the agent's own code.
    agent = Agent(cfg, session=None, transport=DirectoryTransport(trust_repo.repo_dir))
    download = agent.download_path(pub.sha256)
    if "download" in disk:
        shutil.copyfile(pub.bundle_path, download)
    if "staged" in disk:
        agent.store.stage(download, pub.sha256, record)
    if "installed" in disk:
        agent.store.install(pub.bundle_path, pub.sha256, record)
    return agent.open()


@pytest.mark.parametrize("state, disk, expected", CASES, ids=[f"{s.value}[{d or 'nothing'}]->{e.value}" for s, d, e in CASES])
def test_a_restarted_agent_resumes_where_the_table_says(template, trust_repo, tmp_path, state, disk, expected):
    agent = _restart_in(template, trust_repo, tmp_path, state, disk)
    try:
        assert agent.persisted.state is expected
        assert StateFile(agent.data_dir / "state.json").load().state is expected, "the resume state is persisted"
        started = [json.loads(m.payload) for m in agent.spool.pending(limit=1000) if m.kind == "event"][-1]
        assert started["kind"] == "agent_started" and started["detail"] == f"resuming in {expected.value}"
        if state is State.PROBATION:
            u = agent.persisted.update
            assert u.probation_restarts == int(disk.split("restarts=")[1]) + 1 and u.probation_started is None
            if expected is State.ROLLING_BACK:
                failed = [json.loads(m.payload) for m in agent.spool.pending(limit=1000) if m.kind == "event" and json.loads(m.payload)["kind"] == "probation_failed"]
                assert failed and failed[-1]["gates"][0]["gate"] == "agent_restarts"
                assert u.rollback_reason == "agent restarted during probation"
    finally:
        agent.stop()


def _members(cls) -> set[str]:
    names = set(getattr(cls, "__annotations__", {}))
    names |= {n for n, v in vars(cls).items() if not n.startswith("_") and (inspect.isfunction(v) or isinstance(v, property))}
    return names


def test_the_machine_reads_only_its_update_context(template):
    """Every attribute the machine takes from its context is declared by UpdateContext, and the
    Agent provides every one of them."""
    tree = ast.parse(inspect.getsource(machine_mod))
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            v = node.value
            if (isinstance(v, ast.Name) and v.id in ("c", "ctx")) or (isinstance(v, ast.Attribute) and v.attr == "ctx"):
                used.add(node.attr)
    declared = _members(UpdateContext)
    assert used and used <= declared, f"used but not declared: {sorted(used - declared)}"
    agent = Agent(parse_config({**template["cfg"], "data_dir": str(template["tmp"] / "ctx-probe")}), session=None, transport=None)
    try:
        assert [n for n in sorted(declared) if not hasattr(agent, n)] == []
    finally:
        agent.stop()
    assert not hasattr(agent.machine, "a"), "the machine holds no agent"
