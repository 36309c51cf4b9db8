"""The import contract between the project's floors, and dependencies declared as imported.

Floors, bottom up: the ground floor (``userip`` without its CLI: config, errors, hashing,
atomic I/O, sidecars, and ``userip.baselines.config``, the schema of the config's ``baselines:``
section, which ``userip.config`` embeds), the stage libraries in pipeline order, the Prefect glue
(``tasks``, then ``flows``), the CLI (``userip.cli``, ``userip.cli.commands``) on top. A module
may import its own floor and the floors below; the libraries never import Prefect.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("dataprep", "profile_infer", "quantize", "feature_bank", "downstream", "baselines",
           "tasks", "flows")
LIBRARIES = tuple(f"userip.{f}" for f in FOLDERS[:6])
ROOF = ("userip.cli",)
# bottom to top; a module's floor is that of the longest prefix it matches
FLOORS = (("userip", "userip.baselines.config"), *((lib,) for lib in LIBRARIES), ("userip.tasks",), ("userip.flows",), ROOF)
# declared but only ever imported by another package, never by our code
RUNTIME_ONLY = {
    "gguf": "transformers reads the embedded SmolLM2 GGUF file with it",
    "accelerate": "transformers' device placement",
    "fastapi": "pinned for Prefect's server (prefect 3.8 breaks with fastapi >= 0.151)",
    "peft": "declared for the LLM baselines (baselines/), which import it",
}


def _modules() -> dict[str, Path]:
    """Every module of the package, by its import name (``userip.<folder>.<module>``)."""
    found = {}
    for top in ("userip", *FOLDERS):
        for path in sorted((REPO / top).rglob("*.py")) if (REPO / top).is_dir() else []:
            name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            found[name if top == "userip" else f"userip.{name}"] = path
    return found


def _imports(path: Path) -> set[str]:
    """Absolute names a module imports, at module level or inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def _floor(name: str) -> int:
    matches = [(len(p), i) for i, prefixes in enumerate(FLOORS)
               for p in prefixes if name == p or name.startswith(p + ".")]
    return max(matches)[1]


MODULES = _modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_floors(module: str) -> None:
    bare = sorted(n for n in _imports(MODULES[module]) if n.split(".")[0] in FOLDERS)
    assert not bare, f"{module} imports a stage package by its folder name, not userip.<name>: {bare}"
    own = _floor(module)
    ours = [n for n in _imports(MODULES[module]) if n.split(".")[0] == "userip"]
    upward = sorted(n for n in ours if _floor(n) > own)
    assert not upward, f"{module} (floor {FLOORS[own]}) imports from above: {upward}"
    if own <= len(LIBRARIES):  # ground floor and libraries
        prefect = sorted(n for n in _imports(MODULES[module]) if n.split(".")[0] == "prefect")
        assert not prefect, f"{module} is library code and imports Prefect: {prefect}"


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    def names(specs: list[str]) -> set[str]:
        return {re.split(r"[<>=!~\[ ;]", s, maxsplit=1)[0].lower().replace("_", "-") for s in specs}

    return names(project["dependencies"]), {k: names(v) for k, v in
                                            project.get("optional-dependencies", {}).items()}


def test_every_imported_distribution_is_declared_and_every_declared_one_is_used() -> None:
    main, extras = _declared()
    dists = packages_distributions()
    imported: dict[str, str] = {}
    for module, path in MODULES.items():
        for name in _imports(path):
            top = name.split(".")[0]
            if top == "userip" or top in sys.stdlib_module_names or top == "__future__":
                continue
            for dist in dists.get(top, [top.replace("_", "-")]):  # an extra not installed here
                imported.setdefault(dist.lower().replace("_", "-"), module)
    optional = set().union(*extras.values())
    undeclared = {d: m for d, m in imported.items() if d not in main | optional}
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
    unused = main - set(imported) - set(RUNTIME_ONLY)
    assert not unused, f"declared but imported nowhere in the library: {sorted(unused)}"


def test_the_wheel_lists_every_package() -> None:
    """pyproject.toml maps each stage folder to userip.<folder>; a sub-package missing from
    its ``packages`` list would be left out of the wheel."""
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    assert found == listed
