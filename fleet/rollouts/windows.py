"""Maintenance windows: when a rollout may send a device its assign command.

A window (:class:`~edgeops.fleet.rollouts.settings.MaintenanceWindow`) is a selector, a cron-style start (``minute hour day-of-month month day-of-week``, in
the window's time zone), and a duration. A device that some window of the rollout selects gets
its command only while one of its windows is open; a device no window selects is not restricted.
Its assignment is decided when its wave starts (so wave membership does not depend on the
clock) and waits, ``pending``, until a window opens; the reconciler then gives the command a
fresh sequence number and expiry (the ones allocated at the wave's start may be stale by then).

Cron fields accept ``*``, numbers, ranges ``a-b``, lists ``a,b`` and steps ``*/n``, ``a-b/n``;
day of week 0-7 (0 and 7 are Sunday). As in cron, when both day of month and day of week are
restricted, a day matching either one matches. Windows are evaluated at minute resolution.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

if TYPE_CHECKING:
    from edgeops.fleet.rollouts.settings import MaintenanceWindow

WINDOW_WAIT = "waiting for its maintenance window"  # the detail of an assignment held back by one

_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))


def _parse_field(text: str, name: str, lo: int, hi: int) -> frozenset[int]:
    out: set[int] = set()
    for part in text.split(","):
        rng, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) < 1:
                raise ValueError(f"{name}: step {step_text!r} must be a positive number")
            step = int(step_text)
        if rng == "*":
            a, b = lo, hi
        elif "-" in rng:
            x, _, y = rng.partition("-")
            if not (x.isdigit() and y.isdigit()):
                raise ValueError(f"{name}: {rng!r} is not a range like 1-5")
            a, b = int(x), int(y)
        elif rng.isdigit():
            a = b = int(rng)
            if step_text:
                b = hi
        else:
            raise ValueError(f"{name}: {part!r} is not *, a number, a range or a step")
        if not (lo <= a <= hi and lo <= b <= hi and a <= b):
            raise ValueError(f"{name}: {part!r} is outside {lo}-{hi}")
        out.update(range(a, b + 1, step))
    return frozenset(out)


@dataclass(frozen=True)
class Cron:
    """A parsed five-field cron expression."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool
    any_weekday: bool

    @classmethod
    def parse(cls, text: str) -> "Cron":
        """From ``"0 2 * * *"``; ValueError naming the field at fault."""
        parts = text.split()
        if len(parts) != 5:
            raise ValueError(f"{text!r} has {len(parts)} fields; a cron start has 5: minute hour day-of-month month day-of-week (e.g. '0 2 * * *')")
        sets = [_parse_field(p, name, lo, hi) for p, (name, lo, hi) in zip(parts, _FIELDS)]
        weekdays = frozenset(d % 7 for d in sets[4])
        return cls(sets[0], sets[1], sets[2], sets[3], weekdays, parts[2] == "*", parts[4] == "*")

    def matches(self, t: dt.datetime) -> bool:
        """True when the minute ``t`` (local time) is a start."""
        if t.minute not in self.minutes or t.hour not in self.hours or t.month not in self.months:
            return False
        day_ok = t.day in self.days
        weekday_ok = (t.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return day_ok and weekday_ok
        return day_ok or weekday_ok


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not a time zone (IANA names such as UTC or Europe/Berlin)") from None


def check_timezone(name: str) -> str:
    """``name`` if it is an IANA time zone; ValueError otherwise."""
    _zone(name)
    return name


def open_since(cron_text: str, duration_s: float, timezone: str, now: float) -> float | None:
    """When the window (a start matching ``cron_text`` in ``timezone``, lasting ``duration_s``)
    open at ``now`` began (unix seconds); None when it is closed."""
    cron, tz = Cron.parse(cron_text), _zone(timezone)
    t = dt.datetime.fromtimestamp(now, tz).replace(second=0, microsecond=0)
    start = now - duration_s
    while t.timestamp() > start:
        if cron.matches(t):
            return t.timestamp()
        t = (t.astimezone(dt.timezone.utc) - dt.timedelta(minutes=1)).astimezone(tz)
    return None


def next_start(cron_text: str, timezone: str, now: float, horizon_s: float = 8 * 86400.0) -> float | None:
    """The next start after ``now`` within ``horizon_s``; None if there is none."""
    cron, tz = Cron.parse(cron_text), _zone(timezone)
    t = dt.datetime.fromtimestamp(now, tz).replace(second=0, microsecond=0)
    end = now + horizon_s
    while t.timestamp() <= end:
        t = (t.astimezone(dt.timezone.utc) + dt.timedelta(minutes=1)).astimezone(tz)
        if cron.matches(t):
            return t.timestamp()
    return None


def devices_outside_window(windows: list[MaintenanceWindow], devices: list[tuple[str, str | None, dict[str, str]]], now: float) -> dict[str, list[int]]:
    """Of ``devices`` (id, profile, tags), those that some window selects and none is open for
    now: ``{device_id: indices of its windows}`` (see :func:`next_opening`)."""
    if not windows:
        return {}
    is_open = [open_since(w.cron, w.duration_s, w.timezone, now) is not None for w in windows]
    out: dict[str, list[int]] = {}
    for device_id, profile, tags in devices:
        mine = [i for i, w in enumerate(windows) if w.select.matches(device_id, profile, tags)]
        if mine and not any(is_open[i] for i in mine):
            out[device_id] = mine
    return out


def next_opening(windows: list[MaintenanceWindow], indices: list[int], now: float) -> float | None:
    """The earliest next start among ``windows[indices]`` (within 8 days), None if none."""
    starts = [s for s in (next_start(windows[i].cron, windows[i].timezone, now) for i in indices) if s is not None]
    return min(starts) if starts else None
