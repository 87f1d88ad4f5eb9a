"""A device installs edgeops[agent] only: the agent (and `edgeops agent`) must run without
torch, the onnx package, or the converters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BLOCKER = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'torch', 'onnx', 'onnxscript', 'litert_torch'} or name.startswith('edgeops.converters'):
            raise ModuleNotFoundError(f'device install must not import {name}')  # as if not installed
sys.meta_path.insert(0, Block())
"""


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + code], cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=120)


def test_agent_modules_import_without_the_build_stack():
    r = run(
        "import edgeops.agent\n"
        "from edgeops.agent import core, api, client, cli, session, mqtt_transport, machine, runtimes\n"
        "import onnxruntime, paho.mqtt.client\n"
        "print('ok')\n"
    )
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_agent_cli_help_runs_without_the_build_stack():
    r = run("import sys\nsys.argv = ['edgeops', 'agent', '--help']\nfrom edgeops.cli import main\nmain()\n")
    assert r.returncode == 0 and "run" in r.stdout and "status" in r.stdout, r.stderr


def test_agent_imports_from_a_source_checkout_without_install():
    """PYTHONPATH=. on a checkout (no `pip install -e`): the wings still resolve under edgeops."""
    r = run(
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in type(f).__module__.lower() and 'editable' not in repr(f).lower()]\n"
        "for name in [m for m in sys.modules if m == 'edgeops' or m.startswith('edgeops.')]:\n"
        "    del sys.modules[name]\n"
        "sys.path.insert(0, '.')\n"
        "import edgeops.agent.core, edgeops.agent.cli\n"
        "from edgeops.profiles import builtin_profiles_dir\n"
        "assert edgeops.agent.__file__.endswith('agent/__init__.py'), edgeops.agent.__file__\n"
        "assert (builtin_profiles_dir() / 'raspberry-pi-5.toml').is_file()\n"
        "print('ok')\n"
    )
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_resident_agent_keeps_tuf_cryptography_and_pydantic_out():
    """TUF runs in a worker process (edgeops.trust.worker); commands verify with PyNaCl; the
    shared schemas are msgspec Structs (edgeops.schema). The resident agent, its API, session
    and state machine import none of the TUF stack and no pydantic (edgeops[agent] does not
    even install it)."""
    r = run(
        "import sys\n"
        "from edgeops.agent import core, api, cli, config, session, mqtt_transport, machine, runtimes, statefile\n"
        "from edgeops import bundle, profiles, protocol\n"
        "from edgeops.trust import commands, pubkeys, worker, targets, verify\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tuf', 'securesystemslib', 'cryptography', 'pydantic', 'pydantic_core'}))\n"
    )
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
