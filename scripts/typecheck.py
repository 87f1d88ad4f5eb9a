"""Run mypy (configured in pyproject's [tool.mypy]) on the repository as its import names.

setup.py installs ``agent/``, ``fleet/`` and ``converters/`` as ``edgeops.agent``,
``edgeops.fleet`` and ``edgeops.converters`` (package-dir). mypy cannot follow that mapping
(nor the editable install's import hook), so it would see every ``edgeops.fleet.*`` import as
missing and type it ``Any``, silently weakening the check. This script lays out a temporary
``edgeops/`` of symlinks (the core's entries plus the wings) and points mypy at it.

    python scripts/typecheck.py            # the [tool.mypy] modules
    python scripts/typecheck.py -m edgeops.fleet.db   # others, with the same settings

Exit status is mypy's.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WINGS = {"agent": "agent", "fleet": "fleet", "converters": "converters"}  # edgeops.<name> -> folder


def import_tree(dest: Path) -> Path:
    """A folder holding ``edgeops/`` laid out by import name (symlinks into the repository)."""
    pkg = dest / "edgeops"
    pkg.mkdir()
    for entry in (REPO / "edgeops").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    for name, folder in WINGS.items():
        (pkg / name).symlink_to(REPO / folder)
    return dest


def main(argv: list[str]) -> int:
    """Run mypy with the repository's config inside an import-name tree; returns its exit status."""
    with tempfile.TemporaryDirectory(prefix="edgeops-typecheck-") as tmp:
        root = import_tree(Path(tmp))
        env = {**os.environ, "MYPYPATH": str(root)}
        cmd = [sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"), *argv]
        # run from the tree so mypy resolves `edgeops` there, not from the repository's folder
        return subprocess.run(cmd, cwd=root, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
