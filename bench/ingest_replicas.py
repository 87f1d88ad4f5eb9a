"""Ingest scale-out: 1 console replica vs N replicas on one PostgreSQL database, through
mosquitto's shared subscriptions (``$share/<group>/``), at a rising offered rate.

    python bench/ingest_replicas.py --replicas 1,3 --devices 1000 --start-rate 250 --step-s 8

Each replica is a real ``edgeops fleet serve`` process (its own fleet.toml, ``shared_group``
set, its own ``application_name``); mosquitto is private (free port, ``max_queued_messages``
raised); the database is a fresh schema. A plain paho load generator (a separate process, MQTT
5, QoS 1) publishes telemetry batches for ``--devices`` enrolled devices, each device's ``seq``
counting up, at ``--start-rate`` batches/s, doubling every ``--step-s`` seconds until the
replicas stop keeping up. Per step it prints: offered and stored batches/s, the backlog at the
step's end, and CPU-ms per stored batch of each replica process, of mosquitto and of every
PostgreSQL backend of the benchmark's connections (by ``application_name``). A step "keeps up"
when its stored rate is at least 90% of what the generator offered and the backlog was drained
within ``--drain-s``; the sustained rate of a replica count is the best stored rate of a step
that kept up. The steps stop at the first that did not keep up, or where the generator (on the
same host) could not offer the step's rate: then the steps measured the generator.

Drain (``--backlog``): the replicas are paused (SIGSTOP), the backlog is published with nothing
else running, the replicas go on (SIGCONT) and the time until every batch is stored gives the
ingest capacity without the generator's CPU, with CPU-ms per batch of each process over it.

At the end every batch offered must be stored exactly once: the telemetry table's primary key
is (device, seq), so ``lost`` = offered - stored rows counts both losses and (impossible)
duplicates away.

The figure the issue asks for is the ratio N replicas / 1 replica within one run. On a host
with fewer free cores than replicas + broker + database + generator it cannot show scale-out:
then read the CPU-ms per batch, which say how many batches/s one core buys each process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LOADGEN = r"""
import json, sys, time, paho.mqtt.client as mqtt
port, devices, base, rate, seconds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=sys.argv[6], protocol=mqtt.MQTTv5)
c.max_inflight_messages_set(2000); c.max_queued_messages_set(0)
acked = [0]
c.on_publish = lambda *a: acked.__setitem__(0, acked[0] + 1)
c.connect("127.0.0.1", port); c.loop_start()
print("ready", flush=True); sys.stdin.readline()
total = int(rate * seconds); t0 = time.monotonic(); infos = []
for i in range(total):
    due = t0 + i / rate
    wait = due - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    while i - acked[0] > 5000:  # no more than 5000 unacknowledged: paho's queue stays bounded
        time.sleep(0.001)
    d, seq = i % devices, base + i // devices
    now = time.time()
    body = {"device_id": f"bench-{d:05d}", "seq": seq, "ts_start": now - 1, "ts_end": now, "state": "committed",
            "inference_count": 10, "error_count": 0, "nan_count": 0, "latency_p95_ms": 3.0, "latency_p50_ms": 2.0}
    infos.append(c.publish(f"edgeops/v1/bench-{d:05d}/telemetry", json.dumps(body).encode(), qos=1))
sent_s = time.monotonic() - t0
for info in infos:
    info.wait_for_publish(120)
acked_s = time.monotonic() - t0
c.loop_stop(); c.disconnect()
print(json.dumps({"sent": total, "acked": sum(1 for i in infos if i.is_published()), "publish_s": round(sent_s, 3), "acked_s": round(acked_s, 3)}))
"""


def loadgen(port: int, devices: int, base: int, rate: float, seconds: float, client_id: str):
    """Start the load generator and let it connect; the returned function starts the publishing
    and returns its report once every batch is acknowledged by the broker."""
    gen = subprocess.Popen([sys.executable, "-c", LOADGEN, str(port), str(devices), str(base), str(rate), str(seconds), client_id],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if gen.stdout.readline().strip() != "ready":
        raise SystemExit("the load generator did not connect")

    def go() -> dict:
        out, _ = gen.communicate("go\n", timeout=seconds + 300)
        if gen.returncode != 0:
            raise SystemExit("load generator failed")
        return json.loads(out.strip().splitlines()[-1])

    return go


def cpu_of(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (those gone count 0)."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def pg_backends(db, names: list[str]) -> list[int]:
    """Server pids of the PostgreSQL backends serving these application names."""
    import sqlalchemy as sa

    with db.connect() as conn:
        return [r[0] for r in conn.execute(sa.text("SELECT pid FROM pg_stat_activity WHERE application_name = ANY(:n)"), {"n": names})]


def write_keys_and_repo(base: Path) -> tuple[Path, Path]:
    """A command-signing keyring and an empty TUF repository (fleet serve needs both)."""
    from edgeops.trust.keys import Keyring
    from edgeops.trust.repository import Repository

    ring = Keyring.create(base / "keys", root_keys=1, root_threshold=1)
    Repository.init(base / "repo", ring)
    return base / "keys", base / "repo"


def run(replicas: int, args, broker, db_url: str, work: Path, keys: Path, repo: Path) -> dict:
    """One replica count: start the replicas, step the rate up, stop them; the figures."""
    import urllib.request

    from edgeops.fleet.config import render_toml
    from edgeops.fleet.console import count_rows
    from edgeops.fleet.db import Database
    from edgeops.fleet.registry import register_devices
    from tests.support.broker import free_port, terminate

    tag = uuid.uuid4().hex[:6]
    schema = f"bench_replicas_{tag}"
    db = Database(db_url, schema=schema)
    db.create_all()
    register_devices(db, [{"id": f"bench-{d:05d}", "tags": {}} for d in range(args.devices)])
    procs, names, ports, paths = [], [], [], []
    sep = "&" if "?" in db_url else "?"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for i in range(replicas):
        name, port = f"bench-{tag}-r{i}", free_port()
        cfg = {
            "broker": {"url": broker.url, "client_id": name, "shared_group": f"bench-{tag}"},
            "database": {"url": f"{db_url}{sep}application_name={name}", "schema": schema},
            "repository": {"dir": str(repo), "keys_dir": str(keys)},
            "api": {"bind": f"127.0.0.1:{port}", "tokens": ["bench-token-0123456789"]},
            "base_dir": str(work),
        }
        path = work / f"{name}.toml"
        path.write_text(render_toml(cfg))
        names.append(name)
        ports.append(port)
        paths.append(path)

    def start_all() -> list[subprocess.Popen]:
        started = []
        for name, path in zip(names, paths):
            log = open(work / f"{name}.log", "ab")
            started.append(subprocess.Popen([sys.executable, "-m", "edgeops.cli", "fleet", "serve", "--config", str(path), "--log-level", "warning"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log))
        for port, p in zip(ports, started):
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if p.poll() is not None or time.monotonic() > deadline:
                    log = (work / f"{names[ports.index(port)]}.log").read_text(errors="replace")[-3000:]
                    raise SystemExit(f"replica on port {port} did not come up (exit {p.poll()}):\n{log}")
                time.sleep(0.2)
        return started

    try:
        procs = start_all()
        time.sleep(1.0)
        steps, base, offered_total, rate = [], 0, 0, args.start_rate
        replica_pids = [p.pid for p in procs]
        while rate <= args.max_rate:
            seconds = args.step_s
            pg_pids = pg_backends(db, names)
            cpu_r0 = [cpu_of([pid]) for pid in replica_pids]
            cpu_b0, cpu_pg0 = cpu_of([broker.proc.pid]), cpu_of(pg_pids)
            gen = loadgen(broker.port, args.devices, base, rate, seconds, f"load-{tag}-{len(steps)}")
            before_rows = count_rows(db, "telemetry")
            t0 = time.monotonic()
            g = gen()
            at_end = count_rows(db, "telemetry")
            window = g["acked_s"]  # from the first publish to the last acknowledgement (not the generator's start and exit)
            offered_total += g["sent"]
            base += -(-g["sent"] // args.devices)
            # drain: what was offered and not stored yet, up to drain_s
            deadline = time.monotonic() + args.drain_s
            stored_now = at_end
            while stored_now < offered_total and time.monotonic() < deadline:
                time.sleep(0.2)
                stored_now = count_rows(db, "telemetry")
            drained = stored_now >= offered_total
            stored_step = stored_now - before_rows
            cpu_r = [round(1000 * (cpu_of([pid]) - c0) / max(stored_step, 1), 3) for pid, c0 in zip(replica_pids, cpu_r0)]
            step = {
                "offered_per_s": round(g["sent"] / window, 1),
                "generator_publish_s": g["publish_s"],
                "stored_per_s": round((at_end - before_rows) / window, 1),
                "backlog_at_end": offered_total - at_end,
                "drained": drained,
                "replica_cpu_ms_per_batch": cpu_r,
                "mosquitto_cpu_ms_per_batch": round(1000 * (cpu_of([broker.proc.pid]) - cpu_b0) / max(stored_step, 1), 3),
                "postgres_cpu_ms_per_batch": round(1000 * (cpu_of(pg_pids) - cpu_pg0) / max(stored_step, 1), 3),
            }
            step["kept_up"] = drained and step["stored_per_s"] >= 0.9 * step["offered_per_s"]
            # the generator shares the host: when it cannot offer the step's rate, the step
            # measures the generator, not the replicas (the drain below measures them)
            step["generator_limited"] = step["offered_per_s"] < 0.9 * rate
            steps.append(step)
            print(json.dumps({"replicas": replicas, "rate": rate, **step}), flush=True)
            if not drained:
                break  # the backlog would spill into the next step
            if not step["kept_up"] or step["generator_limited"]:
                break
            rate *= 2
        # Drain: the replicas are paused (SIGSTOP: their connections stay, they read nothing), a
        # backlog of --backlog batches is published with nothing else running, then they go on
        # (SIGCONT) and store it as fast as they can: the ingest capacity without the generator's CPU.
        drain = None
        if args.backlog:
            gen = loadgen(broker.port, args.devices, base, 1e9, args.backlog / 1e9, f"backlog-{tag}")
            pg_pids = pg_backends(db, names)
            for p in procs:
                p.send_signal(signal.SIGSTOP)
            try:
                g = gen()
            finally:
                before_rows = count_rows(db, "telemetry")
                cpu_r0 = [cpu_of([pid]) for pid in replica_pids]
                cpu_b0 = cpu_of([broker.proc.pid])
                cpu_pg0 = cpu_of(pg_pids)
                t0 = time.monotonic()
                for p in procs:
                    p.send_signal(signal.SIGCONT)
            offered_total += g["sent"]
            base += -(-g["sent"] // args.devices)
            first = (t0, before_rows)
            deadline = time.monotonic() + 600
            while count_rows(db, "telemetry") < offered_total and time.monotonic() < deadline:
                time.sleep(0.1)
            end = time.monotonic()
            stored_drain = count_rows(db, "telemetry") - first[1]
            drain = {
                "backlog": g["sent"],
                "drain_s": round(end - t0, 2),
                "stored_per_s": round(stored_drain / max(end - first[0], 1e-6), 1),
                "replica_cpu_ms_per_batch": [round(1000 * (cpu_of([pid]) - c0) / max(stored_drain, 1), 3) for pid, c0 in zip(replica_pids, cpu_r0)],
                "mosquitto_cpu_ms_per_batch": round(1000 * (cpu_of([broker.proc.pid]) - cpu_b0) / max(stored_drain, 1), 3),
                "postgres_cpu_ms_per_batch": round(1000 * (cpu_of(pg_pids) - cpu_pg0) / max(stored_drain, 1), 3),
            }
            print(json.dumps({"replicas": replicas, "drain": drain}), flush=True)
        # loss and duplicates over everything offered: (device, seq) pairs
        deadline = time.monotonic() + 120
        while count_rows(db, "telemetry") < offered_total and time.monotonic() < deadline:
            time.sleep(0.5)
        stored = count_rows(db, "telemetry")
        kept = [s for s in steps if s["kept_up"]]
        best = max(kept, key=lambda s: s["stored_per_s"]) if kept else None
        return {
            "replicas": replicas,
            "sustained_per_s": best["stored_per_s"] if best else 0.0,
            "at_sustained": best,
            "offered_total": offered_total,
            "stored_total": stored,
            "lost": offered_total - stored,
            "drain": drain,
            "steps": steps,
        }
    finally:
        for p in procs:
            terminate(p, 30)
        import sqlalchemy as sa

        with db.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        db.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", default="1,3,1,3", help="replica counts to compare, in one run, in this order (repeat them: the host is shared and noisy; medians are printed)")
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--start-rate", type=float, default=250.0, help="batches/s of the first step")
    ap.add_argument("--max-rate", type=float, default=64000.0, help="last step's rate (below --start-rate: no steps, the drain only)")
    ap.add_argument("--step-s", type=float, default=8.0)
    ap.add_argument("--drain-s", type=float, default=10.0, help="how long a step's backlog may take to drain")
    ap.add_argument("--backlog", type=int, default=40000, help="batches queued while the replicas are stopped, then drained (0: skip)")
    ap.add_argument("--db", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = ap.parse_args()

    from tests.support.broker import TestBroker

    work = Path(tempfile.mkdtemp(prefix="edgeops-bench-replicas-"))
    keys, repo = write_keys_and_repo(work)
    results = []
    try:
        for n in [int(x) for x in args.replicas.split(",")]:
            broker = TestBroker(extra_config="max_queued_messages 1000000").start()  # a fresh broker per count: no sessions left over
            try:
                results.append(run(n, args, broker, args.db, work, keys, repo))
            finally:
                broker.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    flags = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    flags = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("Flags")), "?")
    import statistics

    counts = sorted({r["replicas"] for r in results})

    def median(key, n):
        vals = [(r[key] if key != "drain" else (r["drain"] or {}).get("stored_per_s")) for r in results if r["replicas"] == n]
        vals = [v for v in vals if v]
        return round(statistics.median(vals), 1) if vals else None

    summary = {
        "cpus": os.cpu_count(),
        "devices": args.devices,
        "runs": [{"replicas": r["replicas"], "sustained_per_s": r["sustained_per_s"], "drain_per_s": (r["drain"] or {}).get("stored_per_s"), "lost": r["lost"],
                  "replica_cpu_ms_per_batch": (r["drain"] or r["at_sustained"] or {}).get("replica_cpu_ms_per_batch")} for r in results],
        "median_sustained_per_s": {n: median("sustained_per_s", n) for n in counts},
        "median_drain_per_s": {n: median("drain", n) for n in counts},
        "lost": sum(r["lost"] for r in results),
    }
    base = summary["median_drain_per_s"].get(counts[0])
    if len(counts) > 1 and base:
        summary["drain_ratio"] = {n: round(summary["median_drain_per_s"][n] / base, 2) for n in counts[1:] if summary["median_drain_per_s"][n]}
    print(json.dumps(summary))
    print("lscpu flags:", " ".join(f for f in flags.split() if f in ("avx2", "avx512f", "avx512_vnni", "sse4_2", "fma")))


if __name__ == "__main__":
    main()
