"""experiments/processes (Flower's processes by PID) imports nothing else of the project.

Read with ``ast``, not imported: every ``import``/``from`` anywhere in a module (also inside
functions) names the standard library, a third-party package or experiments.processes itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
PROCESSES = REPO / "experiments" / "processes"
PACKAGE = "experiments.processes"
PROJECT = sorted(p.name for p in REPO.iterdir() if p.is_dir() and (p / "__init__.py").is_file())
MODULES = sorted(PROCESSES.glob("*.py"))


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every import in ``path``."""
    package = PACKAGE.split(".")
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against experiments.processes
                base = package[: len(package) - node.level + 1]
                name = ".".join([*base, *([node.module] if node.module else [])])
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return found


def _outside(name: str) -> bool:
    inside = name == PACKAGE or name.startswith(PACKAGE + ".")
    return name.split(".")[0] in PROJECT and not inside


def test_the_project_packages_are_found() -> None:
    assert {"experiments", "privacy", "tasks", "protocol"} <= set(PROJECT)
    assert {m.stem for m in MODULES} >= {"launcher", "superlink", "supernode", "proxy", "certs"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_processes_imports_only_itself_from_the_project(path: Path) -> None:
    bad = [f"{path.name}:{line} imports {name}" for line, name in _imports(path) if _outside(name)]
    assert not bad, "experiments/processes must not import the rest of fedpriv:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    "source",
    [
        "from experiments.config import to_settings",
        "import privacy.ledger_file",
        "def f():\n    from tasks.data import load_dataset",
        "from .. import config",
        "from ..run import main",
    ],
)
def test_the_check_sees_imports_from_outside(tmp_path: Path, source: str) -> None:
    module = tmp_path / "m.py"
    module.write_text(source + "\n")
    assert any(_outside(name) for _, name in _imports(module))


def test_the_check_allows_processes_stdlib_and_third_party(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "import json\nimport psutil\nfrom . import certs\nfrom .launcher import REPO\n"
        "from experiments.processes.certs import DevPki\n"
    )
    assert not any(_outside(name) for _, name in _imports(module))
