"""Staged rollouts (hawkBit's model): status enums, settings, gates, the reconciler, the service API."""

# gates registered outside gates.py (their module registers them on import)
from edgeops.fleet.rollouts import drift_gate  # noqa: E402,F401
from edgeops.fleet.rollouts import output_gates  # noqa: E402,F401
