"""Telemetry storage on PostgreSQL: one plain table vs daily partitions (fleet/partitions.py).

Both layouts, in one run, in schemas of their own on the same PostgreSQL, get the same rows:
``--days`` days x ``--devices`` devices x one batch every ``--interval`` seconds (filled
server-side with generate_series, in time order as ingest writes them). 10% of the devices are
wave 0 of a rollout and report the new version for the last two hours; the rest report the old
one. Then, on each layout:

* the gates' queries (fleet/rollouts/queries.py: the wave's sums, per device of the wave, per
  device of the control; fleet/metrics.py: the last 5 minutes per version), each the median of
  ``--repeat`` runs, with the window of a wave that started an hour ago;
* one ingest batch of 2,000 new rows through ``Database.insert_ignore_returning`` (the
  partitioned table's cross-day duplicate guard included), median of ``--repeat`` batches;
* retention to 7 days: ``DELETE .. WHERE received_at < cutoff`` on the plain table (what the
  console did), DROP of the expired partitions on the partitioned one; rows removed, seconds,
  and the table's size on disk before and after (the DELETE leaves dead rows until VACUUM), then
  the VACUUM that reclaims them (nothing to do after a DROP).

    python bench/telemetry_store.py                          # 30 days x 200 devices x 15 min
    python bench/telemetry_store.py --days 30 --devices 1000 --interval 300

The machine is shared: compare the two layouts' figures within one run (the ratio column).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from edgeops.fleet import partitions  # noqa: E402
from edgeops.fleet.db import Database, dumps  # noqa: E402
from edgeops.fleet.metrics import FleetCollector  # noqa: E402
from edgeops.fleet.rollouts import queries  # noqa: E402
from edgeops.fleet.rollouts.settings import RolloutSettings  # noqa: E402

DAY = partitions.DAY_S
RETENTION_S = 7 * DAY


def _fill(db: Database, devices: int, days: int, interval: float, now: float) -> int:
    """Devices, a rollout whose wave 0 is every 10th device, and the telemetry rows; returns rows."""
    wave = [f"dev-{i:06d}" for i in range(0, devices, 10)]
    settings = RolloutSettings(bundle_name="digits", bundle_version="2.0.0")
    with db.begin() as conn:
        conn.execute(db.t.devices.insert(), [{"id": f"dev-{i:06d}", "tags": dumps({"site": f"s{i % 5}"}), "profile": f"p{i % 3}", "enrolled_at": now} for i in range(devices)])
        conn.execute(db.t.rollouts.insert(), [{"id": "r1", "bundle_name": "digits", "bundle_version": "2.0.0", "release": 2, "target_name": "t", "target_sha256": "0" * 64,
                                               "target_length": 1, "selector": "{}", "settings": settings.model_dump_json(), "status": "running", "created_at": now, "updated_at": now}])
        conn.execute(db.t.assignments.insert(), [{"rollout_id": "r1", "device_id": d, "wave_idx": 0, "bundle_name": "digits", "bundle_version": "2.0.0", "command_id": f"c-{d}",
                                                  "seq": 1, "expires": now + 3600, "status": "succeeded", "created_at": now, "updated_at": now} for d in wave])
    if db.telemetry_partitioned():
        with db.begin() as conn:
            partitions.ensure_partitions(conn, db.schema, db.t.telemetry.name, now=now, since=now - days * DAY)
    steps = int(days * DAY / interval)
    tel = partitions.qualified(db.schema, db.t.telemetry.name)
    # one statement per day of batches, oldest first: rows arrive in time order as ingest stores them
    per_day = int(DAY / interval)
    for first in range(0, steps, per_day):
        with db.begin() as conn:
            conn.execute(sa.text(
                f"INSERT INTO {tel} (device_id, seq, ts_start, ts_end, version_name, version_version, state, inference_count, error_count, nan_count, "
                "p95_ms, p50_ms, agreement, dropped_batches, received_at) "
                "SELECT 'dev-' || lpad(d::text, 6, '0'), s, t - CAST(:iv AS float8), t, 'digits', "
                "CASE WHEN d % 10 = 0 AND t > CAST(:now AS float8) - 7200 THEN '2.0.0' ELSE '1.0.0' END, 'committed', 60 + d % 7, ((s + d) % 50 = 0)::int, 0, "
                "4.0 + (d % 13) * 0.1, 2.0 + (d % 11) * 0.1, NULL, 0, t "
                "FROM generate_series(CAST(:a AS bigint), CAST(:b AS bigint)) s, generate_series(0, CAST(:n AS int) - 1) d, LATERAL (SELECT CAST(:t0 AS float8) + s * CAST(:iv AS float8) + (d % 97) * (CAST(:iv AS float8) / 97.0) AS t) x"
            ), {"a": first, "b": min(first + per_day, steps) - 1, "n": devices, "iv": interval, "t0": now - days * DAY, "now": now})
    with db.begin() as conn:
        conn.execute(sa.text(f"ANALYZE {tel}"))
    return steps * devices


def _median_s(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _gate_queries(db: Database, now: float, repeat: int) -> dict[str, float]:
    with db.connect() as conn:
        rollout = queries.load_rollout(db, conn, "r1")
    since = now - 3600
    cohort = {f"dev-{i:06d}" for i in range(100_000)}
    out = {}

    def run(fn):
        def go():
            with db.connect() as conn:
                return fn(conn)
        return go

    out["wave sums (new_version_telemetry)"] = _median_s(run(lambda c: queries.new_version_telemetry(db, c, rollout, 0, since)), repeat)
    out["wave per device (wave_device_telemetry)"] = _median_s(run(lambda c: queries.wave_device_telemetry(db, c, rollout, 0, since)), repeat)
    out["control per device (control_device_telemetry)"] = _median_s(run(lambda c: queries.control_device_telemetry(db, c, rollout, ["1.0.0"], cohort, since)), repeat)
    from prometheus_client.core import GaugeMetricFamily

    out["/metrics database part (last 5 min)"] = _median_s(lambda: list(FleetCollector(db)._db_metrics(GaugeMetricFamily)), repeat)
    return out


def _ingest_batch(db: Database, devices: int, repeat: int) -> float:
    seq = [10_000_000]

    def batch():
        now = time.time()
        seq[0] += 1
        rows = [{"device_id": f"dev-{i % devices:06d}", "seq": seq[0] * 1000 + i // devices, "ts_start": now - 60, "ts_end": now, "version_name": "digits", "version_version": "1.0.0",
                 "state": "committed", "inference_count": 60, "error_count": 0, "nan_count": 0, "p95_ms": 4.0, "p50_ms": 2.0, "agreement": None, "dropped_batches": 0, "received_at": now}
                for i in range(2000)]
        with db.begin() as conn:
            assert len(db.insert_ignore_returning(conn, db.t.telemetry, rows, ["device_id", "seq"])) == 2000

    return _median_s(batch, repeat)


def _size(db: Database) -> int:
    with db.connect() as conn:
        if db.telemetry_partitioned():
            names = [p.name for p in partitions.list_partitions(conn, db.schema, db.t.telemetry.name)]
        else:
            names = [db.t.telemetry.name]
        return sum(conn.execute(sa.text("SELECT pg_total_relation_size(:n)"), {"n": partitions.qualified(db.schema, n)}).scalar() for n in names)


def _retention(db: Database, now: float) -> tuple[int, float]:
    cutoff = now - RETENTION_S
    t0 = time.perf_counter()
    with db.begin() as conn:
        if db.telemetry_partitioned():
            # rows in the dropped partitions, counted from the catalogue's estimate before the drop
            before = conn.execute(sa.text(f"SELECT count(*) FROM {partitions.qualified(db.schema, db.t.telemetry.name)} WHERE received_at < :c"), {"c": cutoff}).scalar()
            t0 = time.perf_counter()
            dropped = partitions.drop_expired(conn, db.schema, db.t.telemetry.name, cutoff)
            removed = before if dropped else 0
        else:
            t = db.t.telemetry
            removed = conn.execute(t.delete().where(t.c.received_at < cutoff)).rowcount
    return removed, time.perf_counter() - t0


def _cpu_flags() -> str:
    import subprocess

    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Flags")), "?")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--interval", type=float, default=900.0, help="seconds between two batches of a device")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    now = time.time()
    results: dict[str, dict[str, float]] = {}
    made = []
    try:
        for layout, mode in (("plain", "off"), ("partitioned", "daily")):
            db = Database(args.db, schema=f"bench_tel_{uuid.uuid4().hex[:8]}", telemetry_partitions=mode)
            made.append(db)
            db.create_all()
            t0 = time.perf_counter()
            rows = _fill(db, args.devices, args.days, args.interval, now)
            r: dict[str, float] = {"fill rows": rows, "fill s": time.perf_counter() - t0, "size MB": _size(db) / 1e6}
            print(f"[{layout}] {rows} rows filled in {r['fill s']:.1f} s, {r['size MB']:.1f} MB", flush=True)
            for name, s in _gate_queries(db, now, args.repeat).items():
                r[f"{name} ms"] = s * 1000
            r["ingest batch of 2000 ms"] = _ingest_batch(db, args.devices, args.repeat) * 1000
            removed, secs = _retention(db, now)
            r["retention rows removed"] = removed
            r["retention ms"] = secs * 1000
            r["size after retention MB"] = _size(db) / 1e6
            # the DELETE's dead rows take space and index entries until VACUUM reads the table again
            t0 = time.perf_counter()
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(sa.text(f"VACUUM {partitions.qualified(db.schema, db.t.telemetry.name)}"))
            r["VACUUM after retention ms"] = (time.perf_counter() - t0) * 1000
            results[layout] = r
    finally:
        for db in made:
            db.drop_all()
            db.dispose()
    print(f"\ntelemetry store: {args.days} days x {args.devices} devices, a batch every {args.interval:.0f} s; retention {RETENTION_S / DAY:.0f} days; median of {args.repeat}")
    keys = list(results["plain"])
    print(f"{'':48} {'plain':>12} {'partitioned':>12} {'part/plain':>11}")
    for k in keys:
        a, b = results["plain"][k], results["partitioned"][k]
        ratio = f"{b / a:.3f}" if a else "-"
        print(f"{k:48} {a:12.1f} {b:12.1f} {ratio:>11}" if isinstance(a, float) else f"{k:48} {a:12d} {b:12d} {ratio:>11}")
    print("lscpu flags:", _cpu_flags())


if __name__ == "__main__":
    main()
