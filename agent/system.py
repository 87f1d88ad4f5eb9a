"""Readings of the host: resident memory, CPU use and temperature (where the device exposes it).

Read from /proc, /sys and ``os`` directly (no psutil: one dependency and ~1 MiB of resident
memory less on the device). Every reading returns None when it is not available rather than
failing.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

import numpy as np


def rss_mb() -> float:
    """Resident set size of this process in MiB."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20)
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class CpuMeter:
    """CPU use of this process between two calls, in percent of one core."""

    def __init__(self) -> None:
        self._last = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float]:
        t = os.times()
        import time

        return t.user + t.system, time.monotonic()

    def percent(self) -> float | None:
        """Percent of one core used since the previous call."""
        cpu, wall = self._sample()
        last_cpu, last_wall = self._last
        self._last = (cpu, wall)
        if wall <= last_wall:
            return None
        return round(100.0 * (cpu - last_cpu) / (wall - last_wall), 2)


def temperature_c() -> float | None:
    """The hottest thermal zone in degrees Celsius, or None where none is readable."""
    best = None
    for zone in Path("/sys/class/thermal").glob("thermal_zone*/temp"):
        try:
            value = int(zone.read_text().strip()) / 1000.0
        except (OSError, ValueError):
            continue
        if -40.0 < value < 150.0:
            best = value if best is None else max(best, value)
    return best


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) of values, or None when empty."""
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))
