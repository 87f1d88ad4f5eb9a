"""The agent: one device's update state machine, model serving, commands and telemetry.

:class:`Agent` holds no module-level state and installs no signal handlers, so one process
can run many of them (the fleet simulator does). What it talks to is injectable:

- ``runtime_factory``: builds inference runtimes (default: onnxruntime / LiteRT)
- ``clock``: wall-clock seconds (probation windows, telemetry intervals, command expiry)
- ``session``: the broker session (default: :class:`MqttSession` from the config; None = offline)
- ``transport``: the repository transport (default: MQTT or HTTP from the config)
- ``hooks``: ``on_state(state)`` after each persisted transition, ``checkpoint(state, label)`` at
  named points inside the handlers (crash-injection tests pause or mark there)

Drive it with :meth:`start` (threads: main loop, MQTT network loop, inference API) or, for
many agents on one thread, call :meth:`open` once and then :meth:`tick` repeatedly.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeops import __version__
from edgeops.bundle import Manifest
from edgeops.errors import AgentError, BundleError, EdgeopsError
from edgeops.golden import GoldenVectors
from edgeops.profiles import HardwareProfile, load_profile
from edgeops.protocol import DeviceEvent, DeviceState, EventKind, GateResult, TelemetryBatch, VersionRef, events_topic, state_topic, telemetry_topic
from edgeops.trust.errors import TrustError
from edgeops.trust.targets import BUNDLE_SUFFIX, target_path

from edgeops.agent.capture import CaptureRefused, Capturer, Offer, load_rollouts, remember_rollout
from edgeops.agent.capture_spool import CaptureSpool
from edgeops.agent.capture_upload import CaptureUploader
from edgeops.agent.config import AgentConfig, SelfTestConfig
from edgeops.agent.inputs import BadInputError, check_inputs
from edgeops.agent.machine import ROLLBACK_COMMAND, InstallMachine
from edgeops.agent.outbox import OutboxSender
from edgeops.agent.probation import ProbationMonitor
from edgeops.agent.runtimes import InferenceError, Runtime, RuntimeFactory, load_runtime
from edgeops.agent.selftest import SelfTestReport, host_figures, load_golden, run_self_test
from edgeops.agent.spool import EVENT, TELEMETRY, Spool
from edgeops.agent.statefile import RESTING, PersistedState, State, StateFile, UpdateRecord
from edgeops.agent.store import ModelStore
from edgeops.agent.system import CpuMeter, rss_mb, temperature_c
from edgeops.agent.telemetry import LATENCY_BUCKETS_MS, TelemetryCollector

log = logging.getLogger("edgeops.agent")

AUTO = object()  # "build the default from the config"
MAX_QUEUED_COMMANDS = 64


class NoModelError(AgentError):
    """No verified model is being served (nothing installed yet, or a rollback had nothing to go to)."""


@dataclass
class AgentHooks:
    """Optional call-outs for tests and simulators."""

    on_state: Callable[[State], None] | None = None
    checkpoint: Callable[[State, str], None] | None = None


_NOT_READ = object()  # LoadedModel golden vectors not read from disk yet


@dataclass
class LoadedModel:
    """A verified version from the store, loaded in its runtime. ``_golden`` holds its golden
    vectors once read (the self-test hands over the ones it checked), else they are read from
    the store on first use."""

    sha256: str
    manifest: Manifest
    runtime: Runtime
    files_dir: Path
    _golden: GoldenVectors | None | object = field(default=_NOT_READ, repr=False)

    def golden(self) -> GoldenVectors | None:
        """The bundle's golden vectors, read from disk on first use; None when it ships none
        (or they cannot be read: the self-test already judged them)."""
        if self._golden is _NOT_READ:
            try:
                self._golden = load_golden(self.files_dir)
            except EdgeopsError:
                self._golden = None
        return self._golden  # type: ignore[return-value]

    @property
    def golden_in_memory(self) -> bool:
        """Whether the golden vectors are held in memory right now."""
        return self._golden is not _NOT_READ

    def release_golden(self) -> None:
        """Forget the golden vectors (read again on next use). Only probation's synthetic
        traffic needs them, and a 224x224 model's are ~2 MB of arrays."""
        self._golden = _NOT_READ

    def ref(self) -> VersionRef:
        """How the protocol names this version."""
        return VersionRef(name=self.manifest.name, version=self.manifest.version, release=self.manifest.release, sha256=self.sha256)


class Agent:
    """One device agent (see module doc)."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        runtime_factory: RuntimeFactory | None = None,
        clock: Callable[[], float] = time.time,
        session: Any = AUTO,
        transport: Any = AUTO,
        profile: HardwareProfile | None = None,
        hooks: AgentHooks | None = None,
        rng: random.Random | None = None,
        tick_s: float = 0.05,
    ):
        self.config = config
        self.device_id = config.device_id
        self.clock = clock
        self.runtime_factory: RuntimeFactory = runtime_factory or load_runtime
        self.profile = profile or load_profile(config.profile)
        self.hooks = hooks or AgentHooks()
        self.rng = rng or random.Random()
        self.tick_s = tick_s
        self.data_dir = Path(config.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.downloads_dir = self.data_dir / "downloads"
        self.downloads_dir.mkdir(exist_ok=True)
        self.state_file = StateFile(self.data_dir / "state.json")
        self.persisted = PersistedState()
        self.store = ModelStore(self.data_dir / "store", quota_bytes=config.store_quota_bytes)
        self.spool = Spool(self.data_dir / "spool.sqlite", config.telemetry.spool_max_bytes)
        self.telemetry = TelemetryCollector(clock())
        cap = config.capture
        self.capture_spool = CaptureSpool(self.data_dir / "capture.sqlite", cap.spool_max_bytes)
        self.capturer = Capturer(self.data_dir, self.device_id, self.capture_spool, max_budget_bytes_per_day=cap.max_budget_bytes_per_day, config_key=cap.public_key, clock=clock, rng=self.rng)
        self._rollouts_path = self.data_dir / "capture_rollouts.json"
        self._rollouts = load_rollouts(self._rollouts_path)
        self._last_capture_refusal_event = float("-inf")
        self.machine = InstallMachine(self)
        self.counters = {"rejected_messages": 0, "commands_accepted": 0, "inferences": 0, "inference_errors": 0}
        self._rejected_since_batch = 0
        self._counter_lock = threading.Lock()
        self._commands: queue.Queue[bytes] = queue.Queue()
        self._serving: LoadedModel | None = None
        self._staged: LoadedModel | None = None
        self._shadow: LoadedModel | None = None
        self._probation: ProbationMonitor | None = None
        self._probation_sha: str | None = None
        self._last_batch = clock()
        self._last_synthetic = 0.0
        self._state_dirty = True
        self._stop = threading.Event()
        # Set by anything the main loop should react to at once (a command, a watched inference,
        # stop); otherwise it ticks every tick_s. Without it a command or a NaN waited up to tick_s
        # (bench/agent.py: 32-41 ms of every update's command phase).
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._api = None
        self._cpu = CpuMeter()
        self._opened = False

        from edgeops.agent.mqtt_transport import MqttTransport
        from edgeops.agent.session import MqttSession

        if session is AUTO:
            session = MqttSession(self.device_id, config.broker, self._state_payload(online=False)) if config.broker else None
        self.session = session
        self.outbox = OutboxSender(self.spool, session, config.telemetry.max_inflight, config.telemetry.resend_after_s) if session else None
        self.uploader = CaptureUploader(self.capture_spool, session, self.device_id, cap.max_inflight, cap.resend_after_s) if session else None
        if transport is AUTO:
            if config.trust.repository == "mqtt":
                if session is None:
                    raise AgentError(f"{self.device_id}: trust.repository = 'mqtt' needs a broker session")
                transport = MqttTransport(session, self.device_id, chunk_timeout_s=config.trust.fetch_timeout_s)
            else:
                from edgeops.trust.transport import HttpTransport

                transport = HttpTransport(config.trust.repository)
        self.transport = transport
        self._mqtt_transport = transport if isinstance(transport, MqttTransport) else None
        if session is not None:
            session.on_message = self._on_message
            session.on_connect = self._on_connect
            session.on_publish = self.outbox.acked
            session.on_loop = self._pump

        from edgeops.trust.floor import ReleaseFloor

        if config.trust.metadata_worker:
            from edgeops.trust.worker import IsolatedTrustClient

            self.trust = IsolatedTrustClient(self.data_dir / "tuf", transport, root=config.trust.root)
        else:  # many agents in one process (the fleet simulator): one TUF client each, in-process
            from edgeops.trust.client import TrustClient

            self.trust = TrustClient(self.data_dir / "tuf", transport, root=config.trust.root)
        self.floor = ReleaseFloor(self.data_dir / "release_floor.json")
        self._verifier = None

    # -- lifecycle -----------------------------------------------------------------------------
    def open(self) -> "Agent":
        """Load the persisted state, apply the recovery table and serve the current version."""
        if self._opened:
            return self
        self.persisted = self.state_file.load()
        for partial in self.downloads_dir.glob(".*.partial"):
            partial.unlink(missing_ok=True)
        try:
            self.serve_current()
        except Exception as e:  # the machine's recovery decides what to do; never die here
            log.error("%s: cannot serve the current version at start-up: %s", self.device_id, e)
        resume = self.machine.recover()
        self.emit(EventKind.AGENT_STARTED, detail=f"resuming in {resume.value}")
        self._opened = True
        return self

    def start(self) -> "Agent":
        """Open, then start the MQTT session, the inference API and the main loop thread."""
        self.open()
        if self.session is not None:
            self.session.start()
        if self.config.api.listen:
            from edgeops.agent.api import InferenceServer

            self._api = InferenceServer(self, self.config.api.listen).start()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"agent-{self.device_id}", daemon=True)
        self._thread.start()
        return self

    @property
    def api_address(self) -> str | None:
        """Where the inference API listens (host:port or unix:path), once started."""
        return self._api.address if self._api else None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                moved = self.tick()
            except Exception:
                log.exception("%s: main loop iteration failed", self.device_id)
                moved = False
            if not moved:
                self._wake.wait(self.tick_s)
                self._wake.clear()

    def stop(self) -> None:
        """Stop threads; publish online=false (retained) when connected."""
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=30)
        if self._api:
            self._api.stop()
        if self.session is not None:
            if self.session.connected:
                self.session.publish(state_topic(self.device_id), self._state_payload(online=False), qos=1, retain=True)
                time.sleep(0.1)
            self.session.stop()
        self.spool.close()
        self.capture_spool.close()

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Block until :meth:`stop` is called."""
        return self._stop.wait(timeout)

    # -- main loop -----------------------------------------------------------------------------
    def tick(self) -> bool:
        """One iteration: commands, one state handler, synthetic traffic, telemetry, state publish."""
        while True:
            try:
                payload = self._commands.get_nowait()
            except queue.Empty:
                break
            self.handle_command(payload)
        moved = self.machine.step()
        self._synthetic_traffic()
        if self.clock() >= self.next_telemetry_at():
            self.flush_telemetry()
        if self._state_dirty:
            self.publish_state()
        return moved

    def next_telemetry_at(self) -> float:
        """When (on this agent's clock) the current telemetry interval closes."""
        return self._last_batch + self.config.telemetry.interval_s

    def run_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Tick on this thread until ``predicate()`` holds (tests and simulators)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            if not self.tick():
                time.sleep(self.tick_s)
        return predicate()

    # -- state ---------------------------------------------------------------------------------
    def save_state(self) -> None:
        """Persist the state file atomically."""
        self.state_file.save(self.persisted)

    def on_transition(self, old: State, new: State) -> None:
        """Called by the machine after each persisted transition."""
        self._state_dirty = True
        if self.hooks.on_state:
            self.hooks.on_state(new)

    def checkpoint(self, state: State, label: str) -> None:
        """A named point inside a handler (for crash-injection tests)."""
        if self.hooks.checkpoint:
            self.hooks.checkpoint(state, label)

    @property
    def max_probation_restarts(self) -> int:
        """Restarts tolerated during one probation window (``probation.max_restarts``)."""
        return self.config.probation.max_restarts

    def wait_before_retry(self, attempt: int) -> None:
        """Back off before retrying a fetch (interrupted by stop)."""
        self._stop.wait(min(30.0, 0.5 * 2**attempt) * self.rng.uniform(0.5, 1.0))

    # -- store and serving ------------------------------------------------------------------------
    def download_path(self, sha256: str) -> Path:
        """Where a bundle is downloaded to."""
        return self.downloads_dir / f"{sha256}{BUNDLE_SUFFIX}"

    def discard_download(self, sha256: str) -> None:
        """Delete a downloaded bundle file."""
        self.download_path(sha256).unlink(missing_ok=True)

    def _load(self, sha256: str) -> LoadedModel:
        # A version loaded from disk by a fresh process (start-up, a restart in probation) is
        # re-hashed: it was verified on its way into the store, but storage can rot while the
        # device is off. The install path's self-test loads what the pass has just verified.
        manifest = self.store.verify(sha256)  # complete and matching its manifest, or StoreError
        files = self.store.files_dir(sha256)
        runtime = self.runtime_factory(files / manifest.artifact, manifest, list(self.profile.runtime.providers), self.profile.runtime.threads)
        return LoadedModel(sha256, manifest, runtime, files)

    def serve_current(self) -> None:
        """Serve what the ``current`` link names (verified), or nothing when there is none."""
        sha = self.store.current()
        if sha is None:
            serving = None
        elif self._serving is not None and self._serving.sha256 == sha:
            serving = self._serving
        elif self._staged is not None and self._staged.sha256 == sha:
            serving = self._staged
        elif self._shadow is not None and self._shadow.sha256 == sha:
            serving = self._shadow  # a rollback: the previous version is loaded for shadow runs
        else:
            serving = self._load(sha)
        closed = None
        if serving is not self._serving and self.telemetry.pending():
            # Close the interval at the switch: a batch is labelled with one active version, and
            # the console compares versions by these batches (a rollout's latency and error
            # gates). It is spooled after the switch, so the disk write does not delay serving.
            closed = self._close_interval()
        self._serving = serving
        self._staged = None
        self._state_dirty = True
        if closed is not None:
            self._spool_interval(closed)

    def self_test(self, sha256: str, keep_runtime: bool = False, settings: SelfTestConfig | None = None) -> SelfTestReport:
        """Self-test a stored version (see :mod:`edgeops.agent.selftest`); ``settings`` default to the config's.

        The files are not hashed again: the store holds only versions whose every file the one
        verifying pass checked on its way in (complete by construction, read-only)."""
        manifest = self.store.manifest(sha256)
        files = self.store.files_dir(sha256)
        settings = settings or self.config.self_test
        report = run_self_test(files, manifest, settings, self.runtime_factory, list(self.profile.runtime.providers), self.profile.runtime.threads, keep_runtime=keep_runtime)
        if keep_runtime and report.runtime is not None:
            # probation's synthetic traffic uses the golden vectors the self-test just read:
            # reading golden.json again would briefly hold its text and JSON (~3.5x the arrays)
            # on top of the session, the agent's peak while installing
            self._staged = LoadedModel(sha256, manifest, report.runtime, files, _golden=report.golden)
        return report

    def probation_monitor(self) -> ProbationMonitor:
        """The monitor of the current probation window (created on first use, also after a restart)."""
        u = self.persisted.update
        assert u is not None
        if self._probation is None or self._probation_sha != u.sha256:
            prev = self.store.previous()
            shadow = None
            if prev and prev != u.sha256:
                if self._serving is not None and self._serving.sha256 == prev:
                    # Activation opens the window while the old version still serves: keep that
                    # session for shadow runs instead of loading a second copy from disk (one
                    # model less at peak, ~90 ms less between swap and serving for 20 MB).
                    shadow = self._serving
                else:  # after a restart in probation
                    try:
                        shadow = self._load(prev)
                    except Exception as e:  # no shadow: agreement/relative latency gates are skipped
                        log.warning("%s: cannot load previous version for shadow runs: %s", self.device_id, e)
            manifest = self.store.manifest(u.sha256)
            now = self.clock()
            self._shadow = shadow
            self._probation = ProbationMonitor(self.config.probation, manifest.budgets.latency_p95_ms, manifest.task, started_at=now, has_previous=shadow is not None)
            self._probation_sha = u.sha256
            u.probation_started = now
            self.save_state()
        return self._probation

    def end_probation(self) -> None:
        """Forget the probation window, the shadow model, and the golden vectors its synthetic
        traffic used."""
        for model in (self._serving, self._shadow):
            if model is not None:
                model.release_golden()
        self._probation = None
        self._probation_sha = None
        self._shadow = None

    # -- inference ------------------------------------------------------------------------------
    @property
    def serving(self) -> LoadedModel | None:
        """The version being served."""
        return self._serving

    def infer(self, inputs: dict[str, np.ndarray], synthetic: bool = False) -> tuple[dict[str, np.ndarray], LoadedModel]:
        """Run one inference on the served version; feeds telemetry and probation.

        Raises NoModelError (nothing served), BadInputError (inputs do not fit), InferenceError.
        """
        model = self._serving
        if model is None:
            raise NoModelError(f"{self.device_id}: no model is being served yet")
        # the caller's mistakes (names, dtypes, shapes, NaN/Inf) are refused here, never counted as model errors
        check_inputs(model.manifest.inputs, inputs, model.manifest.name, fixed_dims=model.manifest.runtime == "onnxruntime")
        monitor = self._probation if self._probation_sha == model.sha256 else None
        old = None  # the shadow model's outputs, when it ran on these inputs
        t0 = time.perf_counter()
        try:
            outputs = model.runtime.run(inputs)
        except InferenceError:
            with self._counter_lock:
                self.counters["inferences"] += 1
                self.counters["inference_errors"] += 1
            self.telemetry.record(None, None)
            if monitor is not None:
                monitor.record(None, None)
                self._wake.set()  # probation gates are evaluated on the main loop
            raise
        latency_ms = (time.perf_counter() - t0) * 1000.0
        with self._counter_lock:
            self.counters["inferences"] += 1
        # synthetic traffic is the bundle's own golden inputs: kept out of the drift sketches
        self.telemetry.record(latency_ms, outputs, None if synthetic else inputs, model.manifest.monitoring)
        if monitor is not None:
            monitor.record(latency_ms, outputs)
            self._wake.set()  # probation gates are evaluated on the main loop: at once, not next tick
            shadow = self._shadow
            if shadow is not None and (synthetic or self.rng.random() < self.config.api.shadow_sample_rate or (not synthetic and self.capturer.wants_shadow())):
                t1 = time.perf_counter()
                try:
                    old = shadow.runtime.run(inputs)
                    monitor.record_shadow(outputs, old, (time.perf_counter() - t1) * 1000.0)
                except InferenceError:
                    old = None
                    monitor.record_shadow(outputs, None, None)
        if not synthetic and self.capturer.policy is not None:
            self.capturer.offer(
                Offer(inputs, outputs, model.manifest.name, model.manifest.version, model.sha256, self._rollouts.get(model.sha256), old if monitor is not None else None),
                self._drift_level,
            )
        return outputs, model

    def _drift_level(self) -> int:
        """The drift level (0 ok/insufficient, 1 warn, 2 alert) of this interval's sketches so far
        against the served bundle's reference, at the thresholds the capture policy carries."""
        from edgeops import sketch as sk

        policy = self.capturer.active()
        reference, states = self.telemetry.sketch_states()
        if policy is None or reference is None or not states:
            return 0
        t = policy.triggers
        level = sk.level(sk.score(reference, states), t.warn_psi, t.alert_psi, t.alpha, t.min_samples)
        return {"warn": 1, "alert": 2}.get(level, 0)

    def _synthetic_traffic(self) -> None:
        """During probation, run golden inputs when live traffic is short of the window."""
        monitor, model = self._probation, self._serving
        interval = self.config.probation.synthetic_interval_s
        if monitor is None or model is None or interval <= 0 or self._probation_sha != model.sha256:
            return
        if monitor.count >= self.config.probation.window_count:
            return
        now = self.clock()
        if now - self._last_synthetic < interval:
            return
        self._last_synthetic = now
        golden = model.golden()
        for inputs, _ in golden.cases if golden else []:
            try:
                self.infer(inputs, synthetic=True)
            except (InferenceError, BadInputError, NoModelError):
                pass  # counted by infer()

    # -- commands -------------------------------------------------------------------------------
    def submit(self, envelope: bytes) -> None:
        """Queue a command envelope (thread-safe); it is verified on the main loop."""
        if self._commands.qsize() >= MAX_QUEUED_COMMANDS:
            self._count_rejected("command queue full")
            return
        self._commands.put(envelope)
        self._wake.set()

    def _pump(self) -> None:
        """The session loop's work: spooled telemetry and events, then captured samples."""
        self.outbox.pump()
        if self.uploader is not None:
            self.uploader.pump()

    def _count_rejected(self, why: str) -> None:
        with self._counter_lock:
            self.counters["rejected_messages"] += 1
            self._rejected_since_batch += 1
        log.warning("%s: dropped a message: %s", self.device_id, why)

    def _on_message(self, kind: str, payload: bytes) -> None:
        if kind == "cmd":
            self.submit(payload)
        elif kind == "capture/ack" and self.uploader is not None:
            if not self.uploader.handle_ack(payload):
                self._count_rejected("malformed capture ack")
        elif kind == "fetch/resp" and self._mqtt_transport is not None:
            before = self._mqtt_transport.malformed
            self._mqtt_transport.handle_response(payload)
            if self._mqtt_transport.malformed != before:
                self._count_rejected("malformed fetch response")
        else:
            self._count_rejected(f"unexpected message on {kind}")

    def verifier(self):
        """The command verifier (keys from the config, or from the trusted TUF root)."""
        if self._verifier is None:
            from edgeops.trust.commands import CommandVerifier
            from edgeops.trust.pubkeys import load_verify_keys

            keys = load_verify_keys(self.config.trust.command_keys) if self.config.trust.command_keys else self.trust.command_keys()
            self._verifier = CommandVerifier(self.device_id, keys, self.data_dir / "command_seq.json", cohorts=self.config.cohorts)
        return self._verifier

    def handle_command(self, envelope: bytes) -> None:
        """Verify a DSSE envelope and act on its command; anything that fails is counted and dropped."""
        try:
            cmd = self.verifier().verify(envelope, now=self.clock())
        except TrustError as e:
            self._count_rejected(f"{type(e).__name__}: {e}")
            self._capture_refusal_event(envelope, e)
            return
        with self._counter_lock:
            self.counters["commands_accepted"] += 1
        self.persisted.last_command_seq = max(self.persisted.last_command_seq, cmd.seq)
        self._state_dirty = True
        handler = {"assign": self._cmd_assign, "rollback": self._cmd_rollback, "self_test": self._cmd_self_test, "report": self._cmd_report, "capture": self._cmd_capture}[cmd.kind]
        handler(cmd)

    CAPTURE_REFUSAL_EVENT_S = 10.0  # at most one event this often for refused capture envelopes (each is counted)

    def _capture_refusal_event(self, envelope: bytes, error: TrustError) -> None:
        """An event naming why a capture command was refused before it was accepted (unsigned,
        expired, for another device, malformed). Which command it was is read from the
        *unverified* payload, only to say so: nothing in it is acted on, and the events are rate
        limited so a flood of forged envelopes cannot fill the spool."""
        import base64 as b64

        try:
            doc = json.loads(envelope)
            payload = json.loads(b64.b64decode(doc["payload"]))
            if payload.get("kind") != "capture":
                return
            command_id = str(payload.get("command_id", ""))[:128] or None
        except Exception:  # noqa: BLE001 (not even a readable envelope: counted already)
            return
        now = time.monotonic()
        if now - self._last_capture_refusal_event < self.CAPTURE_REFUSAL_EVENT_S:
            return
        self._last_capture_refusal_event = now
        self.emit(EventKind.COMMAND_REJECTED, command_id=command_id, detail=f"capture refused: {type(error).__name__}: {error}"[:1000])

    def _cmd_capture(self, cmd) -> None:
        """Turn data capture on (or off) with the command's policy; refused with an event naming why."""
        try:
            policy = self.capturer.check(cmd.capture, self.clock())
        except CaptureRefused as e:
            with self._counter_lock:
                self.counters["rejected_messages"] += 1
                self._rejected_since_batch += 1
            return self._refuse(cmd, f"capture refused: {e}")
        self.capturer.apply(policy)
        if policy.enabled:
            t = policy.triggers
            what = ", ".join(k for k, on in (("nonfinite", t.nonfinite), (f"min_confidence {t.min_confidence}", t.min_confidence is not None), ("shadow_disagreement", t.shadow_disagreement), (f"drift {t.drift}", t.drift), (f"random {t.random_share}", t.random_share > 0)) if on) or "no trigger"
            detail = f"capture on: policy {policy.policy_id} ({what}; rate {policy.sample_rate}, budget {policy.budget_bytes_per_day} B/day, until {policy.until:.0f})"
        else:
            detail = f"capture off: policy {policy.policy_id}"
        self.emit(EventKind.COMMAND_ACCEPTED, command_id=cmd.command_id, detail=detail)

    def _refuse(self, cmd, why: str) -> None:
        self.emit(EventKind.COMMAND_REJECTED, command_id=cmd.command_id, detail=why, target=cmd.bundle)

    def _cmd_assign(self, cmd) -> None:
        if not (cmd.target_name and cmd.target_sha256 and cmd.target_length is not None):
            return self._refuse(cmd, "assign needs target_name, target_sha256 and target_length")
        u = self.persisted.update
        if self.machine.busy():
            if u is not None and u.sha256 == cmd.target_sha256:
                return  # the same update again: already under way
            return self._refuse(cmd, f"busy with {u.target_name if u else '?'} in state {self.machine.state.value}; send the assignment again when it has finished")
        if cmd.target_sha256 == self.store.current() and self.machine.state is not State.FAILED:
            self.emit(EventKind.COMMAND_ACCEPTED, command_id=cmd.command_id, target=cmd.bundle, detail="already active")
            return
        if self.persisted.failed.get(cmd.target_sha256) == cmd.command_id:
            return self._refuse(cmd, "this version failed on this device; re-assign it with a new command to try again")
        self.persisted.failed.pop(cmd.target_sha256, None)
        if cmd.rollout_id:
            self._rollouts = remember_rollout(self._rollouts_path, cmd.target_sha256, cmd.rollout_id)
        b = cmd.bundle
        self.persisted.update = UpdateRecord(
            command_id=cmd.command_id,
            command_seq=cmd.seq,
            target_name=cmd.target_name,
            sha256=cmd.target_sha256,
            length=cmd.target_length,
            name=b.name if b else None,
            version=b.version if b else None,
            release=b.release if b else None,
            reason=cmd.reason,
        )
        self.emit(EventKind.COMMAND_ACCEPTED, detail=f"assign {cmd.target_name}")
        self.machine.transition(State.FETCHING)

    def _cmd_rollback(self, cmd) -> None:
        state = self.machine.state
        u = self.persisted.update
        if state is State.PROBATION and u is not None:
            u.reason = ROLLBACK_COMMAND
            u.rollback_reason = f"rollback ordered by command {cmd.command_id}"
            u.gates = []
            self.emit(EventKind.COMMAND_ACCEPTED, command_id=cmd.command_id, detail="rollback during probation")
            self.machine.transition(State.ROLLING_BACK)
            return
        current, previous = self.store.current(), self.store.previous()
        if state not in RESTING:
            return self._refuse(cmd, f"cannot roll back while {state.value}")
        if not current or not previous:
            return self._refuse(cmd, "nothing to roll back to: no previous version is kept on this device")
        m = self.store.manifest(current)
        self.persisted.update = UpdateRecord(
            command_id=cmd.command_id,
            command_seq=cmd.seq,
            target_name=target_path(m.name, m.version),
            sha256=current,
            length=0,
            name=m.name,
            version=m.version,
            release=m.release,
            previous_sha256=previous,
            reason=ROLLBACK_COMMAND,
            rollback_reason=f"rollback ordered by command {cmd.command_id}",
        )
        self.emit(EventKind.COMMAND_ACCEPTED, command_id=cmd.command_id, detail="rollback")
        self.machine.transition(State.ROLLING_BACK)

    def _cmd_self_test(self, cmd) -> None:
        """Fetch, verify, store and self-test a target without activating it; report the figures.

        Nothing here touches the serving model or the install state machine: the version is
        loaded in its own runtime, tested and closed, and the store keeps it only if it is
        already current or previous. The answer is one event carrying ``cmd.command_id``:

        - ``command_rejected``: busy with an update, or the command lacks its target;
        - ``bundle_rejected``: the target or bundle failed TUF/bundle verification, or was
          built for another profile or runtime;
        - ``install_failed``: the repository was unreachable or the store is full;
        - ``self_test_passed`` / ``self_test_failed``: every gate, and a JSON ``detail`` of figures
          (load time, latency p50/p95/p99 over ``runs`` inferences, memory, CPU MHz, temperature).
        """
        from edgeops.agent.fetch import Assignment, compatibility_check, fetch_verified
        from edgeops.agent.store import StoreError
        from edgeops.trust.errors import RepositoryUnavailableError

        if self.machine.busy():
            return self._refuse(cmd, f"busy in state {self.machine.state.value}; run the self-test when the update has finished")
        sha = cmd.target_sha256
        if not (sha and cmd.target_name and cmd.target_length is not None):
            return self._refuse(cmd, "self_test needs target_name, target_sha256 and target_length")
        # ``runs`` was bounded (1..MAX_SELF_TEST_RUNS) when the envelope was validated; absent: the config's.
        settings = self.config.self_test if cmd.runs is None else self.config.self_test.replace(latency_runs=cmd.runs)
        target = cmd.bundle

        def answer(kind: EventKind, detail: str) -> None:
            self.emit(kind, command_id=cmd.command_id, target=target, detail=detail[:1000])

        try:
            if not self.store.has(sha):
                try:
                    # The install path's steps (edgeops.agent.fetch), without the release floor:
                    # a self-test activates nothing.
                    path = self.download_path(sha)
                    record = fetch_verified(self.trust, Assignment(cmd.command_id, cmd.target_name, sha, cmd.target_length), self.profile, path)
                    self.store.install(path, sha, record, check=compatibility_check(self.profile))
                except RepositoryUnavailableError as e:
                    return answer(EventKind.INSTALL_FAILED, f"repository unreachable: {e}")
                except (TrustError, BundleError) as e:
                    return answer(EventKind.BUNDLE_REJECTED, f"{type(e).__name__}: {e}")
                except StoreError as e:
                    return answer(EventKind.INSTALL_FAILED, f"{type(e).__name__}: {e}")
                finally:
                    self.discard_download(sha)
            m = self.store.manifest(sha)
            target = VersionRef(name=m.name, version=m.version, release=m.release, sha256=sha)
            report = self.self_test(sha, settings=settings)
        except EdgeopsError as e:
            return answer(EventKind.SELF_TEST_FAILED, f"{type(e).__name__}: {e}")
        finally:
            self.store.gc()
        figures = {
            "command": "self_test",
            "passed": report.passed,
            "profile": self.profile.name,
            "runtime": m.runtime,
            "threads": self.profile.runtime.threads,
            "runs": settings.latency_runs,
            "timed_runs": report.latency_runs,
            "self_test_s": report.seconds,
            "load_s": report.load_s,
            "latency_p50_ms": report.latency_p50_ms,
            "latency_p95_ms": report.latency_p95_ms,
            "latency_p99_ms": report.latency_p99_ms,
            "latency_budget_p95_ms": m.budgets.latency_p95_ms,
            "latency_factor": settings.latency_factor,
            "memory_mb": report.memory_mb,
            "agent_version": __version__,
            **host_figures(),
        }
        kind = EventKind.SELF_TEST_PASSED if report.passed else EventKind.SELF_TEST_FAILED
        self.emit(kind, command_id=cmd.command_id, target=target, gates=report.gates, detail=json.dumps(figures, sort_keys=True))

    def _cmd_report(self, cmd) -> None:
        self.flush_telemetry()
        self.publish_state()
        if self.outbox is not None:
            self.outbox.pump()

    # -- events, state and telemetry out ---------------------------------------------------------------
    def _update_ref(self) -> VersionRef | None:
        u = self.persisted.update
        if u is None:
            return None
        return VersionRef(name=u.name or u.target_name, version=u.version or "", release=u.release or 0, sha256=u.sha256)

    def emit(self, kind: EventKind, *, gates: list[GateResult] | None = None, detail: str = "", target: VersionRef | None = None, command_id: str | None = None) -> int:
        """Spool a DeviceEvent (delivered at least once, QoS 1); returns its seq."""
        u = self.persisted.update
        target = target or self._update_ref()
        command_id = command_id or (u.command_id if u else None)
        ts = self.clock()

        def build(seq: int, dropped: dict) -> bytes:
            return DeviceEvent(device_id=self.device_id, seq=seq, kind=kind, ts=ts, target=target, command_id=command_id, gates=gates or [], detail=detail).to_json().encode()

        log.info("%s: event %s %s", self.device_id, kind.value, detail[:200])
        return self.spool.append(EVENT, events_topic(self.device_id), build)

    def _version_ref(self, sha: str | None) -> VersionRef | None:
        if not sha:
            return None
        if self._serving is not None and self._serving.sha256 == sha:
            return self._serving.ref()
        try:
            m = self.store.manifest(sha)
        except EdgeopsError:
            return None
        return VersionRef(name=m.name, version=m.version, release=m.release, sha256=sha)

    def device_state(self, online: bool = True) -> DeviceState:
        """The retained DeviceState message."""
        busy = self.machine.busy()
        return DeviceState(
            device_id=self.device_id,
            online=online,
            state=self.persisted.state.value,
            profile=self.profile.name,
            active=self._serving.ref() if self._serving else None,
            previous=self._version_ref(self.store.previous()),
            pending=self._update_ref() if busy else None,
            last_command_seq=self.persisted.last_command_seq,
            agent_version=__version__,
            tags=dict(self.config.tags),
            ts=self.clock(),
        )

    def _state_payload(self, online: bool) -> bytes:
        if not hasattr(self, "machine"):
            return DeviceState(device_id=self.device_id, online=online, agent_version=__version__).to_json().encode()
        return self.device_state(online).to_json().encode()

    def publish_state(self) -> bool:
        """Publish the retained state now (True when handed to the broker)."""
        if self.session is None or not self.session.connected:
            return False
        self._state_dirty = False
        mid = self.session.publish(state_topic(self.device_id), self._state_payload(online=True), qos=1, retain=True)
        if mid is None:
            self._state_dirty = True
        return mid is not None

    def _on_connect(self) -> None:
        self._state_dirty = True  # the main loop publishes it
        if self.uploader is not None:
            self.uploader.reset()  # what was in the air may be lost with the old connection: send it again

    def flush_telemetry(self) -> int:
        """Close the current interval into a TelemetryBatch and spool it; returns its seq."""
        return self._spool_interval(self._close_interval())

    def _close_interval(self) -> dict:
        """Drain the interval's metrics into a batch body labelled with the version serving now (in memory)."""
        now = self.clock()
        self._last_batch = now
        m = self.telemetry.drain(now)
        with self._counter_lock:
            rejected, self._rejected_since_batch = self._rejected_since_batch, 0
        monitor = self._probation
        captured, capture_dropped, over_budget = self.capturer.drain_counts()
        if capture_dropped:
            self.emit(EventKind.CAPTURE_DROPPED, detail=f"capture spool bound of {self.capture_spool.max_bytes} bytes reached: dropped the oldest {capture_dropped} sample(s)")
        return dict(
            captured=captured,
            capture_dropped=capture_dropped,
            capture_over_budget=over_budget,
            device_id=self.device_id,
            ts_start=m.ts_start,
            ts_end=m.ts_end,
            active=self._serving.ref() if self._serving else None,
            state=self.persisted.state.value,
            inference_count=m.inference_count,
            error_count=m.error_count,
            nan_count=m.nan_count,
            latency_buckets_ms=list(LATENCY_BUCKETS_MS),
            latency_counts=m.latency_counts,
            latency_p50_ms=m.latency_p50_ms,
            latency_p95_ms=m.latency_p95_ms,
            agreement=monitor.agreement() if monitor else None,
            outputs=m.outputs,
            sketches=m.sketches,
            cpu_percent=self._cpu.percent(),
            memory_rss_mb=round(rss_mb(), 2),
            temperature_c=temperature_c(),
            rejected_messages=rejected,
        )

    def _spool_interval(self, base: dict) -> int:
        """Number a closed interval and append it to the spool (durable); returns its seq."""
        seen: dict[str, int] = {}

        def build(seq: int, dropped: dict) -> bytes:
            seen.update(dropped)
            return TelemetryBatch(seq=seq, dropped_batches=dropped.get(TELEMETRY, 0), **base).to_json().encode()

        seq = self.spool.append(TELEMETRY, telemetry_topic(self.device_id), build, report_drops=True)
        if seen.get(TELEMETRY) or seen.get(EVENT):
            self.emit(EventKind.TELEMETRY_DROPPED, detail=f"spool bound of {self.spool.max_bytes} bytes reached: dropped the oldest {seen.get(TELEMETRY, 0)} telemetry batch(es) and {seen.get(EVENT, 0)} event(s)")
        return seq

    # -- status ---------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Everything `edgeops agent status` and GET /v1/status show."""
        u = self.persisted.update
        with self._counter_lock:
            counters = dict(self.counters)
        return {
            "device_id": self.device_id,
            "state": self.persisted.state.value,
            "profile": self.profile.name,
            "active": self._serving.ref().to_dict() if self._serving else None,
            "previous": (r.to_dict() if (r := self._version_ref(self.store.previous())) else None),
            "update": u.to_dict() if u else None,
            "failed_versions": sorted(self.persisted.failed),
            "connected": bool(self.session and self.session.connected),
            "spool": {"messages": self.spool.count(), "bytes": self.spool.size_bytes(), "max_bytes": self.spool.max_bytes, "dropped_unreported": self.spool.dropped(TELEMETRY)},
            "counters": counters,
            "capture": {
                "policy": p.to_dict() if (p := self.capturer.active()) else None,
                "spooled": self.capture_spool.count(),
                "spool_bytes": self.capture_spool.size_bytes(),
                "spool_max_bytes": self.capture_spool.max_bytes,
                "dropped_unreported": self.capture_spool.dropped(),
                "captured": self.capturer.total_captured,
                "uploaded": self.uploader.stored if self.uploader else 0,
            },
            "probation": {"inferences": self._probation.count, "agreement": self._probation.agreement()} if self._probation else None,
            "agent_version": __version__,
        }
