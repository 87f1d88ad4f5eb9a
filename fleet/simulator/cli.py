"""`edgeops fleet simulate`: run a simulated fleet against a broker and a console.

Only click is imported at module level; paho, numpy and the agent load inside the command.
"""

from __future__ import annotations

import json
import signal
import tempfile
import threading
import time
from pathlib import Path

import click

from edgeops.errors import ConfigError


def _parse_tags(values: tuple[str, ...]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for value in values:
        for item in filter(None, (v.strip() for v in value.split(","))):
            key, eq, val = item.partition("=")
            if not eq or not key.strip():
                raise ConfigError(f"--tags {item!r}: expected key=value (e.g. --tags site=berlin,line=2)")
            tags[key.strip()] = val.strip()
    return tags


def _parse_profiles(value: str | None) -> dict[str, float]:
    """``--profiles NAME:SHARE[,NAME:SHARE...]`` (a bare NAME has share 1) -> {name: share}."""
    out: dict[str, float] = {}
    for item in filter(None, (v.strip() for v in (value or "").split(","))):
        name, colon, share = item.rpartition(":") if ":" in item else (item, "", "1")
        name = name.strip()
        try:
            value_f = float(share)
        except ValueError:
            raise ConfigError(f"--profiles {item!r}: share {share!r} is not a number (e.g. --profiles x86_64-avx512-vnni:0.5,x86_64-avx2:0.5)") from None
        if not name or not value_f > 0 or value_f == float("inf"):
            raise ConfigError(f"--profiles {item!r}: expected NAME:SHARE with a positive share (e.g. --profiles x86_64-avx512-vnni:0.5,x86_64-avx2:0.5)")
        if name in out:
            raise ConfigError(f"--profiles: profile {name!r} given twice")
        out[name] = value_f
    return out


def _root_from_config(config_path: str) -> Path:
    from edgeops.fleet.config import load_config

    cfg = load_config(config_path)
    return cfg.path(cfg.repository.dir) / "metadata" / "1.root.json"


def _summary_line(st: dict, elapsed: float) -> str:
    states = " ".join(f"{k}={v}" for k, v in st["states"].items())
    active = " ".join(f"{k}={v}" for k, v in st["active"].items())
    return f"[{elapsed:6.1f}s] {st['connected']}/{st['devices']} connected  states: {states}  active: {active}"


@click.command("simulate")
@click.option("--devices", "n_devices", type=click.IntRange(min=1), default=10, show_default=True, help="number of simulated devices")
@click.option("--broker", "broker_url", required=True, help="broker URL, mqtt://host:port (mqtts:// for TLS)")
@click.option("--root", "root", type=click.Path(dir_okay=False), default=None, help="TUF root.json devices trust (default: from --config's repository: metadata/1.root.json)")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, help="fleet.toml, to find the repository's root.json")
@click.option("--faults", default="", help="fault spec, e.g. 'nan:0.3@digits=2.0.0,slow:0.1@*=2.*,crash:0.05@digits=2.0.0,offline:0.02@digits=2.0.0'; '#profile=P' after a rule limits it to one profile's devices")
@click.option("--processes", type=click.IntRange(min=0), default=1, show_default=True, help="simulator processes (0: threads of this process)")
@click.option("--threads", type=click.IntRange(min=1), default=4, show_default=True, help="tick threads per process")
@click.option("--profile", default="x86_64-avx512-vnni", show_default=True, help="hardware profile every device reports (bundles must be built for it)")
@click.option("--profiles", "profiles", default=None, help="several profiles in one fleet, NAME:SHARE[,NAME:SHARE] (e.g. x86_64-avx512-vnni:0.5,x86_64-avx2:0.5); each device's is drawn deterministically from its number; overrides --profile")
@click.option("--tags", "tags", multiple=True, help="k=v[,k=v] tags of every device")
@click.option("--prefix", default="sim", show_default=True, help="device ids are PREFIX-00000, PREFIX-00001, ...")
@click.option("--first-index", type=click.IntRange(min=0), default=0, show_default=True, help="number of the first device id")
@click.option("--workdir", type=click.Path(file_okay=False), default=None, help="device data folders (default: a temp folder; /dev/shm is fastest)")
@click.option("--duration", type=float, default=None, help="seconds to run (default: until Ctrl-C)")
@click.option("--rate", type=click.FloatRange(min=0), default=1.0, show_default=True, help="live inferences per second per device")
@click.option("--telemetry-interval", type=click.FloatRange(min=0.1), default=10.0, show_default=True, help="seconds per telemetry batch")
@click.option("--runtime", type=click.Choice(["auto", "onnx", "openvino", "golden"]), default="auto", show_default=True, help="onnx / openvino: the real model on a shared onnxruntime session / compiled OpenVINO model; golden: numpy golden-vector lookup; auto: the bundle's own runtime where installed, else golden")
@click.option("--repository", default="mqtt", show_default=True, help="'mqtt' (fetch through the broker) or the console's HTTP repository URL")
@click.option("--mqtt-version", type=click.Choice(["auto", "5", "3.1.1"]), default="5", show_default=True, help="auto: 5, falling back to 3.1.1 per device when the broker refuses 5 (NATS, RabbitMQ)")
@click.option("--username", default=None, help="broker username (default: the device id when a password is given)")
@click.option("--password", envvar="EDGEOPS_SIM_PASSWORD", default=None, help="broker password for every device [env EDGEOPS_SIM_PASSWORD]")
@click.option("--cohort", "cohorts", multiple=True, help="cohorts every device obeys")
@click.option("--metadata-ttl", type=click.FloatRange(min=0), default=0.0, show_default=True, help="reuse timestamp.json within a process for this long (0: always ask the repository)")
@click.option("--verify-memo/--no-verify-memo", default=True, show_default=True, help="simulator processes remember successful verifications of identical bytes (signatures, canonical metadata, bundle files); failures are always recomputed")
@click.option("--connect-rate", type=click.FloatRange(min=1), default=500.0, show_default=True, help="new connections per second per process")
@click.option("--json", "as_json", is_flag=True, help="print the final figures as JSON")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="warning", show_default=True)
def simulate(n_devices, broker_url, root, config_path, faults, processes, threads, profile, profiles, tags, prefix, first_index, workdir, duration, rate, telemetry_interval, runtime, repository, mqtt_version, username, password, cohorts, metadata_ttl, verify_memo, connect_rate, as_json, log_level) -> None:
    """Run N simulated devices: the real agent state machine, trust checks, spool and probation,
    with light in-process runtimes, each device with its own MQTT session.

    Devices must be enrolled in the console (`edgeops fleet enroll`, or ingest.auto_register).
    """
    import logging

    from edgeops.fleet.simulator.controller import Simulator, raise_fd_limit
    from edgeops.fleet.simulator.faults import parse_faults
    from edgeops.fleet.simulator.settings import SimSettings

    logging.basicConfig(level=getattr(logging, log_level.upper()), format="%(levelname)s %(name)s: %(message)s")
    plan = parse_faults(faults)  # errors before anything starts
    shares = _parse_profiles(profiles)
    from edgeops.profiles import load_profile

    for name in shares or [profile]:
        load_profile(name)  # an unknown profile fails here, naming it, before any device starts
    if root is None:
        if config_path is None:
            raise ConfigError("give --root ROOT.json (the repository's metadata/1.root.json) or --config fleet.toml")
        root = str(_root_from_config(config_path))
    raise_fd_limit()
    settings = SimSettings(
        broker_url=broker_url,
        root=str(root),
        workdir=workdir or tempfile.mkdtemp(prefix="edgeops-sim-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None),
        devices=n_devices,
        prefix=prefix,
        first_index=first_index,
        profile=profile,
        profiles=shares,
        tags=_parse_tags(tags),
        cohorts=list(cohorts),
        faults=plan.describe() if plan else "",
        processes=processes,
        threads=threads,
        rate=rate,
        telemetry_interval_s=telemetry_interval,
        runtime=runtime,
        repository=repository,
        mqtt_version=mqtt_version,
        username=username,
        password=password,
        metadata_ttl_s=metadata_ttl,
        verify_memo=verify_memo,
        connect_rate=connect_rate,
    )
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *a: stop.set())
    t0 = time.monotonic()
    sim = Simulator(settings, log_level=log_level)
    if not as_json:
        click.echo(f"starting {n_devices} simulated devices in {max(processes, 1)} process(es); data in {settings.workdir}; faults: {plan.describe()}")
    sim.start()
    try:
        next_print = 0.0
        while not stop.is_set():
            elapsed = time.monotonic() - t0
            if duration is not None and elapsed >= duration:
                break
            if not as_json and elapsed >= next_print:
                click.echo(_summary_line(sim.stats(), elapsed))
                next_print = elapsed + 5.0
            stop.wait(0.2 if duration is None else min(0.2, max(0.0, duration - elapsed)))
    except KeyboardInterrupt:
        pass
    finally:
        st = sim.stats()
        sim.stop()
    st["elapsed_s"] = round(time.monotonic() - t0, 2)
    st["device_ids"] = [settings.device_id(0), settings.device_id(n_devices - 1)]
    st["faults"] = plan.describe()
    st["workdir"] = settings.workdir
    if as_json:
        click.echo(json.dumps(st, indent=2, sort_keys=True))
    else:
        click.echo(_summary_line(st, st["elapsed_s"]))
