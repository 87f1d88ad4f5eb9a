"""The install state machine (Mender's model): one ``handle() -> next state`` per state.

::

    idle/committed/failed --assign--> fetching -> verifying -> installing -> self-testing
        -> activating -> probation -> committed
                           \\-- gate failed / error --> rolling-back -> failed
    (any failure before activating)  --------------------------------> failed

Rules:

- The next state is written to ``state.json`` (atomically) **before** it is acted on; an
  event describing a phase's outcome is spooled before the transition it causes, so events
  are delivered at least once.
- Every handler is idempotent: after a crash at any point, running the handler of the
  persisted state again finishes (or undoes) the update. :data:`RECOVERY` says, for each
  persisted state, where a restarted agent goes (:meth:`InstallMachine.recover` applies it
  once at start-up): a row names the state, or a rule that decides from what is on disk (a
  verified staging folder, the download) or from the record (probation restarts).
- The bundle is read once: verifying is the store's one pass (signed length and sha256, every
  member against the manifest, the device's profile and runtime, room in the store) writing
  the members into staging; installing renames what was verified.
- The machine sees its agent only through :class:`UpdateContext` (persisted state and save,
  store, trust, release floor, events, serving hooks).
- :data:`ERROR_POLICY` is the default next state for an unexpected error in each phase: up to
  self-testing nothing was activated, so the update simply fails and the old version keeps
  serving; from activating on, the machine rolls back.
- ``committed``, ``failed`` and ``idle`` are resting states: their handler cleans up once and
  the machine waits for the next command there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from edgeops.errors import BundleError, EdgeopsError
from edgeops.profiles import HardwareProfile
from edgeops.protocol import EventKind, GateResult
from edgeops.trust.errors import RepositoryUnavailableError, TrustError
from edgeops.trust.floor import ReleaseFloor
from edgeops.trust.targets import TargetRecord

from edgeops.agent.fetch import Assignment, TargetSource, compatibility_check, fetch_verified
from edgeops.agent.probation import ProbationMonitor
from edgeops.agent.selftest import SelfTestReport
from edgeops.agent.statefile import RESTING, PersistedState, State, UpdateRecord
from edgeops.agent.store import ModelStore, StoreError, StoreFullError

log = logging.getLogger("edgeops.agent.machine")

MAX_FETCH_ATTEMPTS = 3
ROLLBACK_COMMAND = "rollback-command"  # UpdateRecord.reason of a rollback the console ordered


class UpdateContext(Protocol):
    """Everything the install machine may see of its agent (Mender's ``Controller``).

    Persisted state and its save; the store, the TUF client, the release floor and the
    downloads folder; the event spool; the serving hooks (self-test, serve ``current``, the
    probation window); and the call-outs for tests. :class:`edgeops.agent.core.Agent`
    implements it; nothing else of the agent is reachable from the machine.
    """

    device_id: str
    profile: HardwareProfile
    persisted: PersistedState
    store: ModelStore
    trust: TargetSource
    floor: ReleaseFloor
    clock: Callable[[], float]

    @property
    def max_probation_restarts(self) -> int:
        """Restarts tolerated during one probation window before it rolls back."""

    def save_state(self) -> None:
        """Persist ``persisted`` atomically."""

    def emit(self, kind: EventKind, *, gates: list[GateResult] | None = None, detail: str = "") -> int:
        """Spool an event about the update in progress (delivered at least once)."""

    def download_path(self, sha256: str) -> Path:
        """Where the bundle of ``sha256`` is downloaded to."""

    def discard_download(self, sha256: str) -> None:
        """Delete the downloaded bundle of ``sha256``."""

    def wait_before_retry(self, attempt: int) -> None:
        """Back off before fetch attempt ``attempt + 1``."""

    # serving hooks
    def self_test(self, sha256: str, keep_runtime: bool = False) -> SelfTestReport:
        """Self-test a stored version; with ``keep_runtime`` keep it loaded for activation."""

    def serve_current(self) -> None:
        """Serve what the store's ``current`` link names."""

    def probation_monitor(self) -> ProbationMonitor:
        """The current probation window (opened on first use)."""

    def end_probation(self) -> None:
        """Close the probation window and drop its shadow model."""

    # call-outs
    def on_transition(self, old: State, new: State) -> None:
        """Called after each persisted transition."""

    def checkpoint(self, state: State, label: str) -> None:
        """A named point inside a handler (crash-injection tests pause or kill there)."""


@dataclass(frozen=True)
class Resume:
    """One row of the recovery table: where a restarted agent goes from a persisted state."""

    to: State | None  # None: decided by ``rule`` from what is on disk
    why: str
    rule: Callable[[UpdateContext, UpdateRecord], State] | None = None


def _resume_installing(ctx: UpdateContext, u: UpdateRecord) -> State:
    # The rename is atomic: the version is in the store, or its verified staging is complete
    # (manifest.json is written last), or the pass was cut short and must run again.
    if ctx.store.has(u.sha256) or ctx.store.staged(u.sha256):
        return State.INSTALLING
    return State.VERIFYING if ctx.download_path(u.sha256).exists() else State.FETCHING


def _resume_verifying(ctx: UpdateContext, u: UpdateRecord) -> State:
    if ctx.store.has(u.sha256) or ctx.store.staged(u.sha256):
        return State.INSTALLING  # the pass had finished: do not read the bundle again
    return State.VERIFYING if ctx.download_path(u.sha256).exists() and u.target is not None else State.FETCHING


def _resume_self_testing(ctx: UpdateContext, u: UpdateRecord) -> State:
    return State.SELF_TESTING if ctx.store.has(u.sha256) else _resume_installing(ctx, u)


def _resume_probation(ctx: UpdateContext, u: UpdateRecord) -> State:
    u.probation_restarts += 1
    u.probation_started = None
    if u.probation_restarts <= ctx.max_probation_restarts:
        return State.PROBATION  # the window starts again
    # The new model may be what crashes the agent: stop trying it.
    gate = GateResult(gate="agent_restarts", passed=False, measured=float(u.probation_restarts), threshold=float(ctx.max_probation_restarts), detail="the agent restarted during probation")
    u.gates = [gate.to_dict()]
    u.rollback_reason = "agent restarted during probation"
    ctx.emit(EventKind.PROBATION_FAILED, gates=[gate], detail=u.rollback_reason)
    return State.ROLLING_BACK


# Where a restarted agent goes from each persisted state (applied once by recover() at
# start-up; every handler is also idempotent, so resuming in a state re-runs it safely).
RECOVERY: dict[State, Resume] = {
    State.IDLE: Resume(State.IDLE, "nothing in progress"),
    State.FETCHING: Resume(State.FETCHING, "partial downloads were deleted at start-up; the download starts again"),
    State.VERIFYING: Resume(None, "a finished pass goes on to installing; a cut one runs again from the download (its staging replaced), or fetches again without one", _resume_verifying),
    State.INSTALLING: Resume(None, "renames the verified staging (or finds it renamed); without a complete staging it verifies again, or fetches again", _resume_installing),
    State.SELF_TESTING: Resume(None, "nothing was activated: test again (the version is in the store; if not, install it again)", _resume_self_testing),
    State.ACTIVATING: Resume(State.ACTIVATING, "links are set again from the record (idempotent); the previous version was recorded before the swap"),
    State.PROBATION: Resume(None, "the window starts again; after more than probation.max_restarts restarts it rolls back (gate agent_restarts)", _resume_probation),
    State.COMMITTED: Resume(State.COMMITTED, "clean-up runs again"),
    State.ROLLING_BACK: Resume(State.ROLLING_BACK, "the rollback is done again (idempotent)"),
    State.FAILED: Resume(State.FAILED, "clean-up runs again; the current version keeps serving"),
}

# Default next state on an unexpected error in each phase.
ERROR_POLICY: dict[State, State] = {
    State.FETCHING: State.FAILED,
    State.VERIFYING: State.FAILED,
    State.INSTALLING: State.FAILED,
    State.SELF_TESTING: State.FAILED,
    State.ACTIVATING: State.ROLLING_BACK,
    State.PROBATION: State.ROLLING_BACK,
    State.ROLLING_BACK: State.FAILED,
}


class InstallMachine:
    """Runs the handler of the persisted state; sees its agent only through :class:`UpdateContext`."""

    def __init__(self, ctx: UpdateContext):
        self.ctx = ctx
        self._settled = False  # a resting state's clean-up has run
        self.handlers = {
            State.IDLE: self._rest,
            State.FETCHING: self.handle_fetching,
            State.VERIFYING: self.handle_verifying,
            State.INSTALLING: self.handle_installing,
            State.SELF_TESTING: self.handle_self_testing,
            State.ACTIVATING: self.handle_activating,
            State.PROBATION: self.handle_probation,
            State.COMMITTED: self.handle_committed,
            State.ROLLING_BACK: self.handle_rolling_back,
            State.FAILED: self.handle_failed,
        }

    # -- driving -----------------------------------------------------------------------------
    @property
    def state(self) -> State:
        """The persisted state."""
        return self.ctx.persisted.state

    @property
    def update(self) -> UpdateRecord:
        """The update in progress (only valid outside idle)."""
        assert self.ctx.persisted.update is not None
        return self.ctx.persisted.update

    @property
    def settled(self) -> bool:
        """True in a resting state whose clean-up has run (nothing left to do until a command)."""
        return self.state in RESTING and self._settled

    def busy(self) -> bool:
        """True while an update is in progress."""
        return self.state not in RESTING

    def transition(self, new: State) -> None:
        """Persist ``new`` (before anything acts on it) and tell the agent."""
        old = self.state
        self.ctx.persisted.state = new
        self.ctx.save_state()
        self._settled = False
        log.info("%s: %s -> %s", self.ctx.device_id, old.value, new.value)
        self.ctx.on_transition(old, new)

    def resume_state(self) -> State:
        """Where the recovery table sends the persisted state (may update and save the record)."""
        persisted = self.state
        row = RECOVERY[persisted]
        u = self.ctx.persisted.update
        if row.rule is None or u is None:
            # A state outside idle without its record cannot resume anything: it rests failed.
            return row.to if row.to is not None else State.FAILED
        resume = row.rule(self.ctx, u)
        self.ctx.save_state()
        return resume

    def recover(self) -> State:
        """Apply the recovery table to the persisted state at start-up; return where it resumes."""
        resume = self.resume_state()
        if resume is not self.state:
            self.transition(resume)
        self._settled = False
        return resume

    def step(self) -> bool:
        """Run the current state's handler once; True when the state changed."""
        state = self.state
        if state in RESTING and self._settled:
            return False
        try:
            nxt = self.handlers[state]()
        except Exception as e:  # the default error policy of the phase
            nxt = self._on_error(state, e)
        if state in RESTING:
            self._settled = True
            return False
        if nxt is None or nxt is state:
            return False
        self.transition(nxt)
        return True

    def _on_error(self, state: State, e: Exception) -> State | None:
        nxt = ERROR_POLICY.get(state)
        log.error("%s: %s failed: %s", self.ctx.device_id, state.value, e, exc_info=not isinstance(e, EdgeopsError))
        if nxt is None:
            return None
        if self.ctx.persisted.update is not None:
            self.update.failure = f"{state.value}: {e}"[:1000]
            if nxt is State.ROLLING_BACK:
                self.update.rollback_reason = f"error in {state.value}: {e}"[:500]
        kind = EventKind.INSTALL_FAILED if nxt is State.FAILED else EventKind.PROBATION_FAILED
        self.ctx.emit(kind, detail=f"{state.value}: {e}"[:1000])
        return nxt

    def _fail(self, kind: EventKind, detail: str, gates: list[GateResult] | None = None, mark_bad: bool = False) -> State:
        """Record a failure before activation: event, optional bad mark, then failed."""
        u = self.update
        u.failure = detail[:1000]
        if mark_bad:
            self.ctx.persisted.failed[u.sha256] = u.command_id
        self.ctx.emit(kind, detail=detail[:1000], gates=gates or [])
        return State.FAILED

    # -- the phases ----------------------------------------------------------------------------
    def handle_fetching(self) -> State | None:
        """Refresh TUF metadata, match the assignment to the signed target, download it."""
        u, c = self.update, self.ctx
        c.checkpoint(State.FETCHING, "start")
        try:
            record = fetch_verified(
                c.trust,
                Assignment(u.command_id, u.target_name, u.sha256, u.length),
                c.profile,
                c.download_path(u.sha256),
                floor=c.floor,
                checkpoint=lambda label: c.checkpoint(State.FETCHING, label),
            )
        except RepositoryUnavailableError as e:
            u.attempts += 1
            c.save_state()
            if u.attempts < MAX_FETCH_ATTEMPTS:
                log.warning("%s: fetch attempt %d failed: %s", c.device_id, u.attempts, e)
                c.wait_before_retry(u.attempts)
                return State.FETCHING
            return self._fail(EventKind.INSTALL_FAILED, f"repository unreachable after {u.attempts} attempts: {e}")
        except (TrustError, BundleError) as e:
            return self._fail(EventKind.BUNDLE_REJECTED, f"{type(e).__name__}: {e}")
        u.name, u.version, u.release = record.bundle_name, record.version, record.release
        u.target = record.to_wire()
        c.checkpoint(State.FETCHING, "downloaded")
        return State.VERIFYING

    def handle_verifying(self) -> State | None:
        """The one pass: check the download against the signed target and every member against
        the manifest, the manifest against this device and the store's room, while writing the
        members into the store's staging folder. Nothing is left in staging when it fails."""
        u, c = self.update, self.ctx
        c.checkpoint(State.VERIFYING, "start")
        path = c.download_path(u.sha256)
        if not path.exists() or u.target is None:
            return State.FETCHING
        record = TargetRecord.from_wire({"hashes": {"sha256": u.target["sha256"]}, **u.target})
        try:
            c.store.stage(path, u.sha256, record, check=compatibility_check(c.profile))
        except StoreFullError as e:
            c.discard_download(u.sha256)
            return self._fail(EventKind.INSTALL_FAILED, str(e))
        except (TrustError, BundleError, StoreError) as e:
            c.discard_download(u.sha256)
            return self._fail(EventKind.BUNDLE_REJECTED, f"{type(e).__name__}: {e}")
        c.checkpoint(State.VERIFYING, "verified")
        return State.INSTALLING

    def handle_installing(self) -> State | None:
        """Install what was verified: one rename of the staging folder into the store."""
        u, c = self.update, self.ctx
        c.checkpoint(State.INSTALLING, "start")
        if not c.store.has(u.sha256):
            if not c.store.staged(u.sha256):
                return State.VERIFYING  # cannot happen through recover(); the pass runs again
            c.store.commit_staged(u.sha256)
        c.discard_download(u.sha256)  # installed: the store holds the verified files
        c.checkpoint(State.INSTALLING, "installed")
        c.emit(EventKind.INSTALLED)
        return State.SELF_TESTING

    def handle_self_testing(self) -> State | None:
        """Golden vectors, load time, latency, memory; nothing is activated on failure."""
        u, c = self.update, self.ctx
        c.checkpoint(State.SELF_TESTING, "start")
        report = c.self_test(u.sha256, keep_runtime=True)
        c.checkpoint(State.SELF_TESTING, "tested")
        if not report.passed:
            return self._fail(EventKind.SELF_TEST_FAILED, report.summary(), gates=report.gates, mark_bad=True)
        c.emit(EventKind.SELF_TEST_PASSED, gates=report.gates, detail=report.summary())
        current = c.store.current()
        # Remember what to go back to *before* the swap: after a crash in activating the record says it.
        u.previous_sha256 = current if current != u.sha256 else u.previous_sha256
        return State.ACTIVATING

    def handle_activating(self) -> State | None:
        """Swap the ``current`` link to the new version and serve it."""
        u, c = self.update, self.ctx
        c.checkpoint(State.ACTIVATING, "start")
        if u.previous_sha256 and c.store.has(u.previous_sha256):
            c.store.set_previous(u.previous_sha256)
        c.checkpoint(State.ACTIVATING, "previous-linked")
        # ---- POINT OF NO RETURN -------------------------------------------------------------
        # After this swap the new version is what `current` names: from here on a failure or a
        # crash no longer fails the update quietly, it rolls back (ERROR_POLICY, RECOVERY).
        c.store.set_current(u.sha256)
        c.checkpoint(State.ACTIVATING, "swapped")
        # Open the probation window *before* the new version serves: every request it answers is
        # watched. Opened after the swap, the time spent loading the previous version for shadow
        # runs (~70 ms for a 20 MB model) left live requests to the new version unobserved;
        # bench/agent.py sent its NaN-triggering request there and the faulty version committed.
        c.end_probation()
        c.probation_monitor()  # reuses the still-serving old version for shadow runs
        c.serve_current()
        c.emit(EventKind.ACTIVATED)
        c.checkpoint(State.ACTIVATING, "serving")
        return State.PROBATION

    def handle_probation(self) -> State | None:
        """Watch the new version; commit when the window passes, roll back when a gate fails."""
        u, c = self.update, self.ctx
        monitor = c.probation_monitor()
        verdict = monitor.evaluate(c.clock())
        c.checkpoint(State.PROBATION, "evaluated")
        if verdict is None:
            return State.PROBATION  # window still open: stay
        if not verdict.passed:
            failed = verdict.failed_gates
            u.gates = [g.to_dict() for g in verdict.gates]
            u.rollback_reason = "probation gate failed: " + ", ".join(g.gate for g in failed)
            c.emit(EventKind.PROBATION_FAILED, gates=verdict.gates, detail=u.rollback_reason)
            return State.ROLLING_BACK
        c.emit(EventKind.PROBATION_PASSED, gates=verdict.gates)
        return State.COMMITTED

    def handle_committed(self) -> None:
        """Mark good: raise the release floor, drop what is no longer needed (idempotent)."""
        c = self.ctx
        u = c.persisted.update
        c.checkpoint(State.COMMITTED, "start")
        if u is not None:
            if u.name:
                c.floor.raise_to(u.name, u.release or 0)
            c.persisted.failed.pop(u.sha256, None)
            if not u.reported:
                c.emit(EventKind.COMMITTED)  # at least once: spooled before the flag is saved
                u.reported = True
                c.save_state()
            c.discard_download(u.sha256)
        c.end_probation()
        # The version just replaced stays as `previous` (a console rollback order can still use it).
        c.store.gc()
        c.checkpoint(State.COMMITTED, "clean")
        return None

    def handle_rolling_back(self) -> State:
        """Mark bad: point ``current`` back at the previous version and serve it (idempotent)."""
        u, c = self.update, self.ctx
        c.checkpoint(State.ROLLING_BACK, "start")
        c.persisted.failed[u.sha256] = u.command_id
        c.save_state()
        prev = u.previous_sha256 if u.previous_sha256 and c.store.has(u.previous_sha256) else None
        c.store.set_current(prev)  # None: there was no earlier version; serve nothing rather than a bad one
        c.checkpoint(State.ROLLING_BACK, "swapped")
        c.serve_current()  # the shadow session of the previous version, when probation had one
        c.end_probation()
        c.store.set_previous(None)  # neither the bad version nor the one now current
        gates = [GateResult.parse(g) for g in (u.gates or [])]
        c.emit(EventKind.ROLLED_BACK, gates=[g for g in gates if not g.passed] or gates, detail=u.rollback_reason or "rolled back")
        c.checkpoint(State.ROLLING_BACK, "served")
        return State.IDLE if u.reason == ROLLBACK_COMMAND else State.FAILED

    def handle_failed(self) -> None:
        """The update failed; the version still current keeps serving. Clean up (idempotent)."""
        c = self.ctx
        c.checkpoint(State.FAILED, "start")
        u = c.persisted.update
        if u is not None:
            c.discard_download(u.sha256)
        c.end_probation()
        c.store.gc()
        return None

    def _rest(self) -> None:
        self.ctx.store.gc()
        return None
