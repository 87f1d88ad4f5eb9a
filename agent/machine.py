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
  persisted state again finishes (or undoes) the update. :data:`RECOVERY` says where each
  persisted state resumes at start-up.
- :data:`ERROR_POLICY` is the default next state for an unexpected error in each phase: up to
  self-testing nothing was activated, so the update simply fails and the old version keeps
  serving; from activating on, the machine rolls back.
- ``committed``, ``failed`` and ``idle`` are resting states: their handler cleans up once and
  the machine waits for the next command there.
"""

from __future__ import annotations

import logging
import types
from typing import TYPE_CHECKING

from edgeops.errors import BundleError, EdgeopsError
from edgeops.protocol import EventKind, GateResult
from edgeops.trust.targets import TargetRecord
from edgeops.trust.commands import check_assignment
from edgeops.trust.errors import RepositoryUnavailableError, TrustError
from edgeops.trust.verify import verify_bundle_file

from edgeops.agent.statefile import RESTING, State, UpdateRecord
from edgeops.agent.store import StoreError, StoreFullError

if TYPE_CHECKING:  # pragma: no cover
    from edgeops.agent.core import Agent

log = logging.getLogger("edgeops.agent.machine")

MAX_FETCH_ATTEMPTS = 3
ROLLBACK_COMMAND = "rollback-command"  # UpdateRecord.reason of a rollback the console ordered

# Where each persisted state resumes after a restart (the recovery table).
RECOVERY: dict[State, State] = {
    State.IDLE: State.IDLE,
    State.FETCHING: State.FETCHING,  # partial downloads are deleted; the download starts again
    State.VERIFYING: State.VERIFYING,  # the downloaded file is verified again
    State.INSTALLING: State.INSTALLING,  # staging leftovers are deleted; install is all-or-nothing
    State.SELF_TESTING: State.SELF_TESTING,  # nothing was activated; test again
    State.ACTIVATING: State.ACTIVATING,  # links are set again from the record (idempotent)
    State.PROBATION: State.PROBATION,  # the window starts again; past max_restarts it rolls back
    State.COMMITTED: State.COMMITTED,  # clean-up runs again
    State.ROLLING_BACK: State.ROLLING_BACK,  # the rollback is done again (idempotent)
    State.FAILED: State.FAILED,
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
    """Runs the handler of the agent's persisted state; see the module doc."""

    def __init__(self, agent: "Agent"):
        self.a = agent
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
        return self.a.persisted.state

    @property
    def update(self) -> UpdateRecord:
        """The update in progress (only valid outside idle)."""
        assert self.a.persisted.update is not None
        return self.a.persisted.update

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
        self.a.persisted.state = new
        self.a.save_state()
        self._settled = False
        log.info("%s: %s -> %s", self.a.device_id, old.value, new.value)
        self.a.on_transition(old, new)

    def recover(self) -> State:
        """Apply the recovery table to the persisted state at start-up."""
        persisted = self.state
        resume = RECOVERY[persisted]
        if persisted is State.PROBATION and self.a.persisted.update is not None:
            self.update.probation_restarts += 1
            self.update.probation_started = None
            self.a.save_state()
        if resume is not persisted:
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
        log.error("%s: %s failed: %s", self.a.device_id, state.value, e, exc_info=not isinstance(e, EdgeopsError))
        if nxt is None:
            return None
        if self.a.persisted.update is not None:
            self.update.failure = f"{state.value}: {e}"[:1000]
            if nxt is State.ROLLING_BACK:
                self.update.rollback_reason = f"error in {state.value}: {e}"[:500]
        kind = EventKind.INSTALL_FAILED if nxt is State.FAILED else EventKind.PROBATION_FAILED
        self.a.emit(kind, detail=f"{state.value}: {e}"[:1000])
        return nxt

    def _fail(self, kind: EventKind, detail: str, gates: list[GateResult] | None = None, mark_bad: bool = False) -> State:
        """Record a failure before activation: event, optional bad mark, then failed."""
        u = self.update
        u.failure = detail[:1000]
        if mark_bad:
            self.a.persisted.failed[u.sha256] = u.command_id
        self.a.emit(kind, detail=detail[:1000], gates=gates or [])
        return State.FAILED

    # -- the phases ----------------------------------------------------------------------------
    def handle_fetching(self) -> State | None:
        """Refresh TUF metadata, match the assignment to the signed target, download it."""
        u = self.update
        a = self.a
        a.checkpoint(State.FETCHING, "start")
        try:
            a.trust.refresh()
            record = a.trust.get_target(u.target_name)
            check_assignment(types.SimpleNamespace(command_id=u.command_id, target_name=u.target_name, target_sha256=u.sha256, target_length=u.length), record)
            a.floor.check(record.bundle_name, record.release)
            if record.profile and record.profile != a.profile.name:
                raise BundleError(f"{record.name} was built for profile {record.profile!r}; this device runs {a.profile.name!r}")
            a.checkpoint(State.FETCHING, "verified-target")
            path = a.download_path(u.sha256)
            if not path.exists():
                a.trust.download_target(record, path)
        except RepositoryUnavailableError as e:
            u.attempts += 1
            a.save_state()
            if u.attempts < MAX_FETCH_ATTEMPTS:
                log.warning("%s: fetch attempt %d failed: %s", a.device_id, u.attempts, e)
                a.wait_before_retry(u.attempts)
                return State.FETCHING
            return self._fail(EventKind.INSTALL_FAILED, f"repository unreachable after {u.attempts} attempts: {e}")
        except (TrustError, BundleError) as e:
            return self._fail(EventKind.BUNDLE_REJECTED, f"{type(e).__name__}: {e}")
        u.name, u.version, u.release = record.bundle_name, record.version, record.release
        u.target = record.to_dict()
        a.checkpoint(State.FETCHING, "downloaded")
        return State.VERIFYING

    def handle_verifying(self) -> State | None:
        """Verify the downloaded file against the signed target, and its manifest against this device."""
        u, a = self.update, self.a
        a.checkpoint(State.VERIFYING, "start")
        path = a.download_path(u.sha256)
        if a.store.has(u.sha256):
            return State.INSTALLING  # verified and installed before a restart
        if not path.exists() or u.target is None:
            return State.FETCHING
        record = TargetRecord(name=u.target["name"], length=u.target["length"], sha256=u.target["sha256"], custom=u.target.get("custom", {}), hashes={"sha256": u.target["sha256"]})
        try:
            verdict = verify_bundle_file(path, record)
            m = verdict.manifest
            if m.profile != a.profile.name:
                raise BundleError(f"bundle {m.name} {m.version} is for profile {m.profile!r}; this device runs {a.profile.name!r}")
            if m.runtime != a.profile.runtime.name:
                raise BundleError(f"bundle {m.name} {m.version} needs runtime {m.runtime!r}; profile {a.profile.name} uses {a.profile.runtime.name!r}")
        except (TrustError, BundleError) as e:
            a.discard_download(u.sha256)
            return self._fail(EventKind.BUNDLE_REJECTED, f"{type(e).__name__}: {e}", mark_bad=False)
        a.checkpoint(State.VERIFYING, "verified")
        return State.INSTALLING

    def handle_installing(self) -> State | None:
        """Extract into the content-addressed store (all or nothing)."""
        u, a = self.update, self.a
        a.checkpoint(State.INSTALLING, "start")
        if not a.store.has(u.sha256):
            path = a.download_path(u.sha256)
            if not path.exists():
                return State.FETCHING
            try:
                a.store.install(path, u.sha256)
            except StoreFullError as e:
                a.discard_download(u.sha256)
                return self._fail(EventKind.INSTALL_FAILED, str(e))
            except (BundleError, StoreError) as e:
                a.discard_download(u.sha256)
                return self._fail(EventKind.BUNDLE_REJECTED, f"{type(e).__name__}: {e}")
        a.checkpoint(State.INSTALLING, "installed")
        a.emit(EventKind.INSTALLED)
        return State.SELF_TESTING

    def handle_self_testing(self) -> State | None:
        """Golden vectors, load time, latency, memory; nothing is activated on failure."""
        u, a = self.update, self.a
        a.checkpoint(State.SELF_TESTING, "start")
        report = a.self_test(u.sha256, keep_runtime=True)
        a.checkpoint(State.SELF_TESTING, "tested")
        if not report.passed:
            return self._fail(EventKind.SELF_TEST_FAILED, report.summary(), gates=report.gates, mark_bad=True)
        a.emit(EventKind.SELF_TEST_PASSED, gates=report.gates, detail=report.summary())
        current = a.store.current()
        # Remember what to go back to *before* the swap: after a crash in activating the record says it.
        u.previous_sha256 = current if current != u.sha256 else u.previous_sha256
        return State.ACTIVATING

    def handle_activating(self) -> State | None:
        """Swap the ``current`` link to the new version and serve it."""
        u, a = self.update, self.a
        a.checkpoint(State.ACTIVATING, "start")
        if u.previous_sha256 and a.store.has(u.previous_sha256):
            a.store.set_previous(u.previous_sha256)
        a.checkpoint(State.ACTIVATING, "previous-linked")
        # ---- POINT OF NO RETURN -------------------------------------------------------------
        # After this swap the new version is what `current` names: from here on a failure or a
        # crash no longer fails the update quietly, it rolls back (ERROR_POLICY, RECOVERY).
        a.store.set_current(u.sha256)
        a.checkpoint(State.ACTIVATING, "swapped")
        # Open the probation window *before* the new version serves: every request it answers is
        # watched. Opened after the swap, the time spent loading the previous version for shadow
        # runs (~70 ms for a 20 MB model) left live requests to the new version unobserved;
        # bench/agent.py sent its NaN-triggering request there and the faulty version committed.
        a.end_probation()
        a.probation_monitor()  # reuses the still-serving old version for shadow runs
        a.serve_current()
        a.emit(EventKind.ACTIVATED)
        a.checkpoint(State.ACTIVATING, "serving")
        return State.PROBATION

    def handle_probation(self) -> State | None:
        """Watch the new version; commit when the window passes, roll back when a gate fails."""
        u, a = self.update, self.a
        if u.probation_restarts > a.config.probation.max_restarts:
            gate = GateResult(gate="agent_restarts", passed=False, measured=float(u.probation_restarts), threshold=float(a.config.probation.max_restarts), detail="the agent restarted during probation")
            u.gates = [gate.to_dict()]
            u.rollback_reason = "agent restarted during probation"
            a.emit(EventKind.PROBATION_FAILED, gates=[gate], detail=u.rollback_reason)
            return State.ROLLING_BACK
        monitor = a.probation_monitor()
        verdict = monitor.evaluate(a.clock())
        a.checkpoint(State.PROBATION, "evaluated")
        if verdict is None:
            return State.PROBATION  # window still open: stay
        if not verdict.passed:
            failed = verdict.failed_gates
            u.gates = [g.to_dict() for g in verdict.gates]
            u.rollback_reason = "probation gate failed: " + ", ".join(g.gate for g in failed)
            a.emit(EventKind.PROBATION_FAILED, gates=verdict.gates, detail=u.rollback_reason)
            return State.ROLLING_BACK
        a.emit(EventKind.PROBATION_PASSED, gates=verdict.gates)
        return State.COMMITTED

    def handle_committed(self) -> None:
        """Mark good: raise the release floor, drop what is no longer needed (idempotent)."""
        u, a = self.a.persisted.update, self.a
        a.checkpoint(State.COMMITTED, "start")
        if u is not None:
            if u.name:
                a.floor.raise_to(u.name, u.release or 0)
            a.persisted.failed.pop(u.sha256, None)
            if not u.reported:
                a.emit(EventKind.COMMITTED)  # at least once: spooled before the flag is saved
                u.reported = True
                a.save_state()
            a.discard_download(u.sha256)
        a.end_probation()
        # The version just replaced stays as `previous` (a console rollback order can still use it).
        a.store.gc()
        a.checkpoint(State.COMMITTED, "clean")
        return None

    def handle_rolling_back(self) -> State:
        """Mark bad: point ``current`` back at the previous version and serve it (idempotent)."""
        u, a = self.update, self.a
        a.checkpoint(State.ROLLING_BACK, "start")
        a.persisted.failed[u.sha256] = u.command_id
        a.save_state()
        prev = u.previous_sha256 if u.previous_sha256 and a.store.has(u.previous_sha256) else None
        a.store.set_current(prev)  # None: there was no earlier version; serve nothing rather than a bad one
        a.checkpoint(State.ROLLING_BACK, "swapped")
        a.serve_current()  # the shadow session of the previous version, when probation had one
        a.end_probation()
        a.store.set_previous(None)  # neither the bad version nor the one now current
        gates = [GateResult.parse(g) for g in (u.gates or [])]
        a.emit(EventKind.ROLLED_BACK, gates=[g for g in gates if not g.passed] or gates, detail=u.rollback_reason or "rolled back")
        a.checkpoint(State.ROLLING_BACK, "served")
        return State.IDLE if u.reason == ROLLBACK_COMMAND else State.FAILED

    def handle_failed(self) -> None:
        """The update failed; the version still current keeps serving. Clean up (idempotent)."""
        a = self.a
        a.checkpoint(State.FAILED, "start")
        u = a.persisted.update
        if u is not None:
            a.discard_download(u.sha256)
        a.end_probation()
        a.store.gc()
        return None

    def _rest(self) -> None:
        self.a.store.gc()
        return None

