"""Fleet benchmark: simulated devices (real agents) against the real console and mosquitto.

For each fleet size, in one run on this machine:

* start a fresh console (``edgeops fleet serve``, its own process, SQLite by default) and the
  simulated fleet (``--processes`` simulator processes sharing one mosquitto);
* **rollout control plane**: a 4-wave rollout (1%, 10%, 50%, 100%, bake 0, min-reporting
  1.0) of a good bundle to every device, timed from the API call that starts it (what
  ``edgeops rollout start`` sends) to ``finished``, with every device confirmed ``succeeded``
  (devices that did not succeed are listed in ``rollout_not_succeeded``). The device side runs
  on the same 2 cores as the console, so this is an upper bound on the console's own share.
  What each simulated device does and which simulation shortcuts apply (see
  ``fleet/simulator/``): the real agent state machine, command verification, TUF client,
  store, self-test, probation and spool; downloads are excluded by the per-process repository
  cache (``repocache``: bundles once per process; mutable metadata shared among devices whose
  command arrived before it was fetched); identical bytes are verified once per process
  (``verifymemo``); the light ``golden`` runtime (``--runtime``); a ``--probation-seconds``
  window (1 s here, 20 inferences at least);
* **telemetry ingest**: every device sends a batch every ``--telemetry-interval`` seconds
  (also during the rollout) for ``--telemetry-seconds``; then traffic stops, every spool
  drains, and every batch sequence number a device created is looked up in the console's
  database: lost = created - stored;
* **console RSS and CPU**: sampled from the console process every second (psutil); the
  simulator processes' CPU during the rollout is reported per device update
  (``sim_cpu_per_update_ms``, background telemetry and inference of the whole fleet included);
* **cost per device** (docs/scale.md projects from these): console CPU-ms per device update
  (console CPU over the rollout / devices; ``..._net`` also takes out the telemetry the fleet
  sent meanwhile at the measured per-batch cost) and per telemetry batch (console CPU over the
  telemetry window / batches stored); database rows and bytes per telemetry batch and per device
  update (SQLite ``page_count`` and row counts before and after each phase), per device per day
  at the bench's and the agent's default telemetry interval; broker messages per device update
  and per batch, by topic kind, counted by a subscriber to ``edgeops/v1/#``, and the broker's own
  ``$SYS`` publish counts (messages in and out);
* ``--profile-console FILE``: the console runs under bench/sampler.py (a stack sampler over all
  its threads) and the hottest functions are written to FILE.

    python bench/fleet.py                         # 1,000, 5,000 and 10,000 devices
    python bench/fleet.py --sizes 300 --telemetry-seconds 10 --processes 2   # a quick run

The broker is a separate mosquitto on a free port with raised queue limits; ``ulimit -n`` is
raised to the hard limit for it and for the simulator processes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
RECONCILE_INTERVAL_S = 1.0  # the console also reconciles at once (0.2 s apart at most) when final reports arrive


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def start_mosquitto(workdir: Path) -> tuple[subprocess.Popen, int]:
    from tests.support.broker import free_port, wait_port

    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 1000000\nmax_inflight_messages 0\nmax_connections -1\n"
        "log_dest stderr\nlog_type error\nsys_interval 1\n"
    )
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=open(workdir / "mosquitto.log", "ab"), preexec_fn=_raise_nofile)
    wait_port(port)
    return proc, port


def make_repository(base: Path) -> dict:
    from edgeops.trust.keys import Keyring
    from edgeops.trust.repository import Repository
    from tests.support.bundles import write_test_bundle

    ring = Keyring.create(base / "keys", root_keys=1, root_threshold=1)
    repo = Repository.init(base / "repo", ring)
    for version, release in (("1.0.0", 1),):
        path = base / f"digits-{version}.bundle"
        write_test_bundle(path, name="digits", version=version, release=release)
        repo.publish(path, ring)
    return {"keys": base / "keys", "repo": base / "repo", "root": base / "repo" / "metadata" / "1.root.json"}


def write_console_config(base: Path, repo: dict, broker_url: str, api_port: int, token: str) -> Path:
    from edgeops.fleet.config import render_toml

    data = {
        "broker": {"url": broker_url, "client_id": f"bench-console-{uuid.uuid4().hex[:6]}", "protocol": "5"},
        "database": {"url": f"sqlite:///{base / 'fleet.db'}"},
        "repository": {"dir": str(repo["repo"]), "keys_dir": str(repo["keys"])},
        "api": {"bind": f"127.0.0.1:{api_port}", "tokens": [token]},
        "rollouts": {"reconcile_interval_s": RECONCILE_INTERVAL_S, "offline_timeout_s": 600.0},
        "ingest": {"auto_register": False},
    }
    path = base / "fleet.toml"
    path.write_text(render_toml(data))
    return path


class ProcMeter:
    """Samples RSS and CPU time of one process every second."""

    def __init__(self, pid: int):
        import psutil

        self.p = psutil.Process(pid)
        self.max_rss_mb = 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.max_rss_mb = max(self.max_rss_mb, self.p.memory_info().rss / 2**20)
            except Exception:
                return

    def cpu_s(self) -> float:
        t = self.p.cpu_times()
        return t.user + t.system

    def rss_mb(self) -> float:
        return self.p.memory_info().rss / 2**20

    def stop(self) -> None:
        self._stop.set()


class BrokerCounter:
    """Counts the fleet's MQTT messages by topic kind (a subscriber to ``edgeops/v1/#``) and the
    broker's own ``$SYS`` publish counters (messages in, messages out)."""

    def __init__(self, port: int):
        import paho.mqtt.client as mqtt

        self.kinds: dict[str, int] = {}
        self.sys: dict[str, float] = {}
        self._lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-counter-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv311)
        self.c.on_message = self._on_message
        self.c.on_connect = lambda c, *_: c.subscribe([("edgeops/v1/#", 0), ("$SYS/broker/publish/messages/+", 0)])
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on_message(self, _c, _u, msg) -> None:
        if msg.topic.startswith("$SYS/"):
            self.sys[msg.topic.rsplit("/", 1)[1]] = float(msg.payload or 0)
            return
        parts = msg.topic.split("/")
        kind = "/".join(parts[3:]) or "?"
        with self._lock:
            self.kinds[kind] = self.kinds.get(kind, 0) + 1

    def snapshot(self) -> dict:
        """Counts so far: {"kinds": {...}, "broker_in": n, "broker_out": n} ($SYS: last second)."""
        time.sleep(1.5)  # $SYS publishes every second (sys_interval 1)
        with self._lock:
            return {"kinds": dict(self.kinds), "broker_in": self.sys.get("received", 0.0), "broker_out": self.sys.get("sent", 0.0)}

    @staticmethod
    def delta(a: dict, b: dict) -> dict:
        """What happened between two snapshots; ``broker_out`` less this counter's own copies."""
        kinds = {k: b["kinds"].get(k, 0) - a["kinds"].get(k, 0) for k in b["kinds"]}
        seen = sum(kinds.values())
        return {"kinds": {k: v for k, v in kinds.items() if v}, "broker_in": b["broker_in"] - a["broker_in"], "broker_out": b["broker_out"] - a["broker_out"] - seen}

    def stop(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def db_size(db_url: str) -> dict:
    """SQLite: bytes in use (page_count - freelist, WAL included) and rows of the growing tables."""
    import sqlalchemy as sa

    from edgeops.fleet.db import Database

    db = Database(db_url)
    try:
        with db.connect() as conn:
            pages = conn.exec_driver_sql("PRAGMA page_count").scalar() - conn.exec_driver_sql("PRAGMA freelist_count").scalar()
            size = pages * conn.exec_driver_sql("PRAGMA page_size").scalar()
            rows = {name: conn.execute(sa.select(sa.func.count()).select_from(getattr(db.t, name))).scalar() for name in ("telemetry", "events", "assignments", "audit", "sketches", "commands")}
        return {"bytes": size, "rows": rows}
    finally:
        db.dispose()


def cli(*args: str, timeout: float = 120) -> dict:
    out = subprocess.run([sys.executable, "-m", "edgeops.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"edgeops {' '.join(args)} failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def telemetry_rows(db_url: str) -> dict[str, set[int]]:
    import sqlalchemy as sa

    from edgeops.fleet.db import Database

    db = Database(db_url)
    try:
        with db.connect() as conn:
            t = db.t.telemetry
            out: dict[str, set[int]] = {}
            for d, s in conn.execute(sa.select(t.c.device_id, t.c.seq)):
                out.setdefault(d, set()).add(int(s))
        return out
    finally:
        db.dispose()


def run_size(n: int, args, base: Path, repo: dict, broker_url: str, counter: BrokerCounter) -> dict:
    from edgeops.fleet.client import FleetClient
    from edgeops.fleet.db import Database
    from edgeops.fleet.registry import register_devices
    from edgeops.fleet.simulator.controller import Simulator
    from edgeops.fleet.simulator.settings import SimSettings
    from tests.support.broker import free_port, wait_port

    work = base / f"n{n}"
    work.mkdir()
    token = uuid.uuid4().hex
    api_port = free_port()
    cfg_path = write_console_config(work, repo, broker_url, api_port, token)
    settings = SimSettings(
        broker_url=broker_url,
        root=str(repo["root"]),
        workdir=str(Path(args.device_dir) / f"bench-{os.getpid()}-n{n}"),
        devices=n,
        prefix=f"b{n}",
        processes=args.processes,
        threads=args.threads,
        tags={"bench": "1"},
        rate=args.rate,
        telemetry_interval_s=args.telemetry_interval,
        connect_rate=args.connect_rate,
        runtime=args.runtime,
        agent_overrides={"telemetry": {"resend_after_s": 60.0}, "probation": {"window_seconds": args.probation_seconds}},
    )
    db_url = f"sqlite:///{work / 'fleet.db'}"
    db = Database(db_url)
    db.create_all()
    register_devices(db, [{"id": d, "tags": {"bench": "1"}, "profile": settings.profile} for d in settings.all_device_ids()])
    db.dispose()

    serve = ["-m", "edgeops.cli", "fleet", "serve", "--config", str(cfg_path), "--log-level", "warning"]
    if args.profile_console:
        serve = [str(REPO_ROOT / "bench" / "sampler.py"), f"{args.profile_console}.n{n}.txt", "--", *serve]
    console = subprocess.Popen([sys.executable, *serve], cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=open(work / "console.log", "ab"), preexec_fn=_raise_nofile)
    wait_port(api_port, timeout=60)
    meter = ProcMeter(console.pid)
    api = ["--url", f"http://127.0.0.1:{api_port}", "--token", token]
    client = FleetClient(f"http://127.0.0.1:{api_port}", token)
    sim = Simulator(settings)
    result: dict = {"devices": n, "settings": {"processes": args.processes, "threads": args.threads, "runtime": args.runtime, "probation_window_s": args.probation_seconds, "rate": args.rate, "telemetry_interval_s": args.telemetry_interval, "reconcile_interval_s": RECONCILE_INTERVAL_S}}
    try:
        t0 = time.monotonic()
        sim.start(timeout=1200)
        sim.wait_connected(timeout=600)
        result["fleet_up_s"] = round(time.monotonic() - t0, 1)

        def online() -> int:
            return sum(1 for d in client.devices() if d.get("online"))

        deadline = time.monotonic() + 300
        while online() < n and time.monotonic() < deadline:
            time.sleep(1.0)
        result["registry_online"] = online()
        idle_cpu0, idle_t0 = meter.cpu_s(), time.monotonic()
        time.sleep(5.0)
        result["console_cpu_idle_pct"] = round(100 * (meter.cpu_s() - idle_cpu0) / (time.monotonic() - idle_t0), 1)

        # --- rollout control plane ----------------------------------------------------------------
        import psutil

        sims = [psutil.Process(p.pid) for p in sim._procs]  # noqa: SLF001 - the bench measures them

        def sim_cpu() -> float:
            return sum(t.user + t.system for t in (q.cpu_times() for q in sims))

        size0, msgs0 = db_size(db_url), counter.snapshot()
        sim_cpu0 = sim_cpu()
        psutil.cpu_percent(None)
        cpu0 = meter.cpu_s()
        r = cli("rollout", "create", "--bundle", "digits@1.0.0", "--select", "tag=bench=1", "--waves", "1%,10%,50%,100%", "--bake", "0", "--min-reporting", "1.0", *api, "--json")
        # Started through the API in this process (what `edgeops rollout start` calls): the CLI's
        # own interpreter start-up (~0.5 s) is not part of the control plane.
        t_start = time.monotonic()
        client.action(r["id"], "start")
        status = None
        waves_done: dict[int, float] = {}
        while time.monotonic() - t_start < args.rollout_timeout:
            status = client.rollout(r["id"])
            for w in status["waves"]:
                if w["status"] == "passed" and w["idx"] not in waves_done:
                    waves_done[w["idx"]] = round(time.monotonic() - t_start, 1)
            if status["status"] in ("finished", "paused", "aborted"):
                break
            time.sleep(0.5)
        rollout_s = time.monotonic() - t_start
        result["rollout_s"] = round(rollout_s, 1)
        result["rollout_status"] = status["status"] if status else "?"
        result["rollout_succeeded"] = status.get("succeeded") if status else 0
        result["rollout_wave_passed_at_s"] = waves_done
        console_rollout_cpu_s = meter.cpu_s() - cpu0
        result["console_cpu_rollout_pct"] = round(100 * console_rollout_cpu_s / rollout_s, 1)
        result["console_cpu_per_update_ms"] = round(1000 * console_rollout_cpu_s / n, 2)
        result["host_cpu_rollout_pct"] = round(psutil.cpu_percent(None) * (os.cpu_count() or 1), 1)  # of one core
        result["sim_cpu_rollout_s"] = round(sim_cpu() - sim_cpu0, 1)
        result["sim_cpu_per_update_ms"] = round(1000 * result["sim_cpu_rollout_s"] / n, 1)
        sim_stats = sim.stats()
        result["sim_states_after_rollout"] = sim_stats["states"]
        result["sim_repo_cache"] = sim_stats.get("repo_cache", {})
        result["sim_verify_memo"] = sim_stats.get("verify_memo", {})
        # Devices that did not succeed, with what they reported (a finished rollout may carry a few
        # within max_failure_rate): the figure is only meaningful with every device confirmed.
        not_ok = [a for a in client.rollout_devices(r["id"]) if a.get("status") != "succeeded"]
        result["rollout_not_succeeded"] = [{k: a.get(k) for k in ("device_id", "wave", "status", "detail")} for a in not_ok[:20]]
        size1, msgs1 = db_size(db_url), counter.snapshot()
        during = BrokerCounter.delta(msgs0, msgs1)
        tel_during = during["kinds"].get("telemetry", 0)
        result["broker_rollout"] = during
        result["broker_msgs_per_update"] = round((sum(during["kinds"].values()) - tel_during) / n, 2)  # every topic but telemetry
        result["broker_msgs_per_update_by_kind"] = {k: round(v / n, 3) for k, v in during["kinds"].items() if k != "telemetry"}
        result["db_rows_per_update"] = {k: round((size1["rows"][k] - size0["rows"][k]) / n, 3) for k in size0["rows"] if k != "telemetry"}

        # --- telemetry ingest -------------------------------------------------------------------------
        size2, msgs2 = db_size(db_url), counter.snapshot()
        cpu0, t1 = meter.cpu_s(), time.monotonic()
        time.sleep(args.telemetry_seconds)
        window = time.monotonic() - t1
        cpu_window = meter.cpu_s() - cpu0
        size3 = db_size(db_url)
        msgs3 = counter.snapshot()
        stored_window = size3["rows"]["telemetry"] - size2["rows"]["telemetry"]
        result["telemetry_offered_per_s"] = round(n / args.telemetry_interval, 1)
        result["telemetry_stored_per_s"] = round(stored_window / window, 1)
        result["console_cpu_telemetry_pct"] = round(100 * cpu_window / window, 1)
        per_batch_ms = 1000 * cpu_window / max(stored_window, 1)
        result["console_cpu_per_batch_ms"] = round(per_batch_ms, 3)
        # the rollout's figure less the telemetry the fleet sent meanwhile, at this per-batch cost
        result["console_cpu_per_update_ms_net"] = round((1000 * console_rollout_cpu_s - tel_during * per_batch_ms) / n, 2)
        tel = BrokerCounter.delta(msgs2, msgs3)
        result["broker_telemetry"] = tel
        batches_seen = max(tel["kinds"].get("telemetry", 0), 1)
        result["broker_in_per_batch"] = round(tel["broker_in"] / batches_seen, 3)
        result["broker_out_per_batch"] = round(tel["broker_out"] / batches_seen, 3)
        bytes_per_batch = (size3["bytes"] - size2["bytes"]) / max(stored_window, 1)
        result["db_bytes_per_batch"] = round(bytes_per_batch, 1)
        result["db_rows_per_device_day"] = {"bench_interval": round(86400 / args.telemetry_interval), "agent_default_10s": 8640}
        result["db_bytes_per_device_day_mb"] = {"bench_interval": round(bytes_per_batch * 86400 / args.telemetry_interval / 1e6, 2), "agent_default_10s": round(bytes_per_batch * 8640 / 1e6, 2)}
        sim.set_rate(0)
        # Loss check: snapshot what every device created, wait until spools are empty and the
        # console has stored everything up to that snapshot.
        created = {d: c["telemetry_created"] for d, c in sim.telemetry().items()}
        deadline = time.monotonic() + 180
        missing = None
        while time.monotonic() < deadline:
            rows = telemetry_rows(db_url)
            missing = sum(len(set(range(c)) - rows.get(d, set())) for d, c in created.items())
            if missing == 0:
                break
            time.sleep(2.0)
        result["telemetry_batches_sent"] = sum(created.values())
        result["telemetry_batches_lost"] = missing
        result["console_rss_mb"] = round(max(meter.max_rss_mb, meter.rss_mb()), 1)
    finally:
        meter.stop()
        sim.stop()
        console.terminate()
        try:
            console.wait(60)
        except subprocess.TimeoutExpired:
            console.kill()
        shutil.rmtree(settings.workdir, ignore_errors=True)
    return result


def print_table(results: list[dict]) -> None:
    cols = [
        ("devices", "devices"),
        ("fleet_up_s", "up s"),
        ("rollout_s", "rollout s"),
        ("rollout_succeeded", "confirmed"),
        ("telemetry_offered_per_s", "tel offered/s"),
        ("telemetry_stored_per_s", "tel stored/s"),
        ("telemetry_batches_sent", "batches"),
        ("telemetry_batches_lost", "lost"),
        ("console_rss_mb", "console RSS MB"),
        ("console_cpu_idle_pct", "CPU% before rollout"),
        ("console_cpu_rollout_pct", "CPU% rollout"),
        ("console_cpu_telemetry_pct", "CPU% telemetry"),
        ("console_cpu_per_update_ms", "CPU ms/update"),
        ("console_cpu_per_update_ms_net", "CPU ms/update net"),
        ("console_cpu_per_batch_ms", "CPU ms/batch"),
        ("broker_msgs_per_update", "msgs/update"),
        ("db_bytes_per_batch", "DB B/batch"),
        ("sim_cpu_per_update_ms", "sim CPU ms/update"),
        ("host_cpu_rollout_pct", "host CPU% rollout"),
    ]
    print(" | ".join(h for _, h in cols))
    for r in results:
        print(" | ".join(str(r.get(k, "-")) for k, _ in cols))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,5000,10000", help="comma-separated fleet sizes")
    ap.add_argument("--processes", type=int, default=4, help="simulator processes")
    ap.add_argument("--threads", type=int, default=2, help="tick threads per simulator process (fewer threads: fewer GIL stalls inside the agents' latency timers)")
    ap.add_argument("--rate", type=float, default=0.2, help="live inferences per second per device")
    ap.add_argument("--telemetry-interval", type=float, default=10.0, help="seconds per telemetry batch per device")
    ap.add_argument("--telemetry-seconds", type=float, default=60.0, help="length of the telemetry window")
    ap.add_argument("--rollout-timeout", type=float, default=900.0)
    ap.add_argument("--runtime", choices=["auto", "onnx", "golden"], default="golden", help="simulated inference runtime (see fleet/simulator/runtime.py); golden: the light numpy lookup")
    ap.add_argument("--probation-seconds", type=float, default=1.0, help="the devices' probation window (probation.window_seconds; 20 inferences at least)")
    ap.add_argument("--connect-rate", type=float, default=400.0, help="connects per second per simulator process")
    ap.add_argument("--device-dir", default="/dev/shm" if Path("/dev/shm").is_dir() else tempfile.gettempdir(), help="where device data folders go (tmpfs: fsync is free)")
    ap.add_argument("--json", dest="json_out", default=None, help="also write the results to this JSON file")
    ap.add_argument("--profile-console", default=None, metavar="PREFIX", help="run the console under bench/sampler.py; its hottest functions go to PREFIX.nSIZE.txt")
    args = ap.parse_args()
    _raise_nofile()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    base = Path(tempfile.mkdtemp(prefix="edgeops-bench-fleet-"))
    broker, port = start_mosquitto(base)
    results = []
    counter = BrokerCounter(port)
    try:
        repo = make_repository(base)
        for n in sizes:
            print(f"--- {n} devices ---", flush=True)
            res = run_size(n, args, base, repo, f"mqtt://127.0.0.1:{port}", counter)
            print(json.dumps(res, sort_keys=True), flush=True)
            results.append(res)
    finally:
        counter.stop()
        broker.terminate()
        broker.wait(30)
    print()
    print(f"# bench/fleet.py {time.strftime('%Y-%m-%d')} — {os.cpu_count()} cores, processes={args.processes}, threads={args.threads}, runtime={args.runtime}, probation {args.probation_seconds}s, rate={args.rate}/s, telemetry every {args.telemetry_interval}s for {args.telemetry_seconds}s")
    print_table(results)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2, sort_keys=True))
    shutil.rmtree(base, ignore_errors=True)
    return 0 if all(r.get("telemetry_batches_lost") == 0 and r.get("rollout_status") == "finished" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
