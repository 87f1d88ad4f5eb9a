"""The error hierarchy of edgeops and the CLI exit code of each class.

Every error a user can cause is an :class:`EdgeopsError` whose message names the file, field,
node or device at fault and what to do about it. The CLI maps each class to an exit code, so a
CI job can tell a failed gate from a broken input::

    EdgeopsError (1)
    ├── ConfigError (3)            bad profile, config file or option value
    │   └── ProfileError (3)       a hardware profile that does not validate
    ├── InputError (4)             a model or data file that cannot be used
    │   ├── ModelLoadError (4)     broken or unreadable model file
    │   ├── UnsupportedOperatorError (4)
    │   └── DataError (4)          calibration / validation data of wrong shape or dtype
    ├── GateFailedError (5)        a validation or health gate failed
    ├── BundleError (6)            a bundle file that is malformed
    ├── TrustError (7)             verification failed (see edgeops.trust.errors for the tree)
    ├── AgentError (8)             device agent failures
    ├── FleetError (9)             fleet console failures
    │   └── IllegalTransitionError (9)
    └── HilFailedError (10)        a hardware-in-loop run whose checks failed

Click's own usage errors keep exit code 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class EdgeopsError(Exception):
    """Base class of every error edgeops raises on purpose."""

    exit_code = 1


class ConfigError(EdgeopsError):
    """A configuration file, option or setting is invalid."""

    exit_code = 3


class ProfileError(ConfigError):
    """A hardware profile file does not validate; the message names file, key and allowed values."""


class InputError(EdgeopsError):
    """A model or data file given by the user cannot be used."""

    exit_code = 4


class ModelLoadError(InputError):
    """A model file is broken, unreadable or of an unknown format."""


class UnsupportedOperatorError(InputError):
    """A model uses an operator that the target profile cannot run."""


class DataError(InputError):
    """Calibration or validation data does not match the model's inputs."""


class GateFailedError(EdgeopsError):
    """A validation gate failed; ``failures`` lists what failed and by how much."""

    exit_code = 5

    def __init__(self, message: str, failures: list[dict] | None = None):
        super().__init__(message)
        self.failures = failures or []


class BundleError(EdgeopsError):
    """A bundle file is malformed or does not match its manifest."""

    exit_code = 6


class TrustError(EdgeopsError):
    """Verification of signed metadata, a bundle or a command failed."""

    exit_code = 7


class AgentError(EdgeopsError):
    """The device agent could not do what it was asked."""

    exit_code = 8


class FleetError(EdgeopsError):
    """The fleet console could not do what it was asked."""

    exit_code = 9


class IllegalTransitionError(FleetError):
    """A rollout or wave was asked to move to a status not allowed from its current one."""


class HilFailedError(EdgeopsError):
    """A hardware-in-loop run finished and at least one check failed."""

    exit_code = 10


@dataclass(frozen=True)
class FieldProblem:
    """The first problem of a pydantic ``ValidationError``: where (dotted field path), what, and the value given."""

    loc: str
    msg: str
    input: Any = None


def first_problem(error: Any, default_loc: str = "") -> FieldProblem:
    """The first of ``error.errors()`` (a pydantic ``ValidationError``), for a message that names the field.

    The one place that reads pydantic's error entries; each caller frames the message for its
    audience (``default_loc`` when the problem is with the whole object).
    """
    first = error.errors()[0]
    return FieldProblem(".".join(str(p) for p in first.get("loc", ())) or default_loc, str(first.get("msg", "")), first.get("input"))

