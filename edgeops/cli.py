"""The `edgeops` command line: one click group that loads each wing's commands lazily.

Loading is lazy so that `edgeops agent run` on a device never imports the converters (and so
never torch or onnx), and `edgeops --help` stays fast. Every :class:`EdgeopsError` becomes a
one-line message on stderr and the exit code of its class (see edgeops.errors).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import click

from edgeops import __version__
from edgeops.errors import EdgeopsError

# command name -> "module:attribute"; modules import their heavy dependencies inside functions.
COMMANDS: dict[str, str] = {
    "profiles": "edgeops.commands.profiles:profiles",
    "inspect": "edgeops.commands.inspect:inspect_bundle",
}


def register(name: str, target: str) -> None:
    """Add a lazily loaded command (used by the wings' command tables below)."""
    COMMANDS[name] = target


_WING_COMMANDS = {
    "build": "edgeops.converters.cli:build",
    "keys": "edgeops.trust.cli:keys",
    "publish": "edgeops.trust.cli:publish",
    "verify": "edgeops.trust.cli:verify",
    "repo": "edgeops.trust.cli:repo",
    "agent": "edgeops.agent.cli:agent",
    "fleet": "edgeops.fleet.cli:fleet",
    "rollout": "edgeops.fleet.cli:rollout",
    "data": "edgeops.fleet.data_cli:data",
    "hil": "edgeops.hil.cli:hil",
    "demo": "edgeops.demo.cli:demo",
}


def _module_exists(target: str) -> bool:
    """True when the command's module is installed, found without importing the wing."""
    parts = target.split(":")[0].split(".")
    try:
        spec = importlib.util.find_spec(".".join(parts[:2]))
    except ModuleNotFoundError:
        return False
    if spec is None or not spec.submodule_search_locations:
        return False
    rest = parts[2:]
    for location in spec.submodule_search_locations:
        base = Path(location).joinpath(*rest)
        if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
            return True
    return False


for _name, _target in _WING_COMMANDS.items():
    # A wing whose package is not part of this install simply has no command.
    if _module_exists(_target):
        register(_name, _target)


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        module = importlib.import_module(module_name)
        return getattr(module, attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeops")
def cli() -> None:
    """edgeops: build, sign, roll out and watch ML models on edge device fleets."""


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and map edgeops errors to their exit codes."""
    try:
        # With standalone_mode=False, click returns ctx.exit(code)'s code instead of exiting.
        rc = cli.main(args=argv, standalone_mode=False)
    except EdgeopsError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    sys.exit(rc if isinstance(rc, int) and not isinstance(rc, bool) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
