"""The demo's fleet: N real device agents in this process, each with its own camera.

Every device is an :class:`edgeops.agent.core.Agent` with the agent's default parts: its own
MQTT session to the broker, TUF client fetching over MQTT from the console, DSSE command
verification, the persisted install state machine, the onnxruntime runtime loading the real
bundle artifact, self-test on golden vectors, probation with shadow runs, and the SQLite
telemetry spool. Only the configuration is tuned for a one-minute demo (short probation
window, telemetry every second, no local HTTP API).

One traffic thread feeds every serving device live frames from its :class:`Camera` at
``rate_hz`` through ``Agent.infer`` (the same path the local inference API uses), so probation
and telemetry see the real model's outputs on drifted frames.

The fleet also records, from the devices' side, which version each device was ever asked to
install or ran (``on_state`` hook after every persisted transition), so the demo can prove
that no device outside the halted wave ever touched the bad version.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeops.demo.camera import BRIGHT_GAIN, DEFAULT_GAIN, Camera

log = logging.getLogger("edgeops.demo.fleet")

RESTING_STATES = ("idle", "committed", "failed")
START_BATCH = 10
START_PAUSE_S = 0.1
SITES = ("plant-north", "plant-south", "depot")
BRIGHT_SITE = "depot"  # its cameras drift brighter (camera.BRIGHT_GAIN): the cohort drift finds


def site_of(i: int) -> str:
    """The site tag of the i-th device (round robin over SITES)."""
    return SITES[i % len(SITES)]


@dataclass
class DeviceRecord:
    """What the demo observed on one device (device side, not the console's view)."""

    device_id: str
    versions_assigned: set[str] = field(default_factory=set)  # versions its state machine took on
    versions_ran: set[str] = field(default_factory=set)  # versions it activated (served in probation or later)
    rollbacks: int = 0
    inferences: int = 0
    correct: int = 0
    nan_outputs: int = 0
    by_version: dict[str, list[int]] = field(default_factory=dict)  # version -> [inferences, correct, nan]


def agent_config(device_id: str, data_dir: Path, profile: str, broker_url: str, mqtt_version: str, root: Path, tags: dict[str, str]) -> dict:
    """The agent.toml of one demo device, as a dict (see agent/agent.example.toml)."""
    return {
        "device_id": device_id,
        "data_dir": str(data_dir),
        "profile": profile,
        "tags": tags,
        "broker": {"url": broker_url, "mqtt_version": mqtt_version, "keepalive_s": 30, "reconnect_min_s": 0.2, "reconnect_max_s": 2.0},
        # The demo's devices share one process: TUF in-process, not a worker process per device update.
        "trust": {"root": str(root), "repository": "mqtt", "fetch_timeout_s": 5.0, "metadata_worker": False},
        "api": {"listen": "", "shadow_sample_rate": 0.25},
        "telemetry": {"interval_s": 1.0, "resend_after_s": 10.0},
        # The agent's default 30 timed runs: the p95 of 10 was their maximum, so one scheduling
        # stall of 50 agents sharing a busy 2-core host failed a device's latency gate and the
        # demo then waited in vain for it to run v1.
        "self_test": {"latency_runs": 30},
        # A short window for the demo; no synthetic golden traffic: every window inference is a
        # live camera frame, the only kind that can reveal an input-dependent fault.
        "probation": {"window_count": 40, "window_seconds": 3.0, "synthetic_interval_s": 0.0, "min_shadow_samples": 5},
    }


class DemoFleet:
    """Start, feed, observe and stop N agents (see module doc)."""

    def __init__(
        self,
        n: int,
        workdir: Path,
        profile: str,
        broker_url: str,
        mqtt_version: str,
        root: Path,
        frames: np.ndarray,
        labels: np.ndarray,
        run_id: str,
        seed: int = 0,
        rate_hz: float = 10.0,
        gain_range: tuple[float, float] = DEFAULT_GAIN,
        bright_gain: tuple[float, float] = BRIGHT_GAIN,
    ):
        self.n = n
        self.workdir = Path(workdir)
        self.profile = profile
        self.broker_url = broker_url
        self.mqtt_version = mqtt_version
        self.root = Path(root)
        self.run_id = run_id
        self.rate_hz = rate_hz
        self.device_ids = [f"cam-{run_id}-{i + 1:03d}" for i in range(n)]
        self.tags = {"demo": run_id}
        self.agents: list = []
        self.sites = {d: site_of(i) for i, d in enumerate(self.device_ids)}
        self.cameras = {
            d: Camera(frames, labels, seed=seed * 100_003 + i, gain_range=bright_gain if self.sites[d] == BRIGHT_SITE else gain_range) for i, d in enumerate(self.device_ids)
        }
        self.records = {d: DeviceRecord(d) for d in self.device_ids}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._traffic: threading.Thread | None = None
        self._seed = seed
        self.traffic_errors = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def _make_agent(self, i: int, device_id: str):
        from edgeops.agent.config import parse_config
        from edgeops.agent.core import Agent, AgentHooks

        site = self.sites[device_id]
        raw = agent_config(device_id, self.workdir / "devices" / device_id, self.profile, self.broker_url, self.mqtt_version, self.root, {**self.tags, "site": site})
        cfg = parse_config(raw, source=f"demo device {device_id}")
        holder: dict = {}

        def on_state(state) -> None:
            agent = holder.get("agent")
            if agent is not None:
                self._observe(agent, state.value)

        agent = Agent(cfg, hooks=AgentHooks(on_state=on_state), rng=random.Random(self._seed * 7919 + i))
        holder["agent"] = agent
        return agent

    def start(self) -> "DemoFleet":
        """Create every agent and start it (main loop + MQTT session threads), then the traffic."""
        self.agents = [self._make_agent(i, d) for i, d in enumerate(self.device_ids)]
        for i, a in enumerate(self.agents):
            a.start()
            if i % START_BATCH == START_BATCH - 1:
                time.sleep(START_PAUSE_S)  # a fleet powering up does not connect in one instant
        self._stop.clear()
        self._traffic = threading.Thread(target=self._traffic_loop, name="demo-traffic", daemon=True)
        self._traffic.start()
        return self

    def stop(self) -> None:
        """Stop traffic and every agent (in parallel: each waits for its threads)."""
        self._stop.set()
        if self._traffic:
            self._traffic.join(timeout=10)
        if self.agents:
            with ThreadPoolExecutor(max_workers=16) as pool:
                list(pool.map(_quiet_stop, self.agents))

    # -- observation ---------------------------------------------------------------------------
    def _observe(self, agent, state: str) -> None:
        u = agent.persisted.update
        with self._lock:
            rec = self.records[agent.device_id]
            if u is not None and u.version and state not in RESTING_STATES:
                rec.versions_assigned.add(u.version)
            if state in ("probation", "committed") and agent.serving is not None:
                rec.versions_ran.add(agent.serving.manifest.version)
            if state == "rolling-back":
                rec.rollbacks += 1

    def at_site(self, site: str) -> list[str]:
        """The device ids tagged ``site``."""
        return [d for d in self.device_ids if self.sites[d] == site]

    def capture_counts(self, devices: list[str]) -> tuple[int, int]:
        """(samples captured, samples still in the spools) on ``devices``, from the agents themselves."""
        wanted = set(devices)
        agents = [a for a in self.agents if a.device_id in wanted]
        return sum(a.capturer.total_captured for a in agents), sum(a.capture_spool.count() for a in agents)

    def connected(self) -> int:
        """Devices whose MQTT session is up."""
        return sum(1 for a in self.agents if a.session is not None and a.session.connected)

    def snapshot(self) -> dict[str, dict]:
        """device id -> {state, active, update} right now."""
        out = {}
        for a in self.agents:
            serving = a.serving
            u = a.persisted.update
            out[a.device_id] = {
                "state": a.persisted.state.value,
                "active": serving.manifest.version if serving else None,
                "update": u.version if u else None,
            }
        return out

    def versions(self) -> dict[str, int]:
        """Active version -> number of devices ('none' when nothing is served)."""
        counts: dict[str, int] = {}
        for s in self.snapshot().values():
            key = s["active"] or "none"
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))

    def settled_on(self, version: str) -> int:
        """Devices serving ``version`` in a resting state."""
        return sum(1 for s in self.snapshot().values() if s["active"] == version and s["state"] in RESTING_STATES)

    def ever(self, version: str, what: str = "assigned") -> list[str]:
        """Devices that were ever assigned (or ran) ``version``, from the devices' own transitions."""
        with self._lock:
            return sorted(d for d, r in self.records.items() if version in (r.versions_assigned if what == "assigned" else r.versions_ran))

    def field_stats(self) -> dict[str, dict]:
        """Per version: live inferences, accuracy on the true labels, NaN outputs."""
        with self._lock:
            agg: dict[str, list[int]] = {}
            for r in self.records.values():
                for v, (n, ok, nan) in r.by_version.items():
                    a = agg.setdefault(v, [0, 0, 0])
                    a[0] += n
                    a[1] += ok
                    a[2] += nan
        return {v: {"inferences": n, "accuracy": round(ok / n, 4) if n else None, "nan_outputs": nan} for v, (n, ok, nan) in sorted(agg.items())}

    # -- traffic ---------------------------------------------------------------------------------
    def _traffic_loop(self) -> None:
        from edgeops.agent.core import BadInputError, NoModelError
        from edgeops.agent.runtimes import InferenceError

        period = 1.0 / self.rate_hz
        next_t = time.monotonic()
        while not self._stop.is_set():
            for agent in self.agents:
                if agent.serving is None:
                    continue
                frame, label, _gain = self.cameras[agent.device_id].next()
                try:
                    outputs, model = agent.infer({"input": frame})
                except (NoModelError, BadInputError, InferenceError):
                    self.traffic_errors += 1
                    continue
                except Exception:  # an agent being stopped mid-call; never kill the traffic thread
                    self.traffic_errors += 1
                    log.debug("traffic to %s failed", agent.device_id, exc_info=True)
                    continue
                out = np.asarray(next(iter(outputs.values())))
                nan = not np.all(np.isfinite(out))
                with self._lock:
                    rec = self.records[agent.device_id]
                    v = rec.by_version.setdefault(model.manifest.version, [0, 0, 0])
                    v[0] += 1
                    v[1] += int(not nan and int(np.argmax(out)) == label)
                    v[2] += int(nan)
            next_t += period
            delay = next_t - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                next_t = time.monotonic()  # fell behind (busy machine): do not burst to catch up


def _quiet_stop(agent) -> None:
    try:
        agent.stop()
    except Exception:
        log.debug("stopping %s failed", agent.device_id, exc_info=True)
