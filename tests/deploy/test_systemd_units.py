"""deploy/systemd/: the console replica template unit and its target.

``systemd-analyze verify`` checks the units as systemd would load them (unknown keys, sections,
an ExecStart that is not executable), with ExecStart pointed at this checkout's ``edgeops``;
without systemd-analyze the units are parsed and their keys checked. Either way the ExecStart
command line is run with ``--help`` through the real CLI, so a renamed option fails here.
"""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
TEMPLATE = UNITS / "edgeops-fleet@.service"
TARGET = UNITS / "edgeops-fleet.target"
EDGEOPS = Path(sys.executable).parent / "edgeops"
HARDENING = {
    "NoNewPrivileges": "true", "ProtectSystem": "strict", "ProtectHome": "true", "PrivateTmp": "true", "PrivateDevices": "true",
    "CapabilityBoundingSet": "", "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "SystemCallArchitectures": "native",
}


def _parse(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value (systemd keys repeat)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = out.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and section is not None, f"{path}:{n}: not KEY=VALUE inside a section: {line!r}"
        section.setdefault(key.strip(), []).append(value.strip())
    return out


def _instance(tmp_path: Path, exec_path: Path) -> Path:
    """The template as instance ``a`` in tmp_path, ExecStart on ``exec_path``."""
    (tmp_path / TEMPLATE.name).write_text(TEMPLATE.read_text().replace("/usr/local/bin/edgeops", str(exec_path)))
    shutil.copyfile(TARGET, tmp_path / TARGET.name)
    inst = tmp_path / "edgeops-fleet@a.service"
    inst.symlink_to(TEMPLATE.name)
    return inst


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed (the parse test still runs)")
def test_systemd_analyze_verifies_the_units(tmp_path):
    inst = _instance(tmp_path, EDGEOPS)
    res = subprocess.run(["systemd-analyze", "verify", "--man=no", str(inst), str(tmp_path / TARGET.name)], capture_output=True, text=True, timeout=60)
    # warnings (an unknown key, a key in the wrong section) do not change the exit code
    assert res.returncode == 0 and "edgeops-fleet" not in res.stderr, res.stderr
    # and the check can fail: the same unit with an ExecStart that is not there
    (tmp_path / "broken").mkdir()
    broken = _instance(tmp_path / "broken", Path("/nonexistent/edgeops"))
    res = subprocess.run(["systemd-analyze", "verify", "--man=no", str(broken)], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "not executable" in res.stderr


def test_units_parse_with_hardening_and_a_real_command():
    unit = _parse(TEMPLATE)
    assert set(unit) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    for key, value in HARDENING.items():
        assert service.get(key) == [value], (key, service.get(key))
    assert service["User"] == ["edgeops-fleet"] and service["Restart"] == ["always"]
    assert "%i" in service["ExecStart"][0] and "%i" in service["EnvironmentFile"][0]
    assert unit["Install"]["WantedBy"] == ["edgeops-fleet.target"] and unit["Unit"]["PartOf"] == ["edgeops-fleet.target"]
    assert set(_parse(TARGET)) == {"Unit", "Install"}
    # ExecStart's options exist in the real CLI (a renamed option fails here)
    argv = shlex.split(service["ExecStart"][0].replace("%i", "a"))
    assert argv[:3] == ["/usr/local/bin/edgeops", "fleet", "serve"]
    res = subprocess.run([str(EDGEOPS), *argv[1:], "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for opt in argv[3:]:
        if opt.startswith("--"):
            assert opt in res.stdout, f"{opt} is not an option of `edgeops fleet serve`"
    # configparser reads it too (what tools that template units use)
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.read_string(TEMPLATE.read_text())
    assert cp["Service"]["ProtectSystem"] == "strict"
