"""Layering that the import graph must keep: nothing imports a layer above its own (the command
line, the wiring, the routers, the service), the shared modules use no backend, only the routers
read the wire models, a leaf stays a leaf, and the modules low in the house (settings, catalog,
rules) do not pull in the engine."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest


def _loaded_after_import(module: str) -> set[str]:
    """The imagegate modules loaded by importing `module` alone, in a fresh interpreter."""
    code = (f"import json, sys, {module}; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'imagegate')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    return set(json.loads(out.stdout))


def test_engine_options_is_a_leaf() -> None:
    # The settings and the catalog use the speed options' types; importing them must not
    # reach back into the project (where the import cycle used to run through speed.py).
    assert _loaded_after_import("imagegate.engine.options") == {
        "imagegate", "imagegate.engine", "imagegate.engine.options"}


@pytest.mark.parametrize("module", ["imagegate.settings", "imagegate.catalog", "imagegate.rules"])
def test_settings_catalog_and_rules_take_only_the_options_from_the_engine(module: str) -> None:
    engine = {name for name in _loaded_after_import(module) if name.startswith("imagegate.engine")}
    assert engine <= {"imagegate.engine", "imagegate.engine.options"}


# --------------------------------------------------------------------------------------------
# The house, read from the source (docs/architecture.md, "Layers"): the command line on top,
# then the wiring, the routers, the service, the backends, and the shared modules below them
# all. Every import counts, at the top of a file, inside a function or under TYPE_CHECKING.

SRC = Path(__file__).resolve().parent.parent / "src" / "imagegate"

ABOVE = {
    "service": {"api", "app", "cli", "__main__"},
    "api": {"app", "cli", "__main__"},
    "app": {"cli", "__main__"},
    "cli": {"__main__"},
}
"""Each layer, and the only places that may import it besides itself."""

BACKENDS = {"providers", "engine", "accounts", "storage"}
SHARED = {"protocol", "net", "imaging", "labels", "settings", "errors", "catalog", "rules",
          "generation", "pricing", "moderation", "aspect_ratios"}
"""What every layer may use, and which uses none of them: no backend, nothing above."""
LEAVES = {"imagegate.engine.options"}
"""Backend modules that import nothing of the project's, so anything may use them."""


def _module_name(path: Path) -> str:
    parts = ["imagegate", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Every module of the package -> the package's modules it imports (`from X import m`
    counts as importing module X.m where there is one, else X)."""
    files = {_module_name(path): path for path in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    source = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    source = node.module or ""
                for alias in node.names:
                    named = f"{source}.{alias.name}"
                    targets.add(named if named in files else source)
        graph[module] = {t for t in targets if t.split(".")[0] == "imagegate" and t != module}
    return graph


def _part(module: str) -> str:
    """The part of the house a module belongs to: `imagegate.api.deps` -> `api`."""
    return module.split(".")[1] if "." in module else ""


GRAPH = _import_graph()


def _importers(wanted: Callable[[str], bool]) -> dict[str, set[str]]:
    return {module: {t for t in targets if wanted(t)} for module, targets in GRAPH.items()
            if any(wanted(t) for t in targets)}


def test_the_import_graph_sees_every_kind_of_import() -> None:
    assert "imagegate.api.images" in GRAPH["imagegate.app"]  # from .api import (images, ...)
    assert "imagegate.engine.worker" in GRAPH["imagegate.providers.local"]  # in a function
    assert "imagegate.providers.base" in GRAPH["imagegate.model_info"]  # under TYPE_CHECKING
    assert "imagegate" in GRAPH["imagegate.cli"]  # from .. import __version__
    assert "imagegate.service" in GRAPH["imagegate.api.deps"]


@pytest.mark.parametrize("layer", list(ABOVE))
def test_nothing_below_a_layer_imports_it(layer: str) -> None:
    importers = _importers(lambda target: _part(target) == layer)
    below = {module: targets for module, targets in importers.items()
             if _part(module) not in {layer, *ABOVE[layer]}}
    assert not below, f"imported from below {layer}: {below}"


def test_shared_modules_import_no_backend() -> None:
    reaching = {module: targets for module, targets in _importers(
                    lambda target: _part(target) in BACKENDS and target not in LEAVES).items()
                if _part(module) in SHARED}
    assert not reaching, f"shared modules importing a backend: {reaching}"


def test_only_the_routers_read_the_wire_models() -> None:
    # The service and everything below it speak GenerationRequest, never the wire's models.
    readers = {module for module in _importers(lambda target: _part(target) == "protocol")
               if _part(module) not in {"protocol", "api"}}
    assert not readers, f"wire models imported outside api/: {sorted(readers)}"


def test_labels_use_nothing_of_the_project_but_its_errors() -> None:
    # The labels are put in and read back by the service, the command line and the tests alike,
    # and must not pull settings, accounts or storage in with them.
    outside = {module: {t for t in targets if _part(t) != "labels"}
               for module, targets in GRAPH.items() if _part(module) == "labels"}
    allowed = {"imagegate", "imagegate.errors"}  # the package's version; APIError
    reaching = {module: targets - allowed for module, targets in outside.items()
                if targets - allowed}
    assert not reaching, f"labels importing the project: {reaching}"
