"""Layering that the import graph must keep: a leaf stays a leaf, and the modules low in the
house (settings, catalog, rules) do not pull in the engine."""

from __future__ import annotations

import json
import subprocess
import sys

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
