"""Prometheus metrics of the console, computed from the database at scrape time.

Reading the database on each scrape (rather than keeping gauges in memory) makes every
replica report the same fleet-wide numbers and survives restarts. Counters of this process
(ingest, repository server) come from the components themselves.

    edgeops_devices{online}                                    devices enrolled, by online flag
    edgeops_devices_online_by_version{bundle,version}         online devices per active bundle version
    edgeops_rollout_info{rollout,bundle,status}               1 per live/recent rollout
    edgeops_rollout_current_wave{rollout}                      index of the current wave (-1: none yet)
    edgeops_rollout_devices{rollout,status}                   assignments per status
    edgeops_rollout_gate_value{rollout,wave,gate}             last measured value of each gate
    edgeops_rollout_gate_threshold{rollout,wave,gate}
    edgeops_rollout_gate_passing{rollout,wave,gate}           1 pass, 0 fail, -1 waiting
    edgeops_telemetry_{inferences,errors,nan}{bundle,version}  sums over the last 5 minutes
    edgeops_telemetry_p95_ms{bundle,version}                   inference-weighted mean p95, last 5 minutes
    edgeops_telemetry_agreement{bundle,version}                mean shadow agreement, last 5 minutes
    edgeops_drift_{psi,ks,ks_p_value,samples,level}{bundle,version}  drift against the bundle's reference over
                                                               drift.window_s (fleet/drift.py); level 0 ok, 1 warn,
                                                               2 alert, -1 too few samples
    edgeops_drift_threshold_psi{level}, edgeops_drift_alpha, edgeops_drift_min_samples   the [drift] thresholds
    edgeops_ingest_messages_total{kind,result}                 received|stored|duplicate|malformed|unknown_device|db_rejected
    edgeops_ingest_db_rejected_total{kind,reason}              messages the database refused (out_of_range|integrity|refused)
    edgeops_ingest_clock_skew_total{kind}                      stored messages whose device time was off the console's clock
    edgeops_ingest_queue_depth, edgeops_ingest_db_errors_total

Label values never come from free device text: ``bundle``/``version`` are a published
(bundle, version) of the console's repository, or ``(unpublished)`` for every other version a
device reports (summed into that one series), so a device that sends 2,000 version strings adds
no series. ``kind``, ``result``, ``reason`` and ``gate`` come from fixed sets; ``rollout`` and
``wave`` from the console's own rollouts.
    edgeops_repo_requests_total{result}                        MQTT fetch requests: served|not_found|malformed|errors
    edgeops_reconciler_leader                                  1 on the replica that drives rollouts
"""

from __future__ import annotations

import json
import logging
import time

import sqlalchemy as sa

from edgeops.fleet.db import Database, health_sums
from edgeops.fleet.rollouts.status import RolloutStatus
from edgeops.fleet.targets import list_targets, published_versions

log = logging.getLogger("edgeops.fleet.metrics")

TELEMETRY_WINDOW_S = 300.0
UNPUBLISHED = "(unpublished)"  # the bundle and version label of versions the repository does not publish (no bundle name has parentheses)


def version_labels(name: str | None, version: str | None, published: set[tuple[str, str]]) -> tuple[str, str]:
    """The (bundle, version) labels of a version a device reported: itself when published,
    ``("", "")`` when it reported none, else ``(UNPUBLISHED, UNPUBLISHED)``."""
    if name is None and version is None:
        return "", ""
    if (name, version) in published:
        return name, version  # type: ignore[return-value]
    return UNPUBLISHED, UNPUBLISHED


class FleetCollector:
    """A prometheus_client collector over the database and the console's live components."""

    def __init__(self, db: Database, console=None, repo_dir=None):
        self.db = db
        self.console = console
        self.repo_dir = repo_dir if repo_dir is not None else getattr(console, "repo_dir", None)

    def published(self) -> set[tuple[str, str]]:
        """(bundle, version) pairs the console's repository publishes (empty without one)."""
        if self.repo_dir is None:
            return set()
        try:
            return published_versions(list_targets(self.repo_dir))
        except Exception:
            log.warning("metrics: cannot read the repository's targets; every version is labelled %s", UNPUBLISHED, exc_info=True)
            return set()

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        try:
            yield from self._db_metrics(GaugeMetricFamily)
        except Exception:  # a scrape must not fail because the database hiccups
            log.exception("metrics: database query failed")
        c = self.console
        if c is None:
            return
        ing = CounterMetricFamily("edgeops_ingest_messages", "Device messages by kind and result", labels=["kind", "result"])
        snap = c.ingest.stats.snapshot()
        for result, key in (("received", "received"), ("stored", "stored"), ("duplicate", "duplicates"), ("malformed", "malformed"), ("unknown_device", "unknown_device")):
            for kind, n in snap[key].items():
                ing.add_metric([kind, result], n)
        rej = CounterMetricFamily("edgeops_ingest_db_rejected", "Device messages the database refused, dropped alone (the rest of their batch stored)", labels=["kind", "reason"])
        for kind, reasons in snap["db_rejected"].items():
            ing.add_metric([kind, "db_rejected"], sum(reasons.values()))
            for reason, n in reasons.items():
                rej.add_metric([kind, reason], n)
        yield ing
        yield rej
        skew = CounterMetricFamily("edgeops_ingest_clock_skew", "Stored device messages whose own timestamp was off the console's receive clock", labels=["kind"])
        for kind, n in snap["clock_skew"].items():
            skew.add_metric([kind], n)
        yield skew
        yield CounterMetricFamily("edgeops_ingest_db_errors", "Ingest batches that failed to store", value=snap["db_errors"])
        yield GaugeMetricFamily("edgeops_ingest_queue_depth", "Messages waiting for the ingest writer", value=c.ingest.queue_depth)
        if c.repo_server is not None:
            repo = CounterMetricFamily("edgeops_repo_requests", "MQTT repository fetch requests", labels=["result"])
            for k, n in dict(c.repo_server.stats).items():
                repo.add_metric([k], n)
            yield repo
        yield GaugeMetricFamily("edgeops_reconciler_leader", "1 when this replica drives rollouts", value=1.0 if c.is_leader else 0.0)

    def _db_metrics(self, Gauge):
        t = self.db.t
        now = time.time()
        published = self.published()
        with self.db.connect() as conn:
            dev = Gauge("edgeops_devices", "Enrolled devices by online flag", labels=["online"])
            for online, n in conn.execute(sa.select(t.devices.c.online, sa.func.count()).group_by(t.devices.c.online)):
                dev.add_metric(["true" if online else "false"], n)
            yield dev
            byv = Gauge("edgeops_devices_online_by_version", "Online devices per active bundle version", labels=["bundle", "version"])
            online: dict[tuple[str, str], int] = {}
            for name, ver, n in conn.execute(
                sa.select(t.devices.c.active_name, t.devices.c.active_version, sa.func.count()).where(t.devices.c.online.is_(True)).group_by(t.devices.c.active_name, t.devices.c.active_version)
            ):
                key = version_labels(name, ver, published)
                online[key] = online.get(key, 0) + n
            for key, n in sorted(online.items()):
                byv.add_metric(list(key), n)
            yield byv

            recent = now - 7 * 86400
            ro = t.rollouts
            rows = conn.execute(
                sa.select(ro.c.id, ro.c.bundle_name, ro.c.bundle_version, ro.c.status, ro.c.current_wave).where(
                    sa.or_(ro.c.status.not_in([RolloutStatus.FINISHED.value, RolloutStatus.ABORTED.value]), ro.c.updated_at >= recent)
                )
            ).all()
            info = Gauge("edgeops_rollout_info", "Rollouts (value 1) with bundle and status", labels=["rollout", "bundle", "status"])
            wave = Gauge("edgeops_rollout_current_wave", "Current wave index", labels=["rollout"])
            for rid, bn, bv, st, cw in rows:
                info.add_metric([rid, f"{bn}@{bv}", st], 1)
                wave.add_metric([rid], cw)
            yield info
            yield wave
            ids = [r[0] for r in rows]
            devs = Gauge("edgeops_rollout_devices", "Devices of a rollout per assignment status", labels=["rollout", "status"])
            gv = Gauge("edgeops_rollout_gate_value", "Last measured value of a gate", labels=["rollout", "wave", "gate"])
            gt = Gauge("edgeops_rollout_gate_threshold", "Threshold of a gate", labels=["rollout", "wave", "gate"])
            gp = Gauge("edgeops_rollout_gate_passing", "1 pass, 0 fail, -1 waiting", labels=["rollout", "wave", "gate"])
            # the judge (fleet/rollouts/judge.py; docs/fleet.md "How the judge decides")
            gi = Gauge("edgeops_rollout_gate_inconclusive", "1 while a gate has too little data to decide", labels=["rollout", "wave", "gate"])
            gpv = Gauge("edgeops_rollout_gate_p_value", "Smallest p-value of a judged gate's last look", labels=["rollout", "wave", "gate"])
            gl = Gauge("edgeops_rollout_gate_looks", "Looks a judged gate has taken in the wave", labels=["rollout", "wave", "gate"])
            if ids:
                a = t.assignments
                for rid, st, n in conn.execute(sa.select(a.c.rollout_id, a.c.status, sa.func.count()).where(a.c.rollout_id.in_(ids)).group_by(a.c.rollout_id, a.c.status)):
                    devs.add_metric([rid, st], n)
                w = t.waves
                for rid, idx, gates in conn.execute(sa.select(w.c.rollout_id, w.c.idx, w.c.gates).where(w.c.rollout_id.in_(ids), w.c.status != "pending")):
                    for g in json.loads(gates or "[]"):
                        labels = [rid, str(idx), g["gate"]]
                        if g.get("measured") is not None:
                            gv.add_metric(labels, g["measured"])
                        if g.get("threshold") is not None:
                            gt.add_metric(labels, g["threshold"])
                        gp.add_metric(labels, {"pass": 1, "fail": 0}.get(g["outcome"], -1))
                        gi.add_metric(labels, 1 if g["outcome"] == "inconclusive" else 0)
                        ps = [j["p_value"] for j in g.get("judgement") or [] if isinstance(j, dict) and isinstance(j.get("p_value"), (int, float))]
                        if ps:
                            gpv.add_metric(labels, min(ps))
                        if g.get("judgement") is not None:
                            gl.add_metric(labels, g.get("looks", 0))
            yield devs
            yield gv
            yield gt
            yield gp
            yield gi
            yield gpv
            yield gl

            tel = t.telemetry
            labels = ["bundle", "version"]
            inf = Gauge("edgeops_telemetry_inferences", "Inferences reported in the last 5 minutes", labels=labels)
            err = Gauge("edgeops_telemetry_errors", "Inference errors reported in the last 5 minutes", labels=labels)
            nan = Gauge("edgeops_telemetry_nan", "NaN/Inf outputs reported in the last 5 minutes", labels=labels)
            p95 = Gauge("edgeops_telemetry_p95_ms", "Inference-weighted mean p95 latency, last 5 minutes", labels=labels)
            agr = Gauge("edgeops_telemetry_agreement", "Mean shadow agreement, last 5 minutes", labels=labels)
            q = (
                sa.select(
                    tel.c.version_name,
                    tel.c.version_version,
                    *health_sums(tel),
                    sa.func.sum(tel.c.agreement),
                    sa.func.count(tel.c.agreement),
                )
                .where(tel.c.received_at >= now - TELEMETRY_WINDOW_S)
                .group_by(tel.c.version_name, tel.c.version_version)
            )
            sums: dict[tuple[str, str], list[float]] = {}  # labels -> [inferences, errors, nan, p95 x n, n, agreement sum, agreement count]
            for name, ver, *values in conn.execute(q):
                acc = sums.setdefault(version_labels(name, ver, published), [0.0] * 7)
                for k, v in enumerate(values):
                    acc[k] += float(v or 0)
            for key, (i, e, n, pw, pn, ag, agn) in sorted(sums.items()):
                lab = list(key)
                inf.add_metric(lab, i)
                err.add_metric(lab, e)
                nan.add_metric(lab, n)
                if pn:
                    p95.add_metric(lab, pw / pn)
                if agn:
                    agr.add_metric(lab, ag / agn)
            yield from (inf, err, nan, p95, agr)
        yield from self._drift_metrics(Gauge, published, now)

    def _drift_metrics(self, Gauge, published: set[tuple[str, str]], now: float):
        """Drift per published version (a version no repository publishes has no reference to score against)."""
        from edgeops.fleet import drift
        from edgeops.fleet.config import DriftConfig

        settings = self.console.config.drift if self.console is not None else DriftConfig()
        labels = ["bundle", "version"]
        help_window = f"over the sketches received in the last {settings.window_s:.0f} s"
        psi = Gauge("edgeops_drift_psi", f"Largest PSI of a tensor against the bundle's reference, {help_window}", labels=labels)
        ks = Gauge("edgeops_drift_ks", f"Largest binned Kolmogorov-Smirnov distance against the reference, {help_window}", labels=labels)
        pv = Gauge("edgeops_drift_ks_p_value", f"KS p-value at the effective sample size (Bonferroni over tensors and channels), {help_window}", labels=labels)
        n = Gauge("edgeops_drift_samples", f"Inferences the drift score is computed on, {help_window}", labels=labels)
        lv = Gauge("edgeops_drift_level", "Drift level from the [drift] thresholds: 0 ok, 1 warn, 2 alert, -1 fewer than min_samples inferences", labels=labels)
        report = drift.drift_report(self.db, drift.reference_store(self.repo_dir), settings, "version", now=now)
        for g in report["groups"]:
            if (g["bundle"], g["version"]) not in published or not g["reference"]:
                continue
            lab = [g["bundle"], g["version"]]
            n.add_metric(lab, g["samples"])
            lv.add_metric(lab, drift.level_value(g["level"]))
            psi.add_metric(lab, g["psi"])
            ks.add_metric(lab, g["ks"])
            pv.add_metric(lab, g["p_value"])
        yield from (psi, ks, pv, n, lv)
        th = Gauge("edgeops_drift_threshold_psi", "PSI thresholds of the [drift] levels", labels=["level"])
        th.add_metric(["warn"], settings.warn_psi)
        th.add_metric(["alert"], settings.alert_psi)
        yield th
        yield Gauge("edgeops_drift_alpha", "Largest KS p-value read as significant", value=settings.alpha)
        yield Gauge("edgeops_drift_min_samples", "Inferences a drift score needs before it is read", value=settings.min_samples)


def render(db: Database, console=None, repo_dir=None) -> tuple[bytes, str]:
    """The /metrics body and its content type (version labels from ``repo_dir``, default the console's repository)."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(db, console, repo_dir))
    return generate_latest(registry), CONTENT_TYPE_LATEST
