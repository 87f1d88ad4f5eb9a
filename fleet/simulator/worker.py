"""One simulator process: its devices, one session pool, a few tick threads.

Threads: the :class:`~edgeops.fleet.simulator.pool.SessionPool` network thread (every
device's MQTT I/O), and ``threads`` tick threads, each owning a slice of the devices and
ticking them from a due-time heap (when each device next has something to do, see
:meth:`~edgeops.fleet.simulator.device.SimDevice.step`, and at once when a message arrives
for it). Several tick threads keep one blocking step (a device waiting for a fetch answer, a
``slow`` fault sleeping in inference) from stalling the rest of the process; fewer threads
mean fewer GIL hand-overs inside the agents' latency timers (the benchmark uses 2).
"""

from __future__ import annotations

import collections
import heapq
import logging
import threading
import time
from collections import Counter
from pathlib import Path

from edgeops.agent.config import parse_config
from edgeops.profiles import load_profile

from edgeops.fleet.simulator import verifymemo
from edgeops.fleet.simulator.device import DeviceTiming, SimDevice
from edgeops.fleet.simulator.faults import parse_faults
from edgeops.fleet.simulator.pool import SessionPool
from edgeops.fleet.simulator.repocache import RepoCache
from edgeops.fleet.simulator.runtime import SharedModels
from edgeops.fleet.simulator.settings import SimSettings

log = logging.getLogger("edgeops.fleet.simulator.worker")


class _TickThread:
    """Ticks its devices in due-time order; a device's message moves it to the front."""

    def __init__(self, name: str):
        self.name = name
        self.devices: list[SimDevice] = []
        self._heap: list[tuple[float, int, SimDevice]] = []
        self._n = 0
        self._woken: collections.deque = collections.deque()
        self._event = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.steps = 0
        self.errors = 0

    def add(self, d: SimDevice) -> None:
        self.devices.append(d)
        self._push(time.monotonic(), d)

    def _push(self, due: float, d: SimDevice) -> None:
        self._n += 1
        heapq.heappush(self._heap, (due, self._n, d))

    def wake(self, d: SimDevice) -> None:
        """Called from the pool thread: tick ``d`` now."""
        self._woken.append(d)
        self._event.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._event.set()
        if self._thread:
            self._thread.join(30)

    def _step(self, d: SimDevice, now: float) -> float:
        self.steps += 1
        try:
            return d.step(now)
        except Exception:
            self.errors += 1
            log.exception("%s: simulator step failed", d.device_id)
            return now + 1.0

    def _run(self) -> None:
        # Each device is in the heap once; woken devices are stepped now and re-pushed, and
        # their stale heap entry is skipped by comparing against the due time we keep.
        due: dict[int, float] = {id(d): t for t, _, d in self._heap}
        while not self._stop.is_set():
            now = time.monotonic()
            while self._woken:
                d = self._woken.popleft()
                nxt = self._step(d, now)
                due[id(d)] = nxt
                if nxt != float("inf"):
                    self._push(nxt, d)
            while self._heap and self._heap[0][0] <= now:
                t, _, d = heapq.heappop(self._heap)
                if due.get(id(d)) != t:
                    continue  # superseded by a wake-up
                nxt = self._step(d, time.monotonic())
                due[id(d)] = nxt
                if nxt != float("inf"):
                    self._push(nxt, d)
                if self._woken:
                    break
            wait = (self._heap[0][0] - time.monotonic()) if self._heap else 0.5
            if wait > 0 and not self._woken:
                self._event.wait(min(wait, 0.5))
                self._event.clear()


def _copy_counter(c: Counter) -> dict:
    # The pool thread may add a key while we copy; retry rather than fail a stats call.
    for _ in range(5):
        try:
            return dict(c)
        except RuntimeError:
            continue
    return {}


class SimWorker:
    """The devices of one simulator process (see module doc)."""

    def __init__(self, settings: SimSettings, device_ids: list[str]):
        self.settings = settings
        self.device_ids = device_ids
        self.devices: list[SimDevice] = []
        self.pool: SessionPool | None = None
        self.models = SharedModels(settings.runtime)
        self.cache = RepoCache(metadata_ttl_s=settings.metadata_ttl_s)
        self._threads: list[_TickThread] = []
        self.started_at = 0.0

    def start(self) -> "SimWorker":
        """Create and open every device, connect them (paced), start ticking."""
        s = self.settings
        plan = parse_faults(s.faults)
        profiles = {name: load_profile(name) for name in s.all_profiles()}  # errors before any device starts
        base = Path(s.workdir)
        base.mkdir(parents=True, exist_ok=True)
        first = parse_config(s.agent_config_dict(self.device_ids[0] if self.device_ids else "sim-0"), source="simulator agent config")
        self.pool = SessionPool(first.broker, connect_rate=s.connect_rate, name=f"sim-pool-{s.index}").start()
        n_threads = max(1, min(s.threads, len(self.device_ids) or 1))
        self._threads = [_TickThread(f"sim-tick-{s.index}-{i}") for i in range(n_threads)]
        timing = DeviceTiming(rate=s.rate, idle_tick_s=s.idle_tick_s)
        for i, device_id in enumerate(self.device_ids):
            cfg = parse_config(s.agent_config_dict(device_id), source=f"simulated device {device_id}")
            t = self._threads[i % n_threads]
            profile = profiles[s.profile_of(device_id)]
            d = SimDevice(cfg, self.pool, self.models, self.cache, plan.for_device(device_id, profile.name), profile, timing, wake=t.wake)
            d.open()
            self.devices.append(d)
            t.add(d)
        for t in self._threads:
            t.start()
        self.started_at = time.time()
        return self

    def stop(self) -> None:
        """Stop ticking, disconnect every session cleanly, close spools."""
        for t in self._threads:
            t.stop()
        if self.pool:
            self.pool.stop()
        for d in self.devices:
            d.close()

    def set_rate(self, rate: float) -> None:
        """Change the live inference rate of every device (0 stops live traffic)."""
        for d in self.devices:
            d.timing.rate = rate
            if rate <= 0:
                d._next_infer = float("inf")  # noqa: SLF001

    def stats(self) -> dict:
        """Cheap aggregate figures (no SQLite reads)."""
        states: Counter[str] = Counter()
        active: Counter[str] = Counter()
        faults: Counter[str] = Counter()
        profiles: Counter[str] = Counter()
        connected = dead = inferences = rejected = 0
        for d in self.devices:
            a = d.agent
            states[a.persisted.state.value] += 1
            m = a.serving
            active[f"{m.manifest.name}@{m.manifest.version}" if m else "none"] += 1
            connected += d.session.connected
            dead += d.dead
            inferences += a.counters["inferences"]
            rejected += a.counters["rejected_messages"]
            for r in d.faults.rules:
                faults[r.kind] += 1
            profiles[a.profile.name] += 1
        return {
            "devices": len(self.devices),
            "connected": connected,
            "offline_fault": dead,
            "states": dict(states),
            "active": dict(active),
            "faulty_devices": dict(faults),
            "profiles": dict(profiles),
            "inferences": inferences,
            "rejected_messages": rejected,
            "tick_errors": sum(t.errors for t in self._threads),
            "pool": _copy_counter(self.pool.stats) if self.pool else {},
            "repo_cache": self.cache.stats(),
            "verify_memo": verifymemo.stats(),
        }

    def devices_detail(self) -> list[dict]:
        """One summary per device."""
        return [d.summary() for d in self.devices]

    def telemetry(self, flush: bool = False) -> dict:
        """Telemetry batches created and messages still spooled, per device (SQLite reads).

        ``flush`` first closes each device's current interval into a batch (the last one).
        """
        out = {}
        for d in self.devices:
            if flush and not d.dead:
                d.agent.flush_telemetry()
            out[d.device_id] = d.telemetry_counts()
        return out
