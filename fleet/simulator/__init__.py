"""The device simulator: many real agents with light runtimes, each with its own MQTT session.

- :mod:`.faults`     fault specs (NaN, slow, crash, offline per bundle version), parsed and drawn
- :mod:`.runtime`    shared in-process model functions (onnxruntime session or golden lookup) + faults
- :mod:`.pool`       one network thread driving many paho clients (the agent's Session protocol)
- :mod:`.repocache`  per-process verified repository cache (a documented simulation shortcut)
- :mod:`.device`     one simulated device: the real Agent + traffic + the offline fault
- :mod:`.worker`     one simulator process: devices, session pool, tick threads
- :mod:`.controller` the fleet over several processes; :mod:`.cli` ``edgeops fleet simulate``

The simulator is the one place where the fleet wing imports the agent (DESIGN.md, floors).
"""

from __future__ import annotations

__all__ = ["SimSettings", "Simulator", "parse_faults"]


def __getattr__(name: str):
    # Lazy: importing the package must not import paho or the agent.
    if name == "SimSettings":
        from edgeops.fleet.simulator.settings import SimSettings

        return SimSettings
    if name == "Simulator":
        from edgeops.fleet.simulator.controller import Simulator

        return Simulator
    if name == "parse_faults":
        from edgeops.fleet.simulator.faults import parse_faults

        return parse_faults
    raise AttributeError(name)
