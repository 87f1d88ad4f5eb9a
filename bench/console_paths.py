"""CPU of the console's two hot paths, in-process (issue #20; docs/benchmarks.md "Cost per device").

``mqtt``: QoS 1 telemetry messages are queued in a persistent session while a subscriber is
away; it reconnects and drains them, handing each message id to another thread that
acknowledges every 5 ms (what ingest does after each commit). Prints the subscriber process's
CPU per message for paho's ``Client`` with ``ack()`` per message and for the console's
``FastClient`` (fleet/paho_client.py) with ``ack()`` per message and with one ``ack_many`` per
batch. A private mosquitto (tests/support/broker.py).

``ingest``: ``Ingestor.process`` on a SQLite file with 1,000 enrolled devices, batches of
telemetry and of event + state pairs of several sizes; thread CPU time per batch.

    python bench/console_paths.py mqtt --messages 20000 --protocol 5
    python bench/console_paths.py ingest
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _mqtt_run(cls, batched: bool, port: int, protocol: str, n: int, payload: bytes) -> tuple[float, float]:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    def make():
        if protocol == "5":
            c = cls(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5, manual_ack=True)
        else:
            c = cls(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv311, clean_session=False, manual_ack=True)
        c.max_inflight_messages_set(1000)  # as the console (fleet/mqtt.py)
        return c

    def connect(c):
        kw = {}
        if protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 300
            kw = {"clean_start": False, "properties": props}
        c.connect("127.0.0.1", port, **kw)

    cid = f"bench-sub-{uuid.uuid4().hex[:6]}"
    sub = make()
    ready = threading.Event()
    sub.on_connect = lambda c, *a: c.subscribe("edgeops/v1/+/telemetry", qos=1)
    sub.on_subscribe = lambda *a: ready.set()
    connect(sub)
    sub.loop_start()
    ready.wait(10)
    sub.disconnect()
    sub.loop_stop()
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv311)
    pub.max_inflight_messages_set(0)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    infos = [pub.publish(f"edgeops/v1/dev-{i % 1000}/telemetry", payload, qos=1) for i in range(n)]
    for info in infos:
        info.wait_for_publish(60)
    pub.disconnect()
    pub.loop_stop()

    sub = make()
    done = threading.Event()
    pending: list[int] = []
    lock = threading.Lock()
    count = [0]

    def on_message(c, u, m):
        with lock:
            pending.append(m.mid)
        count[0] += 1

    def acker():
        while not done.is_set():
            time.sleep(0.005)
            with lock:
                mids = pending[:]
                pending.clear()
            if not mids:
                if count[0] >= n:
                    done.set()
                continue
            if batched:
                sub.ack_many(mids)
            else:
                for mid in mids:
                    sub.ack(mid, 1)

    sub.on_message = on_message
    t = threading.Thread(target=acker)
    c0, w0 = time.process_time(), time.monotonic()
    connect(sub)
    sub.loop_start()
    t.start()
    done.wait(300)
    c1, w1 = time.process_time(), time.monotonic()
    sub.disconnect()
    sub.loop_stop()
    t.join()
    return 1e6 * (c1 - c0) / n, n / (w1 - w0)


def bench_mqtt(args) -> None:
    import paho.mqtt.client as mqtt

    from edgeops.fleet.paho_client import FastClient
    from tests.fleet.helpers import telemetry
    from tests.support.broker import TestBroker

    _, payload = telemetry("dev-1", 1)
    runs = [("paho Client, ack() each", mqtt.Client, False), ("FastClient, ack() each", FastClient, False), ("FastClient, ack_many", FastClient, True)]
    with TestBroker() as broker:
        for name, cls, batched in runs * args.repeat:
            us, rate = _mqtt_run(cls, batched, broker.port, args.protocol, args.messages, payload)
            print(f"MQTT {args.protocol} {name:26s} {us:6.1f} us CPU per message, {rate:8.0f} messages/s", flush=True)


def bench_ingest(args) -> None:
    from edgeops.fleet.config import IngestConfig
    from edgeops.fleet.db import Database
    from edgeops.fleet.ingest import Ingestor
    from edgeops.fleet.registry import register_devices
    from tests.fleet.helpers import event, state, telemetry

    n = 1000
    db = Database(f"sqlite:///{Path(tempfile.mkdtemp(prefix='edgeops-bench-ingest-')) / 'fleet.db'}")
    db.create_all()
    register_devices(db, [{"id": f"d{i}"} for i in range(n)])
    ing = Ingestor(db, IngestConfig())
    seq = [0]
    event_seq: dict[str, int] = {}

    def telemetry_batch(k: int) -> list[tuple]:
        out = []
        for _ in range(k):
            seq[0] += 1
            device = f"d{seq[0] % n}"
            out.append((device, "telemetry", telemetry(device, seq[0])[1], time.time()))
        return out

    def update_batch(k: int) -> list[tuple]:
        out = []
        for j in range(k):
            device = f"d{(seq[0] + j) % n}"
            event_seq[device] = event_seq.get(device, 0) + 1
            out.append((device, "events", event(device, event_seq[device], "agent_started")[1], time.time()))
            out.append((device, "state", state(device, active="digits@1.0.0")[1], time.time()))
        seq[0] += k
        return out

    ing.process(telemetry_batch(5))  # warm up (statements compiled, devices known)
    for label, make, sizes, per in (("telemetry batches", telemetry_batch, (1, 2, 5, 20, 200), 1), ("event + state pairs", update_batch, (1, 10, 100), 2)):
        for k in sizes:
            reps = max(20, 2000 // k)
            batches = [make(k) for _ in range(reps)]
            t0 = time.thread_time()
            for b in batches:
                ing.process(b)
            dt = time.thread_time() - t0
            print(f"{k:4d} {label:20s} {1000 * dt / reps:7.3f} ms per batch, {1000 * dt / reps / (k * per):.3f} ms per message", flush=True)
    db.dispose()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    m = sub.add_parser("mqtt", help="subscriber CPU per QoS 1 message")
    m.add_argument("--messages", type=int, default=20000)
    m.add_argument("--protocol", choices=["5", "3.1.1"], default="5")
    m.add_argument("--repeat", type=int, default=1, help="run the three variants this many times, interleaved")
    sub.add_parser("ingest", help="Ingestor.process CPU per batch on SQLite")
    args = ap.parse_args()
    bench_mqtt(args) if args.what == "mqtt" else bench_ingest(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
