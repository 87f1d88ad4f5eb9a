"""A clustered broker: three NATS nodes (routes on loopback, MQTT and JetStream on each), the
devices and two console replicas spread over them, one node SIGKILLed mid-rollout. The MQTT
sessions live in the cluster (JetStream, three replicas), so the clients of the dead node
reconnect to the next node of their ``failover_urls`` and resume them (the node killed is the
leader's, with the one ingest session NATS needs without shared subscriptions); the rollout
finishes and every device's telemetry is stored without a gap in its sequence numbers."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from edgeops.fleet.cli import rollout
from edgeops.fleet.config import load_config
from edgeops.fleet.console import FleetConsole
from edgeops.fleet.registry import get_device
from tests.agent.helpers import stop_agent
from tests.fleet.brokers import NatsBroker, wait_until
from tests.fleet.test_broker_matrix import TOKEN, cli, enrol_and_start_agent, healthz, write_fleet
from tests.support.broker import free_port

pytestmark = [pytest.mark.slow, pytest.mark.skipif(NatsBroker.missing() is not None, reason=str(NatsBroker.missing()))]


def mqtt_ready(port: int) -> bool:
    """True once the node accepts an MQTT session (JetStream has a meta leader)."""
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ready-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv311)
    ok = []
    c.on_connect = lambda cl, u, f, rc, p=None: ok.append(not rc.is_failure)
    try:
        c.connect("127.0.0.1", port, 5)
        for _ in range(20):
            c.loop(0.1)
            if ok:
                break
        c.disconnect()
    except OSError:
        return False
    return bool(ok and ok[0])


def telemetry_seqs(db, device_id: str) -> list[int]:
    t = db.t.telemetry
    with db.connect() as conn:
        return [r[0] for r in conn.execute(sa.select(t.c.seq).where(t.c.device_id == device_id).order_by(t.c.seq))]


def test_rollout_finishes_when_a_broker_node_dies(tmp_path, fleet_repo):
    tmp_path.chmod(0o755)
    ports = [free_port() for _ in range(3)]
    nodes = [NatsBroker(name=f"edgeops-n{i}", cluster_port=ports[i], routes=[p for j, p in enumerate(ports) if j != i]) for i in range(3)]
    for n in nodes:
        n.start(wait=False)
    agents, consoles = [], []
    try:
        for n in nodes:
            n.wait(30)
        wait_until(lambda: all(mqtt_ready(n.port) for n in nodes), 60, "the cluster's JetStream ready for MQTT")

        def others(i: int) -> list[str]:
            return [nodes[(i + 1) % 3].url, nodes[(i + 2) % 3].url]

        # replica A on node 0, replica B on node 1; device i on node i
        fleet_a = write_fleet(tmp_path, nodes[0], fleet_repo, "console-a", failover=others(0))
        fleet_b = write_fleet(tmp_path, nodes[1], fleet_repo, "console-b", failover=others(1))
        devices = [f"cl-{i}" for i in range(3)]
        agents = [enrol_and_start_agent(nodes[i], fleet_a, d, tmp_path, failover=others(i)) for i, d in enumerate(devices)]
        consoles = [FleetConsole(load_config(fleet_a)).start(), FleetConsole(load_config(fleet_b)).start()]
        a, b = consoles
        wait_until(lambda: all(get_device(a.db, d)["online"] for d in devices), 60, "agents online")
        api = ["--url", a.api_url, "--token", TOKEN]
        r = cli(rollout, "create", "--bundle", "digits@1.0.0", "--select", "tag=matrix=1", "--waves", "34%,100%", "--start", *api, "--json")
        wait_until(lambda: cli(rollout, "status", r["id"], *api, "--json")["waves"][0]["status"] == "running", 30, "wave 1 running", every=0.05)
        assert a.is_leader and a.ingest_session is not None and a.ingest_session.endpoint[1] == nodes[0].port
        nodes[0].kill()  # the leader's node (its ingest session's too) and device cl-0's, mid-rollout
        assert cli(rollout, "status", r["id"], *api, "--json")["status"] == "running"

        done = wait_until(lambda: (lambda s: s if s["status"] in ("finished", "paused", "aborted") else None)(cli(rollout, "status", r["id"], *api, "--json")), 120, "rollout after the node died")
        assert done["status"] == "finished" and done["succeeded"] == 3, done
        # A and its ingest session reconnected to another node; both replicas answer and are healthy
        wait_until(lambda: a.mqtt_connected and a.ingest_session.connected.is_set(), 30, "replica A reconnected to a live node")
        assert a.mqtt.endpoint[1] != nodes[0].port and a.ingest_session.endpoint[1] != nodes[0].port
        for c in consoles:
            status, body = wait_until(lambda c=c: (lambda h: h if h[0] == 200 else None)(healthz(c)), 30, "healthy")
            assert body["ok"]
        # nothing lost: every device's telemetry goes on, without a gap in its sequence numbers
        before = {d: len(telemetry_seqs(a.db, d)) for d in devices}
        wait_until(lambda: all(len(telemetry_seqs(a.db, d)) > before[d] + 1 for d in devices), 30, "telemetry after the failover")
        for d in devices:
            seqs = telemetry_seqs(a.db, d)
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), (d, seqs)
    finally:
        for p in agents:
            stop_agent(p)
        for c in consoles:
            c.stop()
        for n in nodes:
            n.stop()
