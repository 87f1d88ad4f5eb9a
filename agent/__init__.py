"""edgeops.agent: the device daemon.

It fetches signed bundles (TUF, over MQTT or HTTP), installs them into a content-addressed
store, self-tests them, activates them by an atomic link swap, watches them in probation and
rolls back by itself; it serves inferences on a local API and reports telemetry through a
bounded on-disk spool. Modules, one job each:

- config        the TOML configuration (typed schemas, edgeops.schema)
- statefile     the persisted state (by name, atomic writes)
- machine       the install state machine: handlers, error policy, recovery table
- store         the content-addressed model store with current/previous links
- runtimes      onnxruntime / LiteRT runtimes, loaded lazily
- selftest      golden vectors, load time, latency, memory before activation
- probation     the gates after activation (error rate, NaN, latency, shadow agreement)
- telemetry     per-interval metrics; spool: the SQLite outbox; outbox: QoS 1 sender
- session       the paho-mqtt session; mqtt_transport: repository files over MQTT
- api / client  the local inference API and its Python client
- core          :class:`Agent`, which ties them together (reusable, many per process)
- cli           `edgeops agent run|status`

Installs with ``pip install edgeops[agent]``: nothing here imports torch, onnx or the converters.
"""

from __future__ import annotations

__all__ = ["Agent", "AgentHooks", "load_config"]


def __getattr__(name: str):
    # Lazy, so `import edgeops.agent` stays cheap (no paho, no onnxruntime).
    if name in ("Agent", "AgentHooks"):
        from edgeops.agent import core

        return getattr(core, name)
    if name == "load_config":
        from edgeops.agent.config import load_config

        return load_config
    raise AttributeError(name)
