"""The benchmarks package: its entry modules import as ``benchmarks.NAME`` from the repository
root without sys.path edits, the gapless names they use exist, and their JSON paths (written
and committed) are relative to the repository."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
MODULES = sorted(p.stem for p in BENCH.glob("*.py") if p.stem != "__init__")
ENTRY_POINTS = [m for m in MODULES if m not in ("common", "peers")]
ABSOLUTE = re.compile(r'"/|/(?:work|root|home|tmp|Users)/')


def _common(monkeypatch):
    """benchmarks/common.py loaded from its file (this process's sys.path left as it is)."""
    spec = importlib.util.spec_from_file_location("_benchmarks_common", BENCH / "common.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_entry_modules_import_from_the_repository_root():
    assert {"common", "train_speed", "decode_speed", "strategy_speed", "cpu_tweaks"} <= set(MODULES)
    code = ("import importlib\n"
            f"for name in {MODULES!r}:\n"
            "    module = importlib.import_module('benchmarks.' + name)\n"
            f"    assert name not in {ENTRY_POINTS!r} or callable(module.main), name\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_no_sys_path_edits_in_benchmarks():
    for path in BENCH.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            assert "sys.path" not in path.read_text(encoding="utf-8"), path.name


def test_gapless_names_used_by_the_benchmarks_exist():
    for path in BENCH.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gapless"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name) or importlib.util.find_spec(
                        f"{node.module}.{alias.name}"), f"{path.name}: {node.module}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("gapless"):
                        importlib.import_module(alias.name)


def test_relpath_is_relative_to_the_repository_root(monkeypatch, tmp_path):
    relpath = _common(monkeypatch).relpath
    assert relpath(REPO / "runs" / "NAME") == "runs/NAME"
    assert relpath(REPO.parent / "shared" / "data" / "x.de") == "../shared/data/x.de"
    monkeypatch.chdir(REPO)
    assert relpath("runs/NAME") == "runs/NAME"
    monkeypatch.chdir(tmp_path)
    assert relpath("run") == str(Path(relpath(tmp_path)) / "run")
    assert not relpath(tmp_path).startswith("/")


def test_committed_benchmark_json_holds_no_absolute_paths():
    for path in sorted((REPO / "docs" / "bench").glob("*.json")):
        text = path.read_text(encoding="utf-8")
        json.loads(text)
        assert not ABSOLUTE.search(text), path.name


def test_strategy_speed_entries_are_valid_configs():
    """Every strategy of benchmarks/strategy_speed.py, with the p it is measured at, makes a
    valid config; the strategies without a p (MRT, confidence-aware) get no schedule."""
    from benchmarks.strategy_speed import NO_P, STRATEGIES, overrides
    from gapless.config import from_dict

    assert {"minimum_risk", "confidence_aware"} <= set(STRATEGIES)
    for name in STRATEGIES:
        over = overrides(name, cycle=3)
        cfg = from_dict({}, dict(over))
        assert cfg.strategy.name == over.get("strategy.name", "teacher_forcing"), name
        assert ("strategy.constant_p" in over) == (bool(STRATEGIES[name])
                                                   and over["strategy.name"] not in NO_P), name


def test_strategy_speed_load_weights_copies_the_checkpoint_in_place(tmp_path):
    """``--weights best`` (``RunDir.load_weights``): the run's best weights land in the
    benchmark's model, whose parameters stay the objects its optimizer holds."""
    import torch

    from gapless import config as config_mod
    from gapless.checkpoint import RunDir
    from gapless.model import Transformer

    cfg = config_mod.load("tiny", {"model.vocab_size": 40})
    torch.manual_seed(3)
    trained = Transformer(cfg.model)
    RunDir(tmp_path).save(trained, None, {"update": 7}, tags=("last", "best"))
    torch.manual_seed(4)
    fresh = Transformer(cfg.model)
    before = [id(p) for p in fresh.parameters()]
    assert not torch.equal(next(fresh.parameters()), next(trained.parameters()))
    folder = RunDir(tmp_path).load_weights(fresh, "best")
    assert folder.name == "step_00000007"
    assert [id(p) for p in fresh.parameters()] == before
    for (name, a), (_, b) in zip(fresh.state_dict().items(), trained.state_dict().items()):
        assert torch.equal(a, b), name
