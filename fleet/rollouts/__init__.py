"""Staged rollouts (hawkBit's model): status enums, settings, gates, the reconciler, the service API."""
