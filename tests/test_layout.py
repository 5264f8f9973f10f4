"""Imports point down: a module imports only gapless modules of lower layers (README,
"Architecture"). A subpackage (``training``, ``analysis``) is one unit: its modules may import
each other freely, and its layer is the package's.

``model`` and ``layers`` import only torch, config and dropout (and model the layers). A new
module must be given a layer here.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gapless"

LAYERS = [
    {"strategy_config"},
    {"config", "metrics", "dropout", "runtime", "packing", "verify", "runlock", "textio"},
    {"presets", "layers", "data", "schedules", "checkpoint"},
    {"model", "corpora", "decode"},
    {"strategies", "prepare", "inference"},
    {"evaluate", "training", "export"},
    {"analysis", "serve"},
    {"quickstart"},
    {"cli"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}
ENTRY = {"__init__", "__main__"}  # the package entry points re-export from anywhere
MODEL_EXTERNAL = {"torch"}  # third-party imports allowed in model.py and layers.py


def _units() -> dict[str, list[Path]]:
    """Top-level unit name (module or subpackage) -> its source files."""
    units: dict[str, list[Path]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        units.setdefault(parts[0], []).append(path)
    return units


def _module_name(path: Path) -> list[str]:
    """gapless.a.b for gapless/a/b.py; gapless.a for gapless/a/__init__.py."""
    parts = ["gapless", *path.relative_to(PACKAGE).with_suffix("").parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def gapless_imports(path: Path) -> set[str]:
    """Top-level gapless units ``path`` imports (relative or absolute, at top level or inside
    functions), other than its own unit."""
    if path.is_relative_to(PACKAGE):
        here = _module_name(path)
        package = here if path.name == "__init__.py" else here[:-1]
    else:  # a file outside the package (the scanner's own test): a top-level module
        package = ["gapless"]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        targets: list[list[str]] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = base + (node.module.split(".") if node.module else [])
                targets = [mod] if node.module else [mod + [a.name] for a in node.names]
            elif node.module and node.module.split(".")[0] == "gapless":
                mod = node.module.split(".")
                targets = [mod] if len(mod) > 1 else [mod + [a.name] for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name.split(".") for a in node.names if a.name.startswith("gapless.")]
        found.update(t[1] for t in targets if len(t) > 1 and t[0] == "gapless")
    own = package[1] if len(package) > 1 else None
    return found - {own} if own else found


def external_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
    return found - {"gapless"}


def test_every_module_has_a_layer():
    missing = [u for u in _units() if u not in LAYER and u not in ENTRY]
    assert not missing, f"give these modules a layer in tests/test_layout.py: {missing}"


@pytest.mark.parametrize("unit", [u for u in _units() if u not in ENTRY])
def test_imports_point_down(unit):
    if unit not in LAYER:
        pytest.skip(f"{unit} has no layer (see test_every_module_has_a_layer)")
    for path in _units()[unit]:
        bad = {dep: LAYER.get(dep, "unknown") for dep in gapless_imports(path)
               if dep not in LAYER or LAYER[dep] >= LAYER[unit]}
        assert not bad, (f"{path.relative_to(PACKAGE.parent)} (layer {LAYER[unit]}) imports "
                         f"{bad} (unit: layer); imports must point to lower layers")


@pytest.mark.parametrize("module,allowed", [("model", {"config", "dropout", "layers"}),
                                            ("layers", {"config", "dropout"})])
def test_the_model_imports_only_torch_and_its_building_blocks(module, allowed):
    path = PACKAGE / f"{module}.py"
    assert gapless_imports(path) <= allowed, gapless_imports(path)
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    assert external_imports(path) - stdlib <= MODEL_EXTERNAL


def test_no_utils_module():
    assert not list(PACKAGE.rglob("utils.py")), "no utils.py: a helper lives where it is used"


def test_import_scanner_sees_all_forms(tmp_path):
    """The checker itself: relative, absolute and function-level imports are all found, and a
    subpackage's imports of its own modules are not counted."""
    src = tmp_path / "m.py"
    src.write_text(
        "from . import config\nfrom .data import PAD\nimport gapless.model\n"
        "from gapless import decode\nfrom gapless.training import train\nimport torch\n"
        "def f():\n    from .evaluate import load\n"
    )
    assert gapless_imports(src) == {"config", "data", "model", "decode", "training", "evaluate"}
    assert external_imports(src) == {"torch"}
    inner = PACKAGE / "training" / "trainer.py"
    deps = gapless_imports(inner)
    assert "training" not in deps and {"prepare", "data", "checkpoint"} <= deps
