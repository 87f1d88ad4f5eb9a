"""The device simulator: many real agents with light runtimes, each with its own MQTT session.

- :mod:`.faults`     fault specs (NaN, slow, crash, offline per bundle version and profile), parsed and drawn
- :mod:`.runtime`    shared in-process model functions (onnxruntime session or golden lookup) + faults
- :mod:`.pool`       one network thread driving many paho clients (the agent's Session protocol)
- :mod:`.repocache`  per-process verified repository cache (a documented simulation shortcut)
- :mod:`.verifymemo` per-process memos of successful verifications of identical bytes (a shortcut)
- :mod:`.device`     one simulated device: the real Agent + traffic + the offline fault
- :mod:`.worker`     one simulator process: devices, session pool, tick threads
- :mod:`.controller` the fleet over several processes; :mod:`.cli` ``edgeops fleet simulate``

The simulator is the one place where the fleet wing imports the agent (DESIGN.md, floors).

Simulation shortcuts (each described in its module; none skips a check a real agent makes on
its own data: every device verifies its commands, runs its own TUF client, checks its own
downloaded file's length and sha256 against its signed target, installs, self-tests, runs its
probation window and spools its telemetry):

1. one model function per artifact per process, shared by its devices (:mod:`.runtime`): the
   real ONNX model (``onnx``) or the light numpy golden-vector lookup (``golden``, what the
   fleet benchmark uses), with the fault rules applied per device;
2. repository downloads through a per-process cache (:mod:`.repocache`): bundles and versioned
   metadata once per process; ``timestamp.json`` and "no newer root" answers shared among the
   devices whose latest command arrived before they were fetched;
3. successful verifications of identical bytes remembered per simulator process
   (:mod:`.verifymemo`: Ed25519 signatures, canonical metadata encoding, surplus-signature
   check, bundle member scan); failures are always recomputed; off in the caller's process;
4. timer-based agent settings loosened for an oversubscribed host and a short probation window
   (:data:`.settings.DEFAULT_AGENT_OVERRIDES`);
5. devices are ticked when they have something to do (:mod:`.device`: a command, a fetch answer,
   a (re)connect, the next telemetry flush or live inference; every 0.05 s while an update runs,
   every 0.2 s in probation) instead of on a fixed short period; device data on tmpfs in the
   benchmark (fsync is nearly free there).
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
