"""Ingest through each broker with 1 or N console replicas: where the broker has shared
subscriptions (mosquitto) replicas split the stream; where it has none (NATS, RabbitMQ) the
leader replica holds the one ingest session (before that: every replica subscribed plainly and
ingest stored each (device, seq) once). This measures what each costs.

    python bench/broker_ingest.py --broker nats --replicas 3 --batches 20000 [--db URL]

A separate load generator process (plain paho, MQTT 3.1.1, QoS 1) publishes ``--batches``
telemetry batches spread over ``--devices`` registered devices as fast as the broker takes
them; the replicas run in this process (``FleetConsole`` without API or reconciler). Printed:
wall time until every batch is stored, batches/s, console CPU-ms per stored batch (this
process's CPU over that time, all replicas together), duplicates dropped, and the CPU flags.
Brokers come from tests/fleet/brokers.py (private instances on free ports).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LOADGEN = r"""
import json, sys, time, paho.mqtt.client as mqtt
port, n, devices = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-load", protocol=mqtt.MQTTv311)
c.max_inflight_messages_set(1000); c.max_queued_messages_set(0)
c.connect("127.0.0.1", port); c.loop_start()
now = time.time(); infos = []
for i in range(n):
    d = i % devices
    body = {"device_id": f"bench-{d:05d}", "seq": i // devices, "ts_start": now, "ts_end": now + 1, "state": "committed",
            "inference_count": 10, "error_count": 0, "nan_count": 0}
    infos.append(c.publish(f"edgeops/v1/bench-{d:05d}/telemetry", json.dumps(body).encode(), qos=1))
for info in infos:
    info.wait_for_publish(120)
c.loop_stop(); c.disconnect()
"""


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker", choices=["mosquitto", "nats", "rabbitmq"], default="nats")
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--batches", type=int, default=20000)
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--db", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = ap.parse_args()

    import sqlalchemy as sa

    from edgeops.fleet.config import config_from_dict
    from edgeops.fleet.console import FleetConsole, count_rows
    from edgeops.fleet.db import Database
    from edgeops.fleet.registry import register_devices
    from tests.fleet.brokers import BROKERS

    broker = BROKERS[args.broker]().start()
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    consoles = []
    try:
        group = f"bench{uuid.uuid4().hex[:6]}"
        cfgs = []
        for i in range(args.replicas):
            user = f"bench-console-{i}"
            if args.broker == "rabbitmq":
                broker.add_user(user, "pw")
            db = {"url": args.db, "schema": schema} if args.db.startswith("postgresql") else {"url": args.db}
            cfgs.append(config_from_dict({
                "broker": {"url": broker.url, "username": user, "password": "pw", "shared_group": group},
                "database": db, "repository": {"dir": "/nonexistent-repo", "keys_dir": "/nonexistent-keys"},
                "ingest": {"flush_interval_s": 0.05}, "base_dir": str(ROOT),
            }))
        db = Database.from_config(cfgs[0])
        db.create_all()
        register_devices(db, [{"id": f"bench-{d:05d}", "tags": {}} for d in range(args.devices)])
        if args.broker == "rabbitmq":
            broker.add_user("bench-load", "pw")
        for cfg in cfgs:
            c = FleetConsole(cfg, signer=object(), api=False)  # the reconciler loop follows the lease (ingest session)
            c.start()
            consoles.append(c)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(c.mqtt.carries_ingest or c.ingest_session for c in consoles):
            time.sleep(0.1)  # without $share: until the leader holds the ingest session
        modes = sorted({"shared" if c.mqtt.shared else "plain" if c.mqtt.carries_ingest else "leader-ingest" for c in consoles})
        cpu0, t0 = cpu_s(), time.monotonic()
        load = [sys.executable, "-c", LOADGEN, str(broker.port), str(args.batches), str(args.devices)]
        if args.broker == "rabbitmq":
            load[2] = LOADGEN.replace('c.connect(', 'c.username_pw_set("bench-load", "pw"); c.connect(')
        gen = subprocess.Popen(load)
        deadline = time.monotonic() + 600
        while count_rows(db, "telemetry") < args.batches and time.monotonic() < deadline:
            time.sleep(0.1)
        wall, cpu = time.monotonic() - t0, cpu_s() - cpu0
        gen.wait(60)
        stored = count_rows(db, "telemetry")
        dups = sum(c.ingest.stats.snapshot()["duplicates"].get("telemetry", 0) for c in consoles)
        flags = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        flags = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("Flags")), "?")
        out = {
            "broker": args.broker, "replicas": args.replicas, "subscriptions": modes, "db": db.dialect,
            "batches": args.batches, "stored": stored, "lost": args.batches - stored, "duplicates_dropped": dups,
            "wall_s": round(wall, 2), "batches_per_s": round(stored / wall, 1), "console_cpu_ms_per_batch": round(1000 * cpu / max(stored, 1), 3),
        }
        print(json.dumps(out))
        print("lscpu flags:", " ".join(f for f in flags.split() if f in ("avx2", "avx512f", "avx512_vnni", "sse4_2", "fma")))
        with db.begin() as conn:
            if db.dialect == "postgresql":
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        for c in consoles:
            c.stop()
        broker.stop()


if __name__ == "__main__":
    main()
