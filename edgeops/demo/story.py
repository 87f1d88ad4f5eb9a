"""The demo's steps, what each must show, and the summary they add up to.

1. train the digits CNN, export it, build v1 with the packager; keys, repository, publish v1
2. MQTT broker (embedded amqtt, or ``--broker``) and the fleet console in this process
3. the fleet: N real agents, each fed live frames from its drifting camera
4. roll v1 out in waves; every device must end on v1
5. build v2 (v1 + the exposure guard, see :mod:`edgeops.demo.model`), check on the built
   artifact that it is finite on lab frames and NaN on some drifted ones, publish it
6. roll v2 out: wave 1's devices activate it, their probation NaN gate fails, they roll back
   by themselves; the console's gates fail in wave 1 and the rollout pauses; the operator
   (the demo) then aborts the halted rollout, which cancels the other waves and orders back
   any wave-1 device still on v2; no device outside wave 1 may ever get v2
7. drift: the console scores v1's drift per site cohort from the devices' sketches; the
   brightest site's cohort must alert (see :mod:`edgeops.demo.loop`)
8. capture: a signed capture policy brings frames back from that cohort, sealed to the console
9. export the frames and build v3 with them as its validation data (provenance records the
   export's sha256)

Every expectation is checked; a miss is recorded in ``failures`` and the demo exits non-zero.
"""

from __future__ import annotations

import secrets
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgeops.demo.model import DemoError
from edgeops.demo.report import Narrator

V1, V2 = "1.0.0", "2.0.0"
BUNDLE = "digits"


@dataclass
class DemoOptions:
    """What `edgeops demo` takes (see the CLI for descriptions)."""

    devices: int = 50
    broker: str | None = None
    workdir: Path | None = None
    profile: str = "x86_64-avx512-vnni"
    summary: Path | None = None
    keep_running: bool = False
    seed: int = 0
    waves: tuple[float, ...] = (10.0, 50.0, 100.0)
    bake_s: float = 2.0
    rate_hz: float = 10.0
    phase_timeout_s: float = 120.0


@dataclass
class _Services:
    broker: object = None
    console: object = None
    fleet: object = None
    token: str = ""


@dataclass
class Demo:
    """One demo run; :meth:`run` returns the summary dict (``passed`` says whether it behaved)."""

    options: DemoOptions
    narrator: Narrator
    failures: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        o = self.options
        if o.devices < 3:
            raise DemoError(f"--devices {o.devices}: the demo needs at least 3 devices (one per wave)")
        self.workdir = Path(o.workdir) if o.workdir else Path(tempfile.mkdtemp(prefix="edgeops-demo-"))
        self.run_id = secrets.token_hex(2)
        self.s = _Services()
        self.say = self.narrator.say

    # -- checks ------------------------------------------------------------------------------
    def expect(self, ok: bool, message: str) -> bool:
        """Record a failed expectation (the demo goes on where it can, and exits non-zero)."""
        if not ok:
            self.failures.append(message)
            self.say(f"✗ {message}", "bold red")
        return ok

    def wait(self, predicate, what: str, timeout: float | None = None, interval: float = 0.2, on_tick=None):
        """Poll until ``predicate()`` is truthy; DemoError naming ``what`` on timeout."""
        deadline = time.monotonic() + (timeout or self.options.phase_timeout_s)
        while True:
            if on_tick:
                on_tick()
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise DemoError(f"timed out after {timeout or self.options.phase_timeout_s:.0f}s waiting for {what}")
            time.sleep(interval)

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> dict:
        """Every step; always stops what it started (unless --keep-running) and fills the summary."""
        o = self.options
        n = self.narrator
        self.summary = {
            "devices": o.devices,
            "profile": o.profile,
            "workdir": str(self.workdir),
            "seed": o.seed,
            "run_id": self.run_id,
        }
        try:
            self._run_steps()
        except DemoError as e:
            self.failures.append(str(e))
            n.say(f"✗ {e}", "bold red")
        except KeyboardInterrupt:
            self.failures.append("interrupted (Ctrl-C) before the story finished")
            n.say("✗ interrupted; stopping everything", "bold red")
            o.keep_running = False
        except Exception as e:  # a bug or an environment problem: report it as a failed demo, with its type
            self.failures.append(f"{type(e).__name__}: {e}")
            n.say(f"✗ {type(e).__name__}: {e}", "bold red")
            import logging

            logging.getLogger("edgeops.demo").debug("demo failed", exc_info=True)
        finally:
            self._finish_summary()
            if not (o.keep_running and self.s.console is not None):
                self.close()
        return self.summary

    def hold(self) -> None:
        """With --keep-running: leave broker, console and fleet up until Ctrl-C (or SIGTERM), then close."""
        try:
            if self.options.keep_running and self.s.console is not None:
                self._keep_running()
        finally:
            self.close()

    def _run_steps(self) -> None:
        o, n = self.options, self.narrator
        from edgeops.demo import model as m

        # 1. model, bundle, trust --------------------------------------------------------------
        with n.step("train", "Train the digits CNN on scikit-learn's digits (held-out images become the cameras' frames)"):
            self.data = m.train(self.workdir, seed=o.seed)
            self.say(f"validation accuracy {self.data.sample.val_accuracy:.3f}; {len(self.data.live_frames)} held-out frames for the cameras")
            self.v1_onnx = m.export_onnx(self.data.sample, self.workdir / "digits-v1.onnx")
        with n.step("build_v1", f"Build digits {V1} for {o.profile} with the packager"):
            r1 = m.build_bundle(self.v1_onnx, self.data, o.profile, V1, 1, self.workdir / f"digits-{V1}.bundle")
            self.v1_build = r1
            self._say_build(r1)
        with n.step("publish_v1", "Create keys and a TUF repository, sign and publish v1"):
            from edgeops.trust.keys import Keyring
            from edgeops.trust.repository import Repository

            self.keys_dir = self.workdir / "keys"
            self.repo_dir = self.workdir / "repo"
            # one root key keeps the demo fast; production keyrings use 3 root keys, threshold 2
            self.ring = Keyring.create(self.keys_dir, root_keys=1, root_threshold=1)
            self.repo = Repository.init(self.repo_dir, self.ring)
            res = self.repo.publish(r1.path, self.ring)
            self.say(f"keys in {self.keys_dir.name}/ (root, targets, snapshot, timestamp, command); signed target {res.target}")
        self.summary["model"] = {"val_accuracy": round(self.data.sample.val_accuracy, 4), "v1": self._build_info(r1)}

        # 2. broker and console -------------------------------------------------------------------
        with n.step("broker", "Start the MQTT broker" if not o.broker else f"Use the MQTT broker at {o.broker}"):
            self._start_broker()
        with n.step("console", "Start the fleet console (SQLite registry, repository server, reconciler, REST API)"):
            self._start_console()

        # 3. fleet ---------------------------------------------------------------------------------
        with n.step("fleet", f"Start {o.devices} devices running the real agent (onnxruntime, TUF, DSSE, probation, spool)"):
            self._start_fleet()

        # 4. v1 rollout ----------------------------------------------------------------------------
        with n.step("rollout_v1", f"Roll v1 out in waves {self._waves_text()} (bake {o.bake_s:.0f}s)"):
            r = self._rollout(V1)
            self.v1_rollout_id = r["id"]
            final = self._follow(r["id"], until=lambda st: st["status"] in ("finished", "paused", "aborted", "aborting"))
            if final["status"] != "finished":
                raise DemoError(f"v1 rollout ended {final['status']} ({final.get('reason')}), expected finished; {self._failed_detail(r['id'])}")
            self.wait(lambda: self.s.fleet.settled_on(V1) == o.devices, f"all {o.devices} devices to run {V1}", on_tick=None)
            self.say(f"all {o.devices} devices run {V1}: {self.s.fleet.versions()}", "green")
        self.summary["v1_rollout"] = self._rollout_info(self.v1_rollout_id)
        self.summary["v1_on_devices"] = self.s.fleet.settled_on(V1)

        # 5. v2 ------------------------------------------------------------------------------------
        with n.step("build_v2", f"Build and publish digits {V2}: v1 plus an exposure guard that is NaN on frames brighter than the lab data"):
            from edgeops.demo.camera import drifted_batch

            limit = self.data.lab_saturated_max + 0.5 / self.data.live_frames[0].size
            v2_onnx = m.inject_range_fault(self.v1_onnx, self.workdir / "digits-v2.onnx", limit)
            r2 = m.build_bundle(v2_onnx, self.data, o.profile, V2, 2, self.workdir / f"digits-{V2}.bundle")
            self._say_build(r2)
            fault = m.check_fault(r2.path, self.data, drifted_batch(self.data.live_frames, 400, seed=o.seed + 1), self.workdir / "v2-check")
            self.say(
                f"on the built artifact: {fault['lab_nan']} NaN on {fault['lab_frames']} lab frames, "
                f"{fault['drifted_nan']} NaN on {fault['drifted_frames']} drifted camera frames ({fault['drifted_nan_rate']:.0%})",
                "yellow",
            )
            self.repo.publish(r2.path, self.ring)
            self.say(f"signed and published {BUNDLE} {V2} (release 2)")
        self.summary["model"]["v2"] = {**self._build_info(r2), "fault": {"kind": "NaN when the saturated share of a frame exceeds the lab maximum", "limit": round(limit, 6), **fault}}

        # 6. v2 rollout ----------------------------------------------------------------------------
        with n.step("rollout_v2", f"Roll v2 out in waves {self._waves_text()}"):
            r = self._rollout(V2)
            self.v2_rollout_id = r["id"]
            halted = self._follow(r["id"], until=lambda st: st["status"] in ("paused", "aborting", "aborted", "finished"))
            self.expect(halted["status"] == "paused", f"v2 rollout is {halted['status']}, expected paused by its gates")
            self.expect(halted["current_wave"] == 0, f"v2 rollout halted in wave {halted['current_wave'] + 1}, expected wave 1")
            self.say(f"rollout {halted['status']}: {halted['reason']}", "bold yellow")
            wave1 = self._wave_devices(r["id"], 0)
            self.wait(lambda: self._wave_settled(r["id"], 0, wave1), f"wave 1's {len(wave1)} devices to finish with v2")
            self.say("wave 1 settled: " + ", ".join(f"{k} {v}" for k, v in self._wave_counts(r["id"], 0).items()))
        with n.step("halt", "Close the halted rollout (abort) and confirm the fleet is back on v1"):
            from edgeops.fleet.rollouts.service import abort_rollout

            abort_rollout(self.s.console.db, r["id"], actor="demo", reason="wave 1 halted by its gates; closed by the demo")
            self.s.console.wake()
            self.wait(lambda: self._status(r["id"])["status"] == "aborted", "the rollout to reach aborted")
            self.wait(lambda: self.s.fleet.settled_on(V1) == o.devices, f"all {o.devices} devices to run {V1} again")
            # a few reconcile ticks more: nothing may start another wave now
            time.sleep(max(1.5, 3 * self.s.console.config.rollouts.reconcile_interval_s))
            self.say(f"every device runs {V1}: {self.s.fleet.versions()}", "green")

        self._check_v2()

        # 7-9. the monitoring loop: drift -> capture -> export -> v3 (edgeops.demo.loop) ------
        from edgeops.demo import loop
        from edgeops.demo.fleet import BRIGHT_SITE

        with n.step("drift", f"Score v1's drift per site from the devices' sketches (GET /api/v1/drift?by=tag): site={BRIGHT_SITE}'s cameras drift brightest"):
            loop.drift_step(self, BUNDLE, V1)
        with n.step("capture", f"Capture frames from site={BRIGHT_SITE} under a signed policy, sealed to the console, uploaded and stored"):
            loop.capture_step(self, BUNDLE, V1)
        with n.step("build_v3", f"Export the captured frames and build digits {loop.V3} validated on them"):
            loop.export_and_build_v3(self, BUNDLE, V1, self.workdir)

    # -- pieces ------------------------------------------------------------------------------------
    def _waves_text(self) -> str:
        return ",".join(f"{w:g}%" for w in self.options.waves)

    def _say_build(self, r) -> None:
        met = r.report.get("metrics", {})
        size = r.path.stat().st_size if r.path else 0
        self.say(
            f"{r.manifest.name} {r.manifest.version}: {r.report.get('choice', {}).get('scheme', r.manifest.runtime)}; "
            f"top-1 agreement {met.get('top1_agreement')}, accuracy {met.get('accuracy_built')} (drop {met.get('accuracy_drop_points')} pts); "
            f"bundle {size / 1024:.0f} KiB; gates {'passed' if r.gates_passed else 'FAILED'}"
        )

    def _build_info(self, r) -> dict:
        from edgeops.bundle import sha256_file

        return {
            "version": r.manifest.version,
            "bundle": str(r.path),
            "sha256": sha256_file(r.path),
            "size_bytes": r.path.stat().st_size,
            "packager_gates": r.report.get("gates", []),
            "accuracy": r.report.get("metrics", {}).get("accuracy_built"),
        }

    def _start_broker(self) -> None:
        o = self.options
        if o.broker:
            from urllib.parse import urlparse

            u = urlparse(o.broker)
            if u.scheme not in ("mqtt", "tcp") or not u.hostname:
                raise DemoError(f"--broker {o.broker!r}: expected mqtt://host:port (the demo connects without TLS or credentials)")
            from edgeops.errors import FleetError
            from edgeops.fleet.config import BrokerConfig
            from edgeops.fleet.mqtt import probe_protocol

            self.broker_url = f"mqtt://{u.hostname}:{u.port or 1883}"
            try:
                # MQTT 5 where the broker speaks it (mosquitto), else 3.1.1 (amqtt), for console and devices alike
                self.mqtt_version = probe_protocol(BrokerConfig(url=self.broker_url, client_id=f"edgeops-demo-{self.run_id}"))
            except FleetError as e:
                raise DemoError(f"--broker {o.broker}: {e}; start a broker there or leave --broker out to use the embedded one") from e
            self.console_protocol = self.mqtt_version
            self.summary["broker"] = {"kind": "external", "url": self.broker_url, "mqtt": self.mqtt_version}
            self.say(f"external broker {self.broker_url} (MQTT {self.mqtt_version}); devices tagged demo={self.run_id}, so other clients' devices are left alone")
            return
        from edgeops.fleet.embedded_broker import EmbeddedBroker

        self.s.broker = EmbeddedBroker().start()
        self.broker_url = self.s.broker.url
        self.mqtt_version = "3.1.1"  # amqtt speaks MQTT 3.1.1
        self.console_protocol = "3.1.1"
        self.summary["broker"] = {"kind": "embedded amqtt", "url": self.broker_url, "mqtt": "3.1.1"}
        self.say(f"embedded amqtt broker on {self.broker_url} (MQTT 3.1.1)")

    def _start_console(self) -> None:
        from edgeops.fleet.config import config_from_dict
        from edgeops.fleet.console import FleetConsole

        self.s.token = secrets.token_urlsafe(18)
        cfg = config_from_dict(
            {
                "base_dir": str(self.workdir),
                "broker": {"url": self.broker_url, "protocol": self.console_protocol, "client_id": f"edgeops-demo-console-{self.run_id}"},
                "database": {"url": "sqlite:///fleet.db"},
                "repository": {"dir": "repo", "keys_dir": "keys"},
                "api": {"bind": "127.0.0.1:0", "tokens": [self.s.token], "tokens_env": None},
                "rollouts": {"reconcile_interval_s": 0.5, "offline_timeout_s": 60},
                "ingest": {"auto_register": True, "flush_interval_s": 0.1},
            }
        )
        self.s.console = FleetConsole(cfg).start()
        self.summary["console"] = {"api_url": self.s.console.api_url, "database": cfg.database_url()}
        if self.options.keep_running:
            self.summary["console"]["token"] = self.s.token  # the API stays up for you to explore
            self.summary["console"]["ui_url"] = self.s.console.api_url + "/ui/"
        self.say(f"console API {self.s.console.api_url}, database {cfg.database_url()}")

    def _start_fleet(self) -> None:
        from edgeops.demo.fleet import DemoFleet

        o = self.options
        self.s.fleet = DemoFleet(
            o.devices,
            self.workdir,
            o.profile,
            self.broker_url,
            self.mqtt_version,
            self.repo_dir / "metadata" / "1.root.json",
            self.data.live_frames,
            self.data.live_labels,
            run_id=self.run_id,
            seed=o.seed,
            rate_hz=o.rate_hz,
        ).start()
        self.wait(lambda: self.s.fleet.connected() == o.devices, f"{o.devices} devices to connect to {self.broker_url}", timeout=60)
        from edgeops.demo.camera import BRIGHT_GAIN, DEFAULT_GAIN
        from edgeops.demo.fleet import BRIGHT_SITE

        self.say(
            f"{o.devices} devices connected, cameras drifting (gain x{DEFAULT_GAIN[0]:g}-{DEFAULT_GAIN[1]:g}; "
            f"site={BRIGHT_SITE}'s x{BRIGHT_GAIN[0]:g}-{BRIGHT_GAIN[1]:g}), nothing installed yet"
        )
        self.wait(lambda: self._registered() >= o.devices, f"the console to register {o.devices} devices", timeout=60)
        self.say(f"console sees {o.devices} devices (tag demo={self.run_id})")

    def _registered(self) -> int:
        from edgeops.fleet.registry import device_ids

        return len(device_ids(self.s.console.db) & set(self.s.fleet.device_ids))

    def _rollout(self, version: str) -> dict:
        from edgeops.fleet.rollouts.service import create_rollout, start_rollout
        from edgeops.fleet.rollouts.settings import Selector, build_settings

        o = self.options
        settings = build_settings(
            bundle_name=BUNDLE,
            bundle_version=version,
            selector=Selector(tags={"demo": self.run_id}),
            waves=list(o.waves),
            bake_s=o.bake_s,
            min_reporting=1.0,
            max_failure_rate=0.05,
            max_error_rate=0.01,
            max_latency_regression=3.0,
            min_agreement=0.9,
            on_gate_failure="pause",
            name=f"demo {version}",
        )
        db = self.s.console.db
        r = create_rollout(db, settings, self.repo_dir)
        start_rollout(db, r["id"], actor="demo")
        self.s.console.wake()
        self.say(f"rollout {r['id']} of {BUNDLE}@{version} created and started")
        return r

    def _status(self, rollout_id: str) -> dict:
        from edgeops.fleet.rollouts.service import rollout_status

        return rollout_status(self.s.console.db, rollout_id)

    def _follow(self, rollout_id: str, until) -> dict:
        """Print wave transitions and device progress until ``until(status)``; returns the status."""
        seen: dict = {}
        last_line = [0.0]

        def tick():
            st = self._status(rollout_id)
            for w in st["waves"]:
                key = (w["idx"], w["status"])
                if w["status"] != "pending" and key not in seen:
                    seen[key] = True
                    label = f"wave {w['idx'] + 1} ({w['percent']:g}%, {w['devices']} devices)"
                    if w["status"] == "running":
                        self.say(f"{label} started")
                    elif w["status"] == "passed":
                        self.say(f"{label} passed: " + _gate_text(w["gates"]), "green")
                    elif w["status"] == "halted":
                        self.say(f"{label} HALTED: " + _gate_text(w["gates"]), "bold red")
                    else:
                        self.say(f"{label} {w['status']}")
            now = time.monotonic()
            if now - last_line[0] > 3.0:
                last_line[0] = now
                by = st.get("by_status") or {}
                if by:
                    self.say("  devices: " + ", ".join(f"{k} {v}" for k, v in by.items()) + f"   fleet: {self.s.fleet.versions()}", "dim")
            return st

        holder = {}

        def done():
            holder["st"] = tick()
            return until(holder["st"])

        self.wait(done, f"rollout {rollout_id} to finish or halt", interval=0.25)
        return holder["st"]

    def _assignments(self, rollout_id: str) -> list[dict]:
        from edgeops.fleet.rollouts.service import rollout_assignments

        return rollout_assignments(self.s.console.db, rollout_id)

    def _wave_devices(self, rollout_id: str, idx: int) -> list[str]:
        return sorted(a["device_id"] for a in self._assignments(rollout_id) if a["wave"] == idx)

    def _wave_counts(self, rollout_id: str, idx: int) -> dict[str, int]:
        counts: dict[str, int] = {}
        for a in self._assignments(rollout_id):
            if a["wave"] == idx:
                counts[a["status"]] = counts.get(a["status"], 0) + 1
        return dict(sorted(counts.items()))

    def _wave_settled(self, rollout_id: str, idx: int, devices: list[str]) -> bool:
        final = {"succeeded", "rolled_back", "timed_out", "reverted"}
        records = self.s.fleet.records

        def done(a: dict) -> bool:
            # "failed" is final for a device that never rolled back (e.g. its self-test refused v2);
            # after a probation failure the device's rolled_back event is still to come.
            return a["status"] in final or (a["status"] == "failed" and records[a["device_id"]].rollbacks == 0)

        rows = [a for a in self._assignments(rollout_id) if a["wave"] == idx]
        snap = self.s.fleet.snapshot()
        return all(done(a) for a in rows) and all(snap[d]["state"] in ("idle", "committed", "failed") for d in devices)

    def _failed_detail(self, rollout_id: str) -> str:
        bad = [a for a in self._assignments(rollout_id) if a["status"] in ("failed", "rolled_back", "timed_out")]
        if not bad:
            return "no device reported a failure"
        return f"{len(bad)} device(s) failed, e.g. {bad[0]['device_id']}: {bad[0]['detail'][:300]}"

    def _rollout_info(self, rollout_id: str) -> dict:
        st = self._status(rollout_id)
        return {
            "id": st["id"],
            "bundle": st["bundle"],
            "status": st["status"],
            "reason": st["reason"],
            "waves": [
                {"wave": w["idx"] + 1, "percent": w["percent"], "devices": w["devices"], "status": w["status"], "reason": w["reason"], "by_status": w["by_status"], "gates": w["gates"]}
                for w in st["waves"]
            ],
        }

    def _device_gates(self, rollout_id: str, devices: list[str]) -> list[dict]:
        """The probation gate results the wave's devices reported when they rolled back."""
        from edgeops.fleet.registry import list_events

        wanted = set(devices)
        events = []
        for kind in ("probation_failed", "self_test_failed"):
            # a demo fleet is small: every such event of the run fits in one page
            events += list_events(self.s.console.db, kind=kind, limit=100_000)
        out = []
        for ev in sorted(events, key=lambda ev: ev["device_id"]):
            if ev["device_id"] not in wanted or (ev["target"] or {}).get("version") != V2:
                continue
            for g in ev["gates"]:
                if not g.get("passed", True):
                    out.append({"device": ev["device_id"], "event": ev["kind"], **g})
        return out

    def _check_v2(self) -> None:
        """The expectations of the v2 story, from the console's rows and the devices' own records."""
        o = self.options
        fleet = self.s.fleet
        rid = self.v2_rollout_id
        assignments = self._assignments(rid)
        wave1 = sorted(a["device_id"] for a in assignments if a["wave"] == 0)
        outside = sorted(a["device_id"] for a in assignments if a["wave"] != 0)
        ever = fleet.ever(V2, "assigned")
        ran = fleet.ever(V2, "ran")
        rolled_back = sorted(a["device_id"] for a in assignments if a["status"] == "rolled_back")
        ordered_back = sorted(a["device_id"] for a in assignments if a["status"] in ("reverting", "reverted") and a["device_id"] in ran)
        info = self._rollout_info(rid)
        halted_wave = next((w["wave"] for w in info["waves"] if w["status"] in ("halted", "failed")), None)
        self.summary.update(
            {
                "v2_rollout": info,
                "v2_halted_in_wave": halted_wave,
                "wave_1_devices": wave1,
                "devices_assigned_v2_by_console_outside_wave_1": outside,
                "devices_ever_assigned_v2": ever,
                "devices_ever_assigned_v2_all_in_wave_1": set(ever) <= set(wave1),
                "devices_ran_v2": ran,
                "devices_rolled_back_by_themselves": rolled_back,
                "devices_ordered_back_by_abort": ordered_back,
                "device_probation_gates": self._device_gates(rid, wave1),
            }
        )
        self.expect(halted_wave == 1, f"v2 halted in wave {halted_wave}, expected wave 1")
        self.expect(not outside, f"the console assigned v2 outside wave 1: {outside}")
        self.expect(set(ever) <= set(wave1), f"devices outside wave 1 took v2: {sorted(set(ever) - set(wave1))}")
        self.expect(bool(ran), "no device activated v2: the probation story did not happen")
        self.expect(bool(rolled_back), "no device rolled v2 back by itself")
        self.expect(fleet.settled_on(V1) == o.devices, f"{fleet.settled_on(V1)} of {o.devices} devices run {V1} at the end")

    def _finish_summary(self) -> None:
        s = self.summary
        fleet = self.s.fleet
        if fleet is not None:
            s["versions_at_end"] = fleet.versions()
            s["devices_on_v1_at_end"] = fleet.settled_on(V1)
            s["field"] = fleet.field_stats()
        s["gates"] = _gate_rows(s)
        s["timings"] = {**self.narrator.timings, "total": self.narrator.total()}
        s["failures"] = list(self.failures)
        s["passed"] = not self.failures and "v2_rollout" in s and "v3" in s

    def _keep_running(self) -> None:
        c = self.s.console
        self.narrator.console.print(still_running_message(self.broker_url, c.api_url, self.s.token), soft_wrap=True, highlight=False)
        stop = threading.Event()
        old = signal.signal(signal.SIGTERM, lambda *a: stop.set())
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, old)

    def close(self) -> None:
        """Stop everything the demo started (idempotent)."""
        fleet, console, broker = self.s.fleet, self.s.console, self.s.broker
        self.s = _Services()
        if fleet is not None:
            fleet.stop()
            if self.options.broker:
                _clear_retained(self.broker_url, fleet.device_ids, self.run_id)
        if console is not None:
            try:
                console.stop()
            except Exception:  # stopping is best effort; the story's verdict is already made
                pass
        if broker is not None:
            broker.stop()


def _gate_rows(s: dict) -> list[dict]:
    """The gates that decided the story, one row each: v1's last wave, v2's halted wave, the
    devices' probation gates, the packager's gates on v2 (every wave's gates stay in the rollouts)."""
    rows = []
    for key, label in (("v1_rollout", "v1"), ("v2_rollout", "v2")):
        waves = [w for w in (s.get(key) or {}).get("waves", []) if w.get("gates")]
        decided = [w for w in waves if w["status"] in ("halted", "failed")] or waves[-1:]
        for w in decided:
            for g in w["gates"]:
                rows.append({"where": f"console {label} wave {w['wave']}", "gate": g["gate"], "outcome": g["outcome"], "measured": g.get("measured"), "threshold": g.get("threshold"), "detail": g.get("detail", "")})
    device_gates = s.get("device_probation_gates", [])
    for name in sorted({g["gate"] for g in device_gates}):
        hits = [g for g in device_gates if g["gate"] == name]
        worst = max(hits, key=lambda g: g.get("measured") or 0)
        rows.append({"where": f"{len(hits)} device(s) probation", "gate": name, "outcome": "fail", "measured": worst.get("measured"), "threshold": worst.get("threshold"), "detail": worst.get("detail", "")})
    for g in (s.get("model", {}).get("v2") or {}).get("packager_gates", []):
        rows.append({"where": "packager v2", "gate": g.get("gate", g.get("name", "?")), "outcome": "pass" if g.get("passed") else "fail", "measured": g.get("measured", g.get("value")), "threshold": g.get("threshold", g.get("limit")), "detail": ""})
    return rows


def _gate_text(gates: list[dict]) -> str:
    parts = []
    for g in gates:
        m, t = g.get("measured"), g.get("threshold")
        val = f"{m:.3g}" if isinstance(m, (int, float)) else "-"
        thr = f"{t:.3g}" if isinstance(t, (int, float)) else "-"
        mark = "✗" if g["outcome"] == "fail" else ("✓" if g["outcome"] == "pass" else "…")
        parts.append(f"{mark} {g['gate']} {val}/{thr}")
    return ", ".join(parts)


def _clear_retained(broker_url: str, device_ids: list[str], run_id: str) -> None:
    """On a shared broker, remove the demo devices' retained state messages (best effort)."""
    try:
        import paho.mqtt.client as mqtt
        from urllib.parse import urlparse

        from edgeops.protocol import state_topic

        u = urlparse(broker_url)
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"edgeops-demo-cleanup-{run_id}", protocol=mqtt.MQTTv311)
        c.connect(u.hostname, u.port or 1883, 10)
        c.loop_start()
        infos = [c.publish(state_topic(d), b"", qos=1, retain=True) for d in device_ids]
        for i in infos:
            i.wait_for_publish(2)
        c.disconnect()
        c.loop_stop()
    except Exception:
        pass


def still_running_message(broker_url: str, api_url: str, token: str) -> str:
    """What --keep-running prints: the console in a browser (URL and sign-in token), the API, the CLI."""
    return (
        f"\n[bold]Still running[/] (Ctrl-C to stop): broker {broker_url}, console API {api_url}\n"
        f"  console in a browser: {api_url}/ui/  (sign in with the token {token})\n"
        f"  curl -H 'Authorization: Bearer {token}' {api_url}/api/v1/rollouts\n"
        f"  curl -H 'Authorization: Bearer {token}' {api_url}/api/v1/devices\n"
        f"  edgeops rollout list --url {api_url} --token {token}"
    )
