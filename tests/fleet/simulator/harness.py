"""What the simulator's end-to-end tests share: a real console on a private mosquitto and a
simulated fleet of real agents, started and torn down together, and the rollout CLI."""

from __future__ import annotations

import contextlib
import json
import uuid
from pathlib import Path
from typing import Iterator

from click.testing import CliRunner

from edgeops.fleet.cli import rollout
from edgeops.fleet.config import config_from_dict
from edgeops.fleet.console import FleetConsole
from edgeops.fleet.registry import get_device, register_devices
from edgeops.fleet.simulator.controller import Simulator
from edgeops.fleet.simulator.settings import SimSettings
from tests.support.broker import TestBroker
from tests.support.wait import wait_for


def cli(*args) -> dict:
    """`edgeops rollout ARGS --json` in-process; the parsed JSON (exit code 0 asserted)."""
    res = CliRunner().invoke(rollout, list(args), catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def run_to_end(env: dict, rollout_id: str, timeout: float = 60) -> dict:
    """`rollout status --json` once the rollout has ended (finished, paused or aborted); ``env``
    holds the ``console`` (woken each look, so its reconciler does not wait out its interval)
    and the ``api`` arguments (--url, --token)."""
    def check():
        env["console"].wake()
        r = cli("status", rollout_id, *env["api"], "--json")
        return r if r["status"] in ("finished", "paused", "aborted") else None

    return wait_for(check, timeout, 0.4, f"rollout {rollout_id} to end")


@contextlib.contextmanager
def console_and_fleet(tmp_path: Path, repo_dir: Path, keys_dir: Path, token: str, offline_timeout_s: float, with_profile: bool = True, **sim) -> Iterator[tuple[FleetConsole, Simulator, SimSettings]]:
    """A console (SQLite, ``repo_dir``) and ``SimSettings(**sim)`` devices of tag site=berlin on one
    private mosquitto, every device enrolled (with its profile unless ``with_profile`` is False:
    then the console learns it from the device) and online. Everything stops on exit."""
    broker = TestBroker().start()
    cfg = config_from_dict(
        {
            "broker": {"url": broker.url, "client_id": f"console-{uuid.uuid4().hex[:6]}"},
            "database": {"url": f"sqlite:///{tmp_path / 'fleet.db'}"},
            "repository": {"dir": str(repo_dir), "keys_dir": str(keys_dir)},
            "api": {"bind": "127.0.0.1:0", "tokens": [token]},
            "rollouts": {"reconcile_interval_s": 0.3, "offline_timeout_s": offline_timeout_s},
            "ingest": {"flush_interval_s": 0.05},
            "base_dir": str(tmp_path),
        }
    )
    console = FleetConsole(cfg)
    console.db.create_all()
    settings = SimSettings(broker_url=broker.url, root=str(repo_dir / "metadata" / "1.root.json"), workdir=str(tmp_path / "sim"), processes=0,
                           tags={"site": "berlin"}, **sim)
    register_devices(console.db, [{"id": d, "tags": {"site": "berlin"}, **({"profile": settings.profile} if with_profile else {})} for d in settings.all_device_ids()])
    console.start()
    sim_ = Simulator(settings).start()
    try:
        sim_.wait_connected(30)
        wait_for(lambda: all(get_device(console.db, d)["online"] for d in settings.all_device_ids()), 30, 0.2, "devices online in the registry")
        yield console, sim_, settings
    finally:
        sim_.stop()
        console.stop()
        broker.stop()
