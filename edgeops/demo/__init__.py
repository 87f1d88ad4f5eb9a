"""`edgeops demo`: the whole product in one command, on one machine, in about a minute.

Train a small real model, build it with the packager, sign it into a TUF repository, start an
MQTT broker and the fleet console, run a fleet of real agents (state machine, TUF checks, DSSE
commands, self-test, probation, telemetry spool, onnxruntime) fed with live camera frames,
roll v1 out in waves, then roll out a v2 whose graph turns NaN on frames brighter than the lab
data ever was: the first wave's devices roll back by themselves, the console's gates halt the
rollout, and no device outside that wave ever sees v2. Then the console's drift scores find the
site whose cameras drift brightest, a signed capture policy brings that cohort's frames back,
and they are exported and become v3's validation data.

Modules (each one job):

- :mod:`~edgeops.demo.host`:    which profile this CPU can run (``--profile auto``)
- :mod:`~edgeops.demo.model`:   train, export, inject the v2 fault into the ONNX graph, build
- :mod:`~edgeops.demo.camera`:  live frames: held-out digits with camera gain drift (one site brighter)
- :mod:`~edgeops.demo.fleet`:   N real :class:`~edgeops.agent.core.Agent` instances + traffic
- :mod:`~edgeops.demo.story`:   the steps, their checks and timings
- :mod:`~edgeops.demo.loop`:    the monitoring loop: drift per site, capture, export, v3 built on it
- :mod:`~edgeops.demo.report`:  rich output, the final table, the JSON summary
- :mod:`~edgeops.demo.cli`:     the click command
"""
