"""Rollout, wave and assignment status enums and their allowed transitions.

Every status change in the console goes through :func:`check_rollout` / :func:`check_wave`,
which raise :class:`~edgeops.errors.IllegalTransitionError` (exit code 9) for a move the
tables below do not allow. The tables are the single source of truth; the REST API documents
each action's allowed source states from them (``ACTION_FROM``).

Rollout::

    created ──start──► running ──wave passed, approve_each_wave──► waiting_approval ──promote──► running
       │                 │  ▲                                          │
       │                 │  └──resume── paused ◄──pause / gate failure─┘ (and from running;
       │                 │                        resume returns to waiting_approval when the
       │                 │                        current wave had passed and awaits approval)
       │                 ├──last wave passed──► finished
       │                 └──last wave passed, --watch──► watching ──watch ended──► finished
       │                                                     └──late failure──► paused (the failing
       │                                                        devices ordered back; resume watches
       │                                                        again, abort rolls back the rest)
       └──abort──► aborting ──rollback orders sent──► aborted      (abort from any live status)

Wave::

    pending ──► running ──gates pass──► passed
       │          │  ▲
       │          │  └─resume─ halted ◄──gate failure
       │          │            │ └──promote (operator override)──► passed
       └─abort─► cancelled     └──abort──► failed ◄──abort── running
"""

from __future__ import annotations

from enum import Enum

from edgeops.errors import IllegalTransitionError


class RolloutStatus(str, Enum):
    """Where a rollout is."""

    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    WAITING_APPROVAL = "waiting_approval"
    WATCHING = "watching"  # every wave passed; still judged for the --watch period
    ABORTING = "aborting"
    ABORTED = "aborted"
    FINISHED = "finished"


class WaveStatus(str, Enum):
    """Where one wave of a rollout is."""

    PENDING = "pending"
    RUNNING = "running"
    HALTED = "halted"
    PASSED = "passed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class AssignmentStatus(str, Enum):
    """Where one device of a rollout is (driven by its events, timeouts and the abort path)."""

    PENDING = "pending"  # row written, command not yet published
    SENT = "sent"  # command published (QoS 1)
    ACCEPTED = "accepted"  # device verified and accepted the signed command
    INSTALLING = "installing"  # fetching, installing, self-testing
    PROBATION = "probation"  # activated, watched by the device's probation gates
    SUCCEEDED = "succeeded"  # committed
    FAILED = "failed"  # rejected the command, install/self-test/probation failed
    ROLLED_BACK = "rolled_back"  # the device rolled itself back
    TIMED_OUT = "timed_out"  # offline past the timeout, or no final report in time
    REVERTING = "reverting"  # abort: rollback order sent
    REVERTED = "reverted"  # abort: device confirmed it is back on its previous version


R, W = RolloutStatus, WaveStatus

ROLLOUT_TRANSITIONS: dict[RolloutStatus, frozenset[RolloutStatus]] = {
    R.CREATED: frozenset({R.RUNNING, R.ABORTING}),
    R.RUNNING: frozenset({R.PAUSED, R.WAITING_APPROVAL, R.FINISHED, R.ABORTING, R.WATCHING}),
    R.WATCHING: frozenset({R.FINISHED, R.ABORTING, R.PAUSED}),
    R.PAUSED: frozenset({R.RUNNING, R.WAITING_APPROVAL, R.ABORTING}),
    R.WAITING_APPROVAL: frozenset({R.RUNNING, R.PAUSED, R.ABORTING}),
    R.ABORTING: frozenset({R.ABORTED}),
    R.ABORTED: frozenset(),
    R.FINISHED: frozenset(),
}

WAVE_TRANSITIONS: dict[WaveStatus, frozenset[WaveStatus]] = {
    W.PENDING: frozenset({W.RUNNING, W.CANCELLED}),
    W.RUNNING: frozenset({W.PASSED, W.HALTED, W.FAILED}),
    W.HALTED: frozenset({W.RUNNING, W.PASSED, W.FAILED}),
    W.PASSED: frozenset(),
    W.FAILED: frozenset(),
    W.CANCELLED: frozenset(),
}

# Operator actions and the rollout states each is allowed from (documented by the REST API).
ACTION_FROM: dict[str, frozenset[RolloutStatus]] = {
    "start": frozenset({R.CREATED}),
    "pause": frozenset({R.RUNNING, R.WAITING_APPROVAL}),
    "resume": frozenset({R.PAUSED}),
    "promote": frozenset({R.WAITING_APPROVAL, R.PAUSED}),
    "abort": frozenset({R.CREATED, R.RUNNING, R.PAUSED, R.WAITING_APPROVAL, R.WATCHING}),
}

TERMINAL_ROLLOUT = frozenset({R.ABORTED, R.FINISHED})
LIVE_ROLLOUT = frozenset({R.RUNNING, R.PAUSED, R.WAITING_APPROVAL, R.WATCHING, R.ABORTING})

A = AssignmentStatus
# Reported: the device said how it ended (or was timed out). Failures count against the gates.
FINAL_ASSIGNMENT = frozenset({A.SUCCEEDED, A.FAILED, A.ROLLED_BACK, A.TIMED_OUT, A.REVERTING, A.REVERTED})
IN_FLIGHT_ASSIGNMENT = frozenset({A.PENDING, A.SENT, A.ACCEPTED, A.INSTALLING, A.PROBATION})
FAILED_ASSIGNMENT = frozenset({A.FAILED, A.ROLLED_BACK, A.TIMED_OUT})


def wave_label(idx: int) -> str:
    """How people read wave ``idx`` (0-based internally): ``wave 1`` is the first."""
    return f"wave {idx + 1}"


def check_rollout(rollout_id: str, current: RolloutStatus | str, new: RolloutStatus | str) -> None:
    """Raise IllegalTransitionError unless ``current -> new`` is allowed for a rollout."""
    cur, nxt = RolloutStatus(current), RolloutStatus(new)
    if nxt not in ROLLOUT_TRANSITIONS[cur]:
        allowed = ", ".join(sorted(s.value for s in ROLLOUT_TRANSITIONS[cur])) or "none (terminal)"
        raise IllegalTransitionError(f"rollout {rollout_id}: cannot go from {cur.value} to {nxt.value} (allowed from {cur.value}: {allowed})")


def check_wave(rollout_id: str, idx: int, current: WaveStatus | str, new: WaveStatus | str) -> None:
    """Raise IllegalTransitionError unless ``current -> new`` is allowed for a wave."""
    cur, nxt = WaveStatus(current), WaveStatus(new)
    if nxt not in WAVE_TRANSITIONS[cur]:
        allowed = ", ".join(sorted(s.value for s in WAVE_TRANSITIONS[cur])) or "none (terminal)"
        raise IllegalTransitionError(f"rollout {rollout_id} {wave_label(idx)}: cannot go from {cur.value} to {nxt.value} (allowed from {cur.value}: {allowed})")


def check_action(rollout_id: str, action: str, current: RolloutStatus | str) -> None:
    """Raise IllegalTransitionError unless the operator action is allowed in the current state."""
    cur = RolloutStatus(current)
    allowed = ACTION_FROM[action]
    if cur not in allowed:
        names = ", ".join(sorted(s.value for s in allowed))
        raise IllegalTransitionError(f"rollout {rollout_id}: cannot {action} while {cur.value} (allowed from: {names})")
