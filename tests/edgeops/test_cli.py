"""The CLI: version, help on every command, lazy loading keeps the device install light."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from edgeops import __version__
from edgeops.cli import COMMANDS, cli


def test_version():
    out = CliRunner().invoke(cli, ["--version"])
    assert out.exit_code == 0 and __version__ in out.output


def test_help_on_every_command():
    runner = CliRunner()
    for name in COMMANDS:
        out = runner.invoke(cli, [name, "--help"])
        assert out.exit_code == 0, (name, out.output)
        assert "Usage" in out.output


def test_cli_import_does_not_load_build_stack():
    code = "import sys, edgeops.cli; bad = [m for m in ('torch', 'onnx', 'edgeops.converters') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_usage_error_exit_code():
    out = subprocess.run([sys.executable, "-m", "edgeops.cli", "profiles", "show"], capture_output=True, text=True)
    assert out.returncode == 2
    out = subprocess.run([sys.executable, "-m", "edgeops.cli", "profiles", "show", "nope"], capture_output=True, text=True)
    assert out.returncode == 3 and "unknown hardware profile" in out.stderr
