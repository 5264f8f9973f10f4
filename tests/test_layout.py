"""Imports point down (docs/design.md): a module imports only gapless modules of lower layers.

Layers, from the design's order "config, metrics, dropout, runtime, packing -> model, data, schedules -> corpora, decode,
checkpoint -> strategies, prepare, evaluate, diagnose -> train, explain, plots, serve -> quickstart
-> cli".
``model`` imports only torch, config and dropout (torch-only building blocks). A new module must be given a layer here.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gapless"

LAYERS = [
    {"config", "metrics", "dropout", "runtime", "packing"},
    {"model", "data", "schedules"},
    {"corpora", "decode", "checkpoint"},
    {"strategies", "prepare", "evaluate", "diagnose"},
    {"train", "explain", "plots", "serve"},
    {"quickstart"},
    {"cli"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}
# the package entry points re-export from anywhere
ENTRY = {"__init__", "__main__"}
# third-party imports allowed in model.py (beyond the standard library)
MODEL_EXTERNAL = {"torch"}


def _modules() -> list[str]:
    return sorted(p.stem for p in PACKAGE.glob("*.py"))


def gapless_imports(path: Path) -> set[str]:
    """Names of the gapless modules ``path`` imports (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:  # from .x import y / from . import x
                if node.module:
                    found.add(node.module.split(".")[0])
                else:
                    found.update(a.name.split(".")[0] for a in node.names)
            elif node.level == 0 and node.module and node.module.split(".")[0] == "gapless":
                parts = node.module.split(".")
                if len(parts) > 1:
                    found.add(parts[1])
                else:
                    found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "gapless" and len(parts) > 1:
                    found.add(parts[1])
    return found


def external_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
    return found - {"gapless"}


def test_every_module_has_a_layer():
    missing = [m for m in _modules() if m not in LAYER and m not in ENTRY]
    assert not missing, f"give these modules a layer in tests/test_layout.py: {missing}"


@pytest.mark.parametrize("module", [m for m in _modules() if m not in ENTRY])
def test_imports_point_down(module):
    if module not in LAYER:
        pytest.skip(f"{module} has no layer (see test_every_module_has_a_layer)")
    bad = {
        dep: LAYER.get(dep, "unknown")
        for dep in gapless_imports(PACKAGE / f"{module}.py")
        if dep not in LAYER or LAYER[dep] >= LAYER[module]
    }
    assert not bad, (
        f"gapless.{module} (layer {LAYER[module]}) imports {bad} (module: layer); "
        "imports must point to lower layers"
    )


def test_model_imports_only_torch_config_and_dropout():
    deps = gapless_imports(PACKAGE / "model.py")
    assert deps <= {"config", "dropout"}, deps
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    external = external_imports(PACKAGE / "model.py") - stdlib
    assert external <= MODEL_EXTERNAL, external


def test_no_utils_module():
    assert not (PACKAGE / "utils.py").exists(), "design.md: no utils.py"


def test_import_scanner_sees_all_forms(tmp_path):
    """The checker itself: relative, absolute and function-level imports are all found."""
    src = tmp_path / "m.py"
    src.write_text(
        "from . import config\nfrom .data import PAD\nimport gapless.model\n"
        "from gapless import decode\nfrom gapless.train import train\nimport torch\n"
        "def f():\n    from .evaluate import load\n"
    )
    assert gapless_imports(src) == {"config", "data", "model", "decode", "train", "evaluate"}
    assert external_imports(src) == {"torch"}
