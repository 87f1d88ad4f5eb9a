"""Three console replicas (`edgeops fleet serve` processes) on one PostgreSQL database and one
mosquitto, with a simulated fleet of real agents, through a rollout:

- the replica holding the leader lease is SIGKILLed mid-rollout: another one takes the lease and
  the rollout finishes; the killed replica is started again with its own identity, as its
  service manager would (on mosquitto its persistent session stays in the shared group and is
  dealt its share of device messages while it is down: they wait for that session);
- the leader's database connections are cut (``pg_terminate_backend`` on its
  ``application_name``): it stays up, reconnects, and the lease moves or is kept.

Either way: every device gets one assignment with one command sequence number and installs the
version once, every telemetry batch the agents numbered is stored exactly once, and the replicas
that stay up answer /healthz and /api/v1/devices throughout.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from edgeops.fleet.config import render_toml
from edgeops.fleet.db import Database
from edgeops.fleet.registry import register_devices
from edgeops.fleet.simulator.controller import Simulator
from edgeops.fleet.simulator.settings import SimSettings
from tests.fleet.conftest import PG_OK, PG_URL
from tests.fleet.simulator.harness import cli
from tests.support.broker import MOSQUITTO, TestBroker, free_port, terminate
from tests.support.wait import wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(MOSQUITTO is None, reason="needs mosquitto (shared subscriptions)"),
    pytest.mark.skipif(not PG_OK, reason="PostgreSQL at 127.0.0.1:5432 is not reachable"),
]

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKEN = "replicas-" + uuid.uuid4().hex[:8]
DEVICES = 8
REPLICAS = 3


class Replica:
    """One `edgeops fleet serve` process with its own fleet.toml, API port and application_name."""

    def __init__(self, tmp: Path, i: int, broker: TestBroker, schema: str, lock_id: int, repo: dict, tag: str):
        self.name = f"edgeops-{tag}-r{i}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"{self.name}.log"
        self.config = tmp / f"{self.name}.toml"
        data = {
            "broker": {"url": broker.url, "client_id": self.name, "shared_group": f"edgeops-{tag}"},
            # application_name names this replica's connections in pg_stat_activity (and to the test)
            "database": {"url": f"{PG_URL}?application_name={self.name}", "schema": schema},
            "repository": {"dir": str(repo["repo"]), "keys_dir": str(repo["keys"])},
            "api": {"bind": f"127.0.0.1:{self.port}", "tokens": [TOKEN]},
            "rollouts": {"reconcile_interval_s": 0.3, "offline_timeout_s": 60, "leader_lock_id": lock_id},
            "ingest": {"flush_interval_s": 0.05},
            "base_dir": str(tmp),
        }
        self.config.write_text(render_toml(data))
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Replica":
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgeops.cli", "fleet", "serve", "--config", str(self.config), "--log-level", "warning"],
            cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"),
        )
        return self

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, object]:
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {TOKEN}"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, e.read()[:300]

    def healthy(self) -> bool:
        return self.status("/healthz") == 200

    def status(self, path: str) -> int:
        """The HTTP status of a GET, -1 when nothing answered."""
        try:
            return self.get(path, 2)[0]
        except OSError:
            return -1

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


class ApiPoller(threading.Thread):
    """Polls /healthz and /api/v1/devices on the replicas in ``watched`` every 0.25 s and keeps
    every failure (transport error or non-200) with the replica, path and time."""

    def __init__(self, replicas: list[Replica]):
        super().__init__(daemon=True)
        self.replicas = replicas
        self.watched: set[str] = {r.name for r in replicas}
        self.failures: list[tuple[float, str, str, str]] = []
        self.answers: Counter[str] = Counter()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.25):
            for r in self.replicas:
                if r.name not in self.watched:
                    continue
                for path in ("/healthz", "/api/v1/devices?limit=5"):
                    try:
                        status, body = r.get(path)
                    except OSError as e:
                        status, body = -1, repr(e)
                    if r.name not in self.watched:  # unwatched while we asked (killed, on purpose)
                        continue
                    if status == 200:
                        self.answers[r.name] += 1
                    else:
                        self.failures.append((time.time(), r.name, path, f"{status} {body!r}"[:300]))


@pytest.fixture
def fleet(tmp_path, fleet_repo):
    """3 replicas on a fresh PostgreSQL schema and a private mosquitto; 8 simulated agents."""
    tag = uuid.uuid4().hex[:6]
    schema = f"edgeops_replicas_{tag}"
    lock_id = random.randint(1 << 20, 1 << 30)  # advisory locks are per database: not another test's lease
    broker = TestBroker().start()
    db = Database(PG_URL, schema=schema)
    db.create_all()
    settings = SimSettings(broker_url=broker.url, root=str(fleet_repo["repo"] / "metadata" / "1.root.json"), workdir=str(tmp_path / "sim"),
                           processes=0, threads=2, devices=DEVICES, prefix=f"rp{tag}", tags={"site": "berlin"}, rate=2.0, telemetry_interval_s=0.5)
    register_devices(db, [{"id": d, "tags": {"site": "berlin"}, "profile": settings.profile} for d in settings.all_device_ids()])
    replicas = [Replica(tmp_path, i, broker, schema, lock_id, fleet_repo, tag) for i in range(REPLICAS)]
    sim = None
    try:
        for r in replicas:
            r.start()
        for r in replicas:
            wait_for(lambda r=r: r.healthy() or (r.proc.poll() is not None and pytest.fail(f"{r.name} exited:\n{r.tail()}")), 60, 0.2, f"{r.name} healthy")
        sim = Simulator(settings).start()
        sim.wait_connected(30)
        wait_for(lambda: all(d["online"] for d in replicas[0].get("/api/v1/devices")[1]), 30, 0.2, "devices online")
        yield {"replicas": replicas, "db": db, "sim": sim, "lock_id": lock_id, "broker": broker}
    finally:
        if sim is not None:
            sim.stop()
        for r in replicas:
            terminate(r.proc, 20)
        broker.stop()
        db.drop_all()
        db.dispose()


def leader_name(db: Database, lock_id: int) -> str | None:
    """The application_name of the connection holding the leader lease (pg_locks), or None."""
    with db.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = :hi AND l.objid = :lo"
            ),
            {"hi": lock_id >> 32, "lo": lock_id & 0xFFFFFFFF},
        ).scalar()


def start_rollout(replica: Replica) -> dict:
    api = ["--url", replica.url, "--token", TOKEN]
    r = cli("create", "--bundle", "digits@1.0.0", "--select", "tag=site=berlin", "--waves", "25%,50%,100%", "--min-reporting", "1.0", "--start", *api, "--json")
    return r


def rollout_status(replica: Replica, rid: str) -> dict:
    return cli("status", rid, "--url", replica.url, "--token", TOKEN, "--json")


def wait_mid_rollout(db: Database, rid: str) -> None:
    """Until the first wave's commands went out (the devices are installing)."""
    a = db.t.assignments

    def sent() -> bool:
        with db.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(a).where(a.c.rollout_id == rid, a.c.status != "pending")).scalar() > 0

    wait_for(sent, 30, 0.05, "wave 1's commands sent")


def check_nothing_twice_nothing_lost(db: Database, sim: Simulator, rid: str) -> None:
    """One assignment and one seq per device, one activation each, every telemetry batch stored once."""
    a, e, t = db.t.assignments, db.t.events, db.t.telemetry
    with db.connect() as conn:
        rows = conn.execute(sa.select(a.c.device_id, a.c.wave_idx, a.c.seq, a.c.command_id, a.c.status).where(a.c.rollout_id == rid)).all()
        activated = Counter(r.device_id for r in conn.execute(sa.select(e.c.device_id).where(e.c.kind == "activated", e.c.target_version == "1.0.0")))
    ids = sim.device_ids
    assert sorted(r.device_id for r in rows) == sorted(ids), rows
    assert all(r.status == "succeeded" for r in rows), rows
    assert len({r.command_id for r in rows}) == len(rows)
    seqs = [(r.device_id, r.seq) for r in rows]
    assert len(set(seqs)) == len(seqs) and all(s > 0 for _, s in seqs), seqs
    assert activated == Counter({d: 1 for d in ids}), activated  # no device installed it twice
    st = sim.stats()
    assert st["active"] == {"digits@1.0.0": DEVICES} and st["rejected_messages"] == 0, st

    # every batch an agent numbered (0 .. created-1 at this snapshot) stored exactly once (primary
    # key device, seq); the agents go on numbering batches meanwhile, so later ones may be stored too
    sim.set_rate(0)
    created = {d: c["telemetry_created"] for d, c in sim.telemetry(flush=True).items()}

    def stored() -> dict[str, list[int]]:
        with db.connect() as conn:
            out: dict[str, list[int]] = {}
            for d, s in conn.execute(sa.select(t.c.device_id, t.c.seq).order_by(t.c.device_id, t.c.seq)):
                out.setdefault(d, []).append(s)
            return out

    def missing() -> dict[str, list[int]]:
        rows = stored()
        return {d: m for d, n in created.items() if (m := sorted(set(range(n)) - set(rows.get(d, []))))}

    deadline = time.monotonic() + 60
    while (gaps := missing()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not gaps, f"telemetry batches not stored: {gaps}; numbered by the agents: {created}"
    later = {d: c["telemetry_created"] for d, c in sim.telemetry().items()}
    unknown = {d: x for d, seqs in stored().items() if (x := [s for s in seqs if s >= later.get(d, 0)])}
    assert not unknown, f"stored batches no agent numbered: {unknown}"
    assert all(n > 5 for n in created.values()), created


def leader_mid_rollout(fleet):
    """(the lease holder, the other replicas, a started ApiPoller over all three, the rollout id)
    once a rollout started through a non-leader is mid-way."""
    replicas, db, lock_id = fleet["replicas"], fleet["db"], fleet["lock_id"]
    first = wait_for(lambda: leader_name(db, lock_id), 30, 0.1, "a leader")
    leader = next(r for r in replicas if r.name == first)
    others = [r for r in replicas if r is not leader]
    poller = ApiPoller(replicas)
    poller.start()
    rid = start_rollout(others[0])["id"]
    wait_mid_rollout(db, rid)
    return leader, others, poller, rid


def test_leader_sigkilled_mid_rollout(fleet):
    db, sim, lock_id = fleet["db"], fleet["sim"], fleet["lock_id"]
    leader, others, poller, rid = leader_mid_rollout(fleet)

    poller.watched.discard(leader.name)
    leader.proc.send_signal(signal.SIGKILL)
    leader.proc.wait(10)
    killed_at = time.time()
    second = wait_for(lambda: leader_name(db, lock_id), 30, 0.05, "another replica to take the lease")
    assert second in {r.name for r in others}
    assert rollout_status(others[0], rid)["status"] == "running"
    time.sleep(max(0.0, killed_at + 3 - time.time()))  # down a while: its share of device messages waits in its session
    leader.start()  # as its service manager would, with its own identity (the broker session)
    wait_for(leader.healthy, 60, 0.2, f"{leader.name} back")
    poller.watched.add(leader.name)

    done = wait_for(lambda: (lambda s: s if s["status"] in ("finished", "paused", "aborted") else None)(rollout_status(others[1], rid)), 90, 0.5, "the rollout to end")
    assert done["status"] == "finished" and done["succeeded"] == DEVICES, done
    assert leader_name(db, lock_id) == second  # the restarted replica did not take the lease back
    check_nothing_twice_nothing_lost(db, sim, rid)
    poller.stop.set()
    poller.join(10)
    assert poller.failures == [], poller.failures
    assert all(poller.answers[r.name] > 10 for r in others), poller.answers


def test_leader_database_connections_cut_mid_rollout(fleet):
    replicas, db, sim, lock_id = fleet["replicas"], fleet["db"], fleet["sim"], fleet["lock_id"]
    leader, others, poller, rid = leader_mid_rollout(fleet)

    # cut every connection of the leader, again and again for a few seconds: ingest writes, API
    # reads and reconciler ticks in flight fail, not only idle pooled connections
    cuts = 0
    end = time.monotonic() + 4
    while time.monotonic() < end:
        with db.connect() as conn:
            cuts += conn.execute(sa.text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = :n"), {"n": leader.name}).scalar()
            conn.commit()
        time.sleep(0.2)
    assert cuts >= 3  # the lease's connection at least, each time it came back
    # the lease moves to whichever replica asks first (the cut one included); there is one holder
    wait_for(lambda: leader_name(db, lock_id), 30, 0.05, "a leader after the cut")
    # the cut replica reconnects: it stays up and its API reads the database again
    wait_for(lambda: leader.proc.poll() is None and leader.status("/api/v1/devices?limit=1") == 200, 30, 0.2, f"{leader.name} reading the database again")

    done = wait_for(lambda: (lambda s: s if s["status"] in ("finished", "paused", "aborted") else None)(rollout_status(others[0], rid)), 90, 0.5, "the rollout to end")
    assert done["status"] == "finished" and done["succeeded"] == DEVICES, done
    assert leader.proc.poll() is None, leader.tail()
    check_nothing_twice_nothing_lost(db, sim, rid)
    poller.stop.set()
    poller.join(10)
    # the other replicas answered throughout; the cut one never stopped answering (a request whose
    # connection was cut in its query may get a 500, never a refused connection)
    assert [f for f in poller.failures if f[1] != leader.name] == [], poller.failures
    assert [f for f in poller.failures if f[3].startswith("-1")] == [], poller.failures
    assert all(poller.answers[r.name] > 10 for r in replicas), poller.answers
