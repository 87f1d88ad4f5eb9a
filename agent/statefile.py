"""The persisted install state: which state the machine is in, and the update it works on.

The state is stored **by name** in ``<data_dir>/state.json``. Every write goes through the one
:func:`edgeops.trust.fsutil.atomic_write` (temporary file, fsync, ``os.replace``, directory
fsync), so after a crash the file is either the old or the new version, never a mix.
The machine writes the next state *before* it acts on it (see :mod:`edgeops.agent.machine`).
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

from typing import Annotated

from edgeops.errors import AgentError
from edgeops.schema import Meta, Schema, SchemaError, field
from edgeops.trust.fsutil import atomic_write


class State(str, Enum):
    """The install state machine's states."""

    IDLE = "idle"
    FETCHING = "fetching"
    VERIFYING = "verifying"
    INSTALLING = "installing"
    SELF_TESTING = "self-testing"
    ACTIVATING = "activating"
    PROBATION = "probation"
    COMMITTED = "committed"
    ROLLING_BACK = "rolling-back"
    FAILED = "failed"


# States in which no update is in progress: a new assignment may start from these.
RESTING = frozenset({State.IDLE, State.COMMITTED, State.FAILED})


class UpdateRecord(Schema):
    """The update in progress (or the last one): what, why, and how far it got.

    ``target`` is the TUF-verified target record (``TargetRecord.to_dict()``), ``gates`` the
    gate results that decided probation.
    """

    command_id: str
    command_seq: int = 0
    target_name: str
    sha256: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
    length: Annotated[int, Meta(ge=0)]
    name: str | None = None
    version: str | None = None
    release: int | None = None
    previous_sha256: str | None = None
    reason: str = ""
    failure: str = ""
    rollback_reason: str = ""
    target: dict | None = None
    gates: list[dict] = field(default_factory=list)
    reported: bool = False
    probation_started: float | None = None
    probation_restarts: int = 0
    attempts: int = 0


class PersistedState(Schema):
    """Contents of state.json."""

    format: int = 1
    state: State = State.IDLE
    update: UpdateRecord | None = None
    # sha256 -> command id that installed it: versions refused until a new command re-assigns them.
    failed: dict[str, str] = field(default_factory=dict)
    last_command_seq: int = 0


class StateFile:
    """Load and save :class:`PersistedState` at ``<data_dir>/state.json``."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> PersistedState:
        """The stored state, or a fresh idle one when there is no file yet."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return PersistedState()
        try:
            return PersistedState.parse_json(raw)
        except SchemaError as e:
            # Cannot happen through atomic writes; if it does (disk corruption), say where and how to recover.
            raise AgentError(f"{self.path}: state file is corrupt ({e}); move it aside to start idle") from e

    def save(self, state: PersistedState) -> None:
        """Persist atomically."""
        atomic_write(self.path, json.dumps(state.to_dict(), indent=2, sort_keys=True).encode())
