"""A real mosquitto running the broker config `edgeops fleet init/enroll/broker-cert` generate.

The fleet folder lives in a world-traversable temporary folder (pytest's tmp dirs are 0700), so
mosquitto started by root drops to its own user exactly as a packaged broker does, and reads
the generated files with the modes and group they were written with. Started as another user,
mosquitto keeps that user.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from click.testing import CliRunner

from edgeops.fleet.cli import fleet
from tests.support.broker import MOSQUITTO, terminate, wait_port

DROPS_TO_MOSQUITTO_USER = os.geteuid() == 0 and MOSQUITTO is not None and any(u.pw_name == "mosquitto" for u in pwd.getpwall())


def cli(*args) -> dict:
    """Run an `edgeops fleet` command with --json; its parsed output."""
    res = CliRunner().invoke(fleet, [*args, "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def fleet_folder() -> Path:
    """A fresh temporary folder mosquitto's user can traverse (0755); remove it with shutil.rmtree."""
    path = Path(tempfile.mkdtemp(prefix="edgeops-fleet-"))
    path.chmod(0o755)
    return path


class GeneratedBroker:
    """mosquitto with ``include_dir ENROLL/broker`` and nothing else edgeops-specific."""

    def __init__(self, enroll_dir: Path):
        self.broker_dir = Path(enroll_dir) / "broker"
        self.workdir = Path(tempfile.mkdtemp(prefix="edgeops-mosq-"))
        self.workdir.chmod(0o755)
        self.log = self.workdir / "broker.log"
        self.proc: subprocess.Popen | None = None

    def start(self, *ports: int) -> "GeneratedBroker":
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            "persistence false\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type information\n"
            f"include_dir {self.broker_dir}\n"
        )
        conf.chmod(0o644)
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))
        try:
            for port in ports:
                wait_port(port, 10)
        except TimeoutError:
            self.proc.kill()
            raise AssertionError(f"mosquitto did not start on the generated config:\n{self.log.read_text()}") from None
        return self

    def reload(self) -> None:
        """SIGHUP, as the docs tell the operator after enrolling; waits until mosquitto re-read its files."""
        before = self.log.read_text().count("Reloading config")
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while self.log.read_text().count("Reloading config") == before and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # the reload is logged before the files are read

    def user(self) -> str:
        """The user the broker process runs as."""
        uid = os.stat(f"/proc/{self.proc.pid}").st_uid
        return pwd.getpwuid(uid).pw_name

    def stop(self) -> None:
        terminate(self.proc)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "GeneratedBroker":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
