"""The console's wall clock, in one place.

Console code that stamps rows (rollouts, waves, audit, assignments, one-off commands) takes a
``now`` or a :data:`Clock` from its caller (the reconciler's ``clock``, a test's fake clock)
and reads the system clock only when none was given, through :func:`resolve`. ``0.0`` is a
time like any other: a caller's ``now=0.0`` is used, never mistaken for "missing".
"""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]  # unix seconds


def system_clock() -> float:
    """The host's wall clock (unix seconds)."""
    return time.time()


def resolve(now: float | None, clock: Clock = system_clock) -> float:
    """``now`` when the caller gave one (``0.0`` included), else ``clock()``."""
    return clock() if now is None else now
