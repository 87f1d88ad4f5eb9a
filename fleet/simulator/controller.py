"""The simulated fleet: N devices spread over P processes (or threads of this process).

``Simulator(settings).start()`` spawns ``settings.processes`` simulator processes (the
``spawn`` start method: safe from a parent with threads, such as a test running the console)
and gives each every P-th device id; ``processes=0`` runs the one worker in this process
(tests, the demo). The parent talks to each process over a pipe: stats, per-device detail,
telemetry counts, traffic rate, stop. A process whose parent dies stops by itself.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from collections import Counter

from edgeops.errors import FleetError

from edgeops.fleet.simulator.settings import SimSettings

log = logging.getLogger("edgeops.fleet.simulator")

_SUMMED = ("devices", "connected", "offline_fault", "inferences", "rejected_messages", "tick_errors")
_COUNTED = ("states", "active", "faulty_devices", "profiles", "pool", "repo_cache")
_NESTED = ("verify_memo",)


def raise_fd_limit(wanted: int | None = None) -> int:
    """Raise this process's open-file soft limit towards the hard limit; returns the new soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if wanted is None else min(hard, max(soft, wanted))
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _child_main(settings: SimSettings, ids: list[str], conn, log_level: str) -> None:
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.WARNING), format=f"sim[{settings.index}] %(levelname)s %(name)s: %(message)s")
    raise_fd_limit()
    if settings.verify_memo:
        from edgeops.fleet.simulator import verifymemo

        verifymemo.install()  # this process runs simulated devices only (see verifymemo)
    from edgeops.fleet.simulator.worker import SimWorker

    parent = os.getppid()
    try:
        worker = SimWorker(settings, ids).start()
    except Exception as e:
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", len(ids)))
    try:
        while True:
            if conn.poll(0.5):
                cmd, arg = conn.recv()
                if cmd == "stats":
                    conn.send(worker.stats())
                elif cmd == "detail":
                    conn.send(worker.devices_detail())
                elif cmd == "telemetry":
                    conn.send(worker.telemetry(flush=bool(arg)))
                elif cmd == "rate":
                    worker.set_rate(float(arg))
                    conn.send("ok")
                elif cmd == "stop":
                    break
            elif os.getppid() != parent:
                break  # the parent died: do not linger
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        worker.stop()
        try:
            conn.send("stopped")
        except Exception:
            pass


def merge_stats(parts: list[dict]) -> dict:
    """Sum the per-process stats into one."""
    out: dict = {k: 0 for k in _SUMMED}
    for k in _COUNTED:
        out[k] = Counter()
    for p in parts:
        for k in _SUMMED:
            out[k] += p.get(k, 0)
        for k in _COUNTED:
            out[k].update(p.get(k, {}))
    for k in _COUNTED:
        out[k] = dict(sorted(out[k].items()))
    for k in _NESTED:
        merged: dict[str, Counter] = {}
        for p in parts:
            for name, counts in p.get(k, {}).items():
                merged.setdefault(name, Counter()).update(counts)
        out[k] = {name: dict(c) for name, c in sorted(merged.items())}
    out["processes"] = len(parts)
    return out


class Simulator:
    """A simulated fleet (see module doc)."""

    def __init__(self, settings: SimSettings, log_level: str = "warning"):
        self.settings = settings
        self.log_level = log_level
        self._procs: list = []
        self._conns: list = []
        self._local = None
        self.started_at = 0.0
        self.ready_s = 0.0

    @property
    def device_ids(self) -> list[str]:
        """Every simulated device id."""
        return self.settings.all_device_ids()

    def start(self, timeout: float = 600.0) -> "Simulator":
        """Create every device (each recovers its persisted state) and start connecting them."""
        t0 = time.monotonic()
        ids = self.device_ids
        if self.settings.processes == 0:
            from edgeops.fleet.simulator.worker import SimWorker

            self._local = SimWorker(self.settings.for_process(0), ids).start()
        else:
            ctx = mp.get_context("spawn")
            p = min(self.settings.processes, len(ids))
            for i in range(p):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_child_main, args=(self.settings.for_process(i), ids[i::p], child, self.log_level), name=f"edgeops-sim-{i}", daemon=True)
                proc.start()
                self._procs.append(proc)
                self._conns.append(parent)
            deadline = time.monotonic() + timeout
            for i, conn in enumerate(self._conns):
                if not conn.poll(max(0.0, deadline - time.monotonic())):
                    self.stop()
                    raise FleetError(f"simulator process {i} did not start within {timeout:.0f}s")
                msg = conn.recv()
                if msg[0] != "ready":
                    self.stop()
                    raise FleetError(f"simulator process {i} failed to start: {msg[1]}")
        self.started_at = time.time()
        self.ready_s = time.monotonic() - t0
        return self

    def _ask(self, cmd: str, arg=None, timeout: float = 120.0) -> list:
        if self._local is not None:
            return [self._local_call(cmd, arg)]
        for conn in self._conns:
            conn.send((cmd, arg))
        out = []
        for i, conn in enumerate(self._conns):
            if not conn.poll(timeout):
                raise FleetError(f"simulator process {i} did not answer {cmd!r} within {timeout:.0f}s")
            out.append(conn.recv())
        return out

    def _local_call(self, cmd: str, arg):
        w = self._local
        if cmd == "stats":
            return w.stats()
        if cmd == "detail":
            return w.devices_detail()
        if cmd == "telemetry":
            return w.telemetry(flush=bool(arg))
        if cmd == "rate":
            w.set_rate(float(arg))
            return "ok"
        raise ValueError(cmd)

    def stats(self) -> dict:
        """Aggregate figures: devices, connected, states, active versions, faults, cache."""
        return merge_stats(self._ask("stats"))

    def devices(self) -> list[dict]:
        """One summary per device (state, versions, connection, faults)."""
        out: list[dict] = []
        for part in self._ask("detail"):
            out.extend(part)
        return sorted(out, key=lambda d: d["device_id"])

    def telemetry(self, flush: bool = False) -> dict[str, dict]:
        """Per device: telemetry batches created and messages still spooled."""
        out: dict[str, dict] = {}
        for part in self._ask("telemetry", flush, timeout=600):
            out.update(part)
        return out

    def set_rate(self, rate: float) -> None:
        """Live inferences per second per device (0 stops live traffic)."""
        self._ask("rate", rate)

    def wait(self, predicate, timeout: float, interval: float = 0.5, what: str = "the simulated fleet"):
        """Poll ``predicate(stats)`` until true; FleetError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.stats()
            if predicate(st):
                return st
            if time.monotonic() >= deadline:
                raise FleetError(f"timed out after {timeout:.0f}s waiting for {what}: {st['connected']}/{st['devices']} connected, states {st['states']}, active {st['active']}")
            time.sleep(interval)

    def wait_connected(self, timeout: float = 120.0) -> dict:
        """Block until every device without the offline fault is connected."""
        return self.wait(lambda s: s["connected"] + s["offline_fault"] >= s["devices"], timeout, what="every device to connect")

    def stop(self) -> None:
        """Stop every device (clean disconnects) and the processes."""
        if self._local is not None:
            self._local.stop()
            self._local = None
        for conn in self._conns:
            try:
                conn.send(("stop", None))
            except Exception:
                pass
        for proc, conn in zip(self._procs, self._conns):
            try:
                if conn.poll(60):
                    conn.recv()
            except Exception:
                pass
            proc.join(30)
            if proc.is_alive():
                proc.kill()
        self._procs, self._conns = [], []

    def __enter__(self) -> "Simulator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
