"""The floors of docs/architecture.md, checked by parsing every module's imports (nothing is imported).

Floors, lowest first:

- core: ``edgeops/`` except the top floor. Imports no wing and no top-floor module.
- wings: ``converters/``, ``agent/``, ``fleet/`` (installed as ``edgeops.converters``,
  ``edgeops.agent``, ``edgeops.fleet`` by setup.py). Import the core, not each other, and not the
  top floor; the fleet simulator reusing the agent (``edgeops.fleet.simulator`` →
  ``edgeops.agent``) is the one exception the design names.
- top: ``edgeops.cli``, ``edgeops.demo``, ``edgeops.hil``: may import anything.

Every import counts, including ones inside functions (a lazy import still couples the floors)
and ones under ``if TYPE_CHECKING``.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# import namespace -> folder, as setup.py maps them
NAMESPACE_FOLDERS = {
    "edgeops": "edgeops",
    "edgeops.converters": "converters",
    "edgeops.agent": "agent",
    "edgeops.fleet": "fleet",
}
WINGS = ("edgeops.converters", "edgeops.agent", "edgeops.fleet")
TOP = ("edgeops.cli", "edgeops.demo", "edgeops.hil")
# (importer prefix, imported prefix) pairs the design allows across wings
ALLOWED_CROSSINGS = {("edgeops.fleet.simulator", "edgeops.agent")}


@dataclass(frozen=True)
class Violation:
    module: str
    imported: str
    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.module} imports {self.imported}"


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def floor_of(module: str) -> tuple[int, str]:
    """(rank, name) of a module's floor: 0 core, 1 a wing (named), 2 top; (-1, '') outside edgeops."""
    if any(_within(module, t) for t in TOP):
        return 2, "top"
    for wing in WINGS:
        if _within(module, wing):
            return 1, wing
    if _within(module, "edgeops"):
        return 0, "core"
    return -1, ""


def module_name(namespace: str, folder: Path, path: Path) -> str:
    parts = list(path.relative_to(folder).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([namespace, *parts])


def imports_of(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, int]]:
    """Absolute names a module imports, relative imports resolved; ``from X import y`` yields X.y too."""
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                # a package's own __init__ is level 1 of itself; a plain module's is its parent
                drop = node.level - 1 if is_package else node.level
                base = base[: len(base) - drop] if drop else base
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, node.lineno))
            # `from edgeops import agent` imports a wing as surely as `import edgeops.agent`
            found += [(f"{target}.{alias.name}", node.lineno) for alias in node.names if alias.name != "*"]
    return found


def is_violation(importer: str, imported: str) -> bool:
    """True when `importer` reaching `imported` breaks the floors."""
    low, low_name = floor_of(importer)
    high, high_name = floor_of(imported)
    if low < 0 or high < 0:
        return False
    if high > low:
        return True
    if low == high == 1 and low_name != high_name:
        return not any(_within(importer, a) and _within(imported, b) for a, b in ALLOWED_CROSSINGS)
    return False


def check_tree(root: Path, namespace_folders: dict[str, str] = NAMESPACE_FOLDERS) -> list[Violation]:
    """Every import under `root` (laid out as `namespace_folders`) that goes up a floor or across wings."""
    violations = []
    for namespace, folder_name in namespace_folders.items():
        folder = root / folder_name
        for path in sorted(folder.rglob("*.py")):
            module = module_name(namespace, folder, path)
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            reported: set[int] = set()  # one violation per import statement
            for imported, line in imports_of(tree, module, path.name == "__init__.py"):
                if line not in reported and is_violation(module, imported):
                    reported.add(line)
                    violations.append(Violation(module, imported, path.relative_to(root), line))
    return violations


def test_repository_keeps_its_floors():
    violations = check_tree(REPO)
    assert not violations, "imports that break docs/architecture.md's floors:\n" + "\n".join(map(str, violations))


def test_repository_has_the_folders_it_checks():
    """A renamed folder must not make the check pass by finding nothing."""
    for folder in NAMESPACE_FOLDERS.values():
        assert list((REPO / folder).rglob("*.py")), folder
    for top in TOP:
        rel = Path(*top.split("."))
        assert (REPO / rel).is_dir() or (REPO / rel).with_suffix(".py").is_file(), top


# --- the checker itself, on a tiny synthetic tree ---------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for folder in NAMESPACE_FOLDERS.values():
        (tmp_path / folder).mkdir(exist_ok=True)
    return tmp_path


CLEAN = {
    "edgeops/__init__.py": "",
    "edgeops/errors.py": "",
    "edgeops/bundle.py": "from edgeops.errors import EdgeopsError\nfrom . import errors\n",
    "edgeops/cli.py": "import edgeops.agent.core\n",
    "edgeops/demo/__init__.py": "",
    "edgeops/demo/story.py": "from edgeops.fleet import db\nfrom edgeops.converters import x\n",
    "agent/__init__.py": "",
    "agent/core.py": "from edgeops.bundle import read\nfrom .store import Store\n",
    "agent/store.py": "",
    "fleet/__init__.py": "",
    "fleet/db.py": "from edgeops.trust import verify\n",
    "fleet/simulator/__init__.py": "",
    "fleet/simulator/device.py": "from edgeops.agent.core import Agent\n",
    "converters/__init__.py": "",
}


def test_checker_passes_a_clean_tree(tmp_path):
    assert check_tree(_tree(tmp_path, CLEAN)) == []


def test_checker_catches_core_importing_a_wing(tmp_path):
    root = _tree(tmp_path, {**CLEAN, "edgeops/bundle.py": "def f():\n    from edgeops.agent import store\n"})
    [v] = check_tree(root)
    assert (v.module, v.imported, v.line) == ("edgeops.bundle", "edgeops.agent", 2)


def test_checker_catches_from_edgeops_import_wing(tmp_path):
    root = _tree(tmp_path, {**CLEAN, "edgeops/errors.py": "from edgeops import fleet\n"})
    assert [v.imported for v in check_tree(root)] == ["edgeops.fleet"]


def test_checker_catches_a_wing_importing_another(tmp_path):
    root = _tree(tmp_path, {**CLEAN, "fleet/db.py": "import edgeops.converters.graph\n"})
    assert [(v.module, v.imported) for v in check_tree(root)] == [("edgeops.fleet.db", "edgeops.converters.graph")]


def test_checker_allows_only_the_simulator_to_reach_the_agent(tmp_path):
    root = _tree(tmp_path, {**CLEAN, "fleet/db.py": "from edgeops.agent.core import Agent\n"})
    assert [v.module for v in check_tree(root)] == ["edgeops.fleet.db"]


def test_checker_catches_core_or_wing_importing_the_top_floor(tmp_path):
    root = _tree(
        tmp_path,
        {**CLEAN, "edgeops/bundle.py": "from edgeops.demo import story\n", "agent/core.py": "import edgeops.hil\n"},
    )
    assert sorted((v.module, v.imported) for v in check_tree(root)) == [
        ("edgeops.agent.core", "edgeops.hil"),
        ("edgeops.bundle", "edgeops.demo"),
    ]


def test_checker_resolves_relative_imports(tmp_path):
    # edgeops/trust/x.py doing `from .. import agent` reaches edgeops.agent
    root = _tree(tmp_path, {**CLEAN, "edgeops/trust/__init__.py": "", "edgeops/trust/x.py": "from .. import agent\n"})
    assert [v.imported for v in check_tree(root)] == ["edgeops.agent"]
