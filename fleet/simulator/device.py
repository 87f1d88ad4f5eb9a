"""One simulated device: the real :class:`edgeops.agent.core.Agent` plus synthetic traffic.

What is real: the agent's persisted install state machine, the TUF client (refresh, target
match, length and sha256 checks) over :class:`~edgeops.fleet.simulator.repocache.CachingTransport`,
DSSE command verification with replay protection, the content-addressed store with its
atomic symlink swap, the self-test with golden vectors, the probation window with shadow runs,
the SQLite telemetry spool with QoS 1 PUBACK deletion, and the device's own MQTT session
(inside a :class:`~edgeops.fleet.simulator.pool.SessionPool`).

What is simulated: the inference runtime (:mod:`~edgeops.fleet.simulator.runtime`), the live
traffic (``rate`` inferences per second of noisy golden inputs, at least ``PROBATION_RATE``
per second during probation so faults on live inputs show within the window), and the
``offline`` fault, which drops the session without DISCONNECT (the broker publishes the
retained offline will) and stops the device for good when it starts on a covered version.

Scheduling (a shortcut for CPU, not for behaviour): :meth:`SimDevice.step` runs the agent's
own ``tick()`` and returns when it next has something to do: every ``BUSY_TICK_S`` while an
update runs (fetch to activation usually pass in one step), every ``PROBATION_TICK_S`` in
probation (the synthetic and live feeds come every 0.2 s and the window closes on time),
and at rest at its next live inference or telemetry flush (the agent's own interval start),
at most ``DeviceTiming.idle_tick_s`` apart. A command, a fetch answer or a (re)connect wakes
the device at once (the pool calls :meth:`SimDevice.wake`). A resting agent has nothing else
to do on a tick: its outbox is pumped by the session pool when rows are added or acknowledged.

Freshness bound: when a command arrives the device sets its transport's ``not_before`` (see
:mod:`~edgeops.fleet.simulator.repocache`), so the TUF refreshes for that command may share a
``timestamp.json`` fetched after the command arrived by another device of the process.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

from edgeops.agent.config import AgentConfig
from edgeops.agent.core import Agent, BadInputError, NoModelError
from edgeops.agent.runtimes import InferenceError
from edgeops.agent.spool import TELEMETRY
from edgeops.agent.statefile import State
from edgeops.profiles import HardwareProfile
from edgeops.protocol import state_topic

from edgeops.fleet.simulator.faults import DeviceFaults
from edgeops.fleet.simulator.pool import PooledSession, SessionPool
from edgeops.fleet.simulator.repocache import CachingTransport, RepoCache
from edgeops.fleet.simulator.runtime import SharedModels

log = logging.getLogger("edgeops.fleet.simulator.device")

BUSY_TICK_S = 0.05  # while an update is under way (fetch .. activate run through in one step)
PROBATION_TICK_S = 0.2  # during probation: synthetic and live feeds come every 0.2 s; the window is time-based
PROBATION_RATE = 5.0  # live inferences per second during probation, at least


@dataclass
class DeviceTiming:
    """How often the device is ticked and fed."""

    rate: float = 1.0  # live inferences per second (0: none)
    # Longest interval between ticks at rest. A resting device is ticked when it has something
    # to do: its next telemetry flush, its next live inference, or at once when a command, a
    # fetch answer or a (re)connect arrives (the pool wakes it); this cap only bounds drift.
    idle_tick_s: float = 5.0


class SimDevice:
    """An Agent with a pooled session, a cached transport and simulated traffic."""

    def __init__(self, config: AgentConfig, pool: SessionPool, models: SharedModels, cache: RepoCache, faults: DeviceFaults, profile: HardwareProfile, timing: DeviceTiming, wake=None):
        from edgeops.agent.mqtt_transport import MqttTransport
        from edgeops.trust.transport import HttpTransport

        self.device_id = config.device_id
        self.faults = faults
        self.timing = timing
        self.rng = random.Random(self.device_id)
        self.session: PooledSession = pool.session(self.device_id, b"", self.rng)
        if config.trust.repository == "mqtt":
            upstream = MqttTransport(self.session, self.device_id, chunk_timeout_s=config.trust.fetch_timeout_s)
        else:
            upstream = HttpTransport(config.trust.repository)
        self.agent = Agent(config, runtime_factory=models.runtime_factory(faults), session=self.session, transport=CachingTransport(cache, upstream), profile=profile, rng=self.rng, tick_s=BUSY_TICK_S)
        if isinstance(upstream, MqttTransport):
            # Fetch responses reach the agent through its session; route them to this transport.
            self.agent._mqtt_transport = upstream  # noqa: SLF001 - the agent routes fetch/resp to it
        self.transport: CachingTransport = self.agent.transport
        self._mark_commands()
        self.session.will_payload = self.agent._state_payload(online=False)  # noqa: SLF001
        self.session.client.will_set(state_topic(self.device_id), self.session.will_payload, qos=1, retain=True)
        self.models = models
        self.dead = False
        self.inferences = 0
        self.errors = 0
        self._next_infer = time.monotonic() + self.rng.uniform(0, 1.0 / timing.rate) if timing.rate > 0 else float("inf")
        self._wake = wake
        self.session.on_wake = self.wake
        self._hook_outbox()

    def _mark_commands(self) -> None:
        """A command's arrival sets the device's freshness bound for shared mutable metadata.

        The TUF refreshes that follow (command keys, the assignment's fetch) may then reuse a
        ``timestamp.json`` or a "no newer root" answer another device of this process asked
        the repository for after this command arrived (see :mod:`.repocache`).
        """
        transport, deliver = self.transport, self.session.on_message

        def on_message(kind: str, payload: bytes) -> None:
            if kind == "cmd":
                transport.not_before = time.monotonic()
            deliver(kind, payload)

        self.session.on_message = on_message

    def _hook_outbox(self) -> None:
        """Pump the outbox when the spool gains a row or the in-flight window drains (see pool doc)."""
        agent, session = self.agent, self.session
        spool, outbox = agent.spool, agent.outbox
        append = spool.append

        def append_and_kick(*args, **kwargs):
            seq = append(*args, **kwargs)
            session.kick()
            return seq

        spool.append = append_and_kick  # instance attribute: this device's spool only
        acked = outbox.acked
        state = {"more": False}

        def acked_and_maybe_kick(mid: int) -> None:
            acked(mid)
            if state["more"] and outbox.inflight() == 0:
                session.kick()

        def pump() -> int:
            before = outbox.inflight()
            n = outbox.pump()
            state["more"] = before + n >= outbox.max_inflight
            return n

        session.on_publish = acked_and_maybe_kick
        session.on_loop = pump

    # -- lifecycle ------------------------------------------------------------------------------
    def open(self) -> None:
        """Recover the persisted state (the agent's recovery table) and connect."""
        self.agent.open()
        self.session.start()

    def close(self) -> None:
        """Stop the session cleanly and close the spool."""
        try:
            self.agent.spool.close()
        except Exception:
            pass

    def wake(self) -> None:
        """Tick soon (a command or a fetch answer arrived)."""
        if self._wake is not None:
            self._wake(self)

    # -- one step -------------------------------------------------------------------------------
    def step(self, now: float) -> float:
        """Tick the agent, feed traffic, apply the offline fault; returns the next due time."""
        if self.dead:
            return float("inf")
        agent = self.agent
        for _ in range(8):  # let a fast install run through several states in one go
            moved = agent.tick()
            if self._offline_now():  # checked after every transition: it must not slip past
                return float("inf")
            if not moved:
                break
        state = agent.persisted.state
        rate = self.timing.rate
        if state is State.PROBATION:
            rate = max(rate, PROBATION_RATE)
        if rate > 0 and now >= self._next_infer:
            self._infer()
            self._next_infer = max(self._next_infer + 1.0 / rate, now - 1.0)
        elif rate > 0 and self._next_infer > now + 1.0 / rate:
            self._next_infer = now + 1.0 / rate  # probation raised the rate
        if state is State.PROBATION:
            return min(now + PROBATION_TICK_S, self._next_infer)
        if agent.machine.busy():
            return now + BUSY_TICK_S
        nxt = now + min(self.timing.idle_tick_s, self._telemetry_due_in())
        return min(nxt, self._next_infer) if rate > 0 else nxt

    def _telemetry_due_in(self) -> float:
        """Seconds until the agent closes its next telemetry interval (0: due now)."""
        return max(0.0, self.agent.next_telemetry_at() - self.agent.clock())

    def _infer(self) -> None:
        model = self.agent.serving
        if model is None:
            return
        inputs = self.models.traffic(model.sha256, model.golden)  # read only on a cache miss
        if not inputs:
            return
        try:
            self.agent.infer(inputs[self.inferences % len(inputs)])
        except (InferenceError, BadInputError, NoModelError):
            self.errors += 1
        self.inferences += 1

    def _offline_now(self) -> bool:
        """The ``offline`` fault: when the device starts on a covered version, it drops off for good."""
        if not self.faults:
            return False
        u = self.agent.persisted.update
        serving = self.agent.serving
        hit = None
        if u is not None and self.agent.machine.busy():
            hit = self.faults.active("offline", u.name, u.version)
        if hit is None and serving is not None:
            hit = self.faults.active("offline", serving.manifest.name, serving.manifest.version)
        if hit is None:
            return False
        log.info("%s: going offline (%s)", self.device_id, hit.text)
        self.dead = True
        self.session.kill()
        return True

    # -- observation ------------------------------------------------------------------------------
    def summary(self) -> dict:
        """State, versions, connection and fault flags (cheap: no SQLite)."""
        a = self.agent
        serving = a.serving
        u = a.persisted.update
        return {
            "device_id": self.device_id,
            "profile": a.profile.name,
            "state": a.persisted.state.value,
            "active": f"{serving.manifest.name}@{serving.manifest.version}" if serving else None,
            "update": f"{u.name}@{u.version}" if u is not None and u.name else None,
            "connected": self.session.connected,
            "offline_fault": self.dead,
            "faults": [r.text for r in self.faults.rules],
            "inferences": a.counters["inferences"],
            "rejected_messages": a.counters["rejected_messages"],
        }

    def telemetry_counts(self) -> dict:
        """Telemetry batches created (seq) and messages still spooled (SQLite reads)."""
        spool = self.agent.spool
        return {"telemetry_created": spool.next_seq(TELEMETRY), "spooled": spool.count()}
