"""benchmarks/gpu_carry.py: finished runs unpacked with their hypotheses, runs cut short or
without a record left out (they train again), and a weights-only base that still verifies."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import tarfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from gapless.verify import digest, verify

REPO = Path(__file__).resolve().parents[1]


def _carry():
    spec = importlib.util.spec_from_file_location("_gpu_carry", REPO / "benchmarks/gpu_carry.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _evidence(root: Path) -> Path:
    ev = root / "ev"
    records = {"teacher_forcing-s1": {"updates": 1300, "planned_updates": 1300},
               "sentence_oracle-s1": {"updates": 745, "planned_updates": 1300},
               "word_oracle-s1": None}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, record in records.items():
            (ev / name / "eval").mkdir(parents=True)
            (ev / name / "config.yaml").write_text("name: x\n")
            if record is not None:
                (ev / name / "finetune.json").write_text(json.dumps(record))
            data = f"hyp of {name}\n".encode()
            info = tarfile.TarInfo(f"{name}/eval/test2016.hyp")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (ev / "hyps.tar.xz").write_bytes(buf.getvalue())
    (ev / "base.json").write_text("{}")
    (ev / "report.md").write_text("# not copied\n")
    return ev


def test_only_finished_runs_are_resumed_with_their_hypotheses(tmp_path):
    out = tmp_path / "resume"
    kept = _carry().resume_folder(_evidence(tmp_path), out)
    assert kept == ["teacher_forcing-s1"]
    assert (out / "teacher_forcing-s1" / "eval" / "test2016.hyp").read_text() == \
        "hyp of teacher_forcing-s1\n"
    assert not (out / "sentence_oracle-s1").exists() and not (out / "word_oracle-s1").exists()
    assert (out / "base.json").is_file() and not (out / "report.md").exists()


def test_the_weights_only_base_verifies_without_the_optimizer(tmp_path):
    base = tmp_path / "base"
    ckpt = base / "checkpoints" / "step_00000010"
    ckpt.mkdir(parents=True)
    (base / "data").mkdir()
    (base / "data" / "prepare.json").write_text("{}")
    for name in ("config.yaml", "spm.model", "spm.vocab"):
        (base / name).write_text(name)
    save_file({"w": torch.ones(2)}, str(ckpt / "model.safetensors"))
    save_file({"m": torch.zeros(2)}, str(ckpt / "optim.safetensors"))
    files = {n: digest(ckpt / n) for n in ("model.safetensors", "optim.safetensors")}
    (ckpt / "state.json").write_text(json.dumps({"update": 10, "files": files}))
    (base / "checkpoints" / "best.json").write_text(json.dumps({"dir": "step_00000010"}))
    out = _carry().weights_only_base(base, tmp_path / "slim")
    slim = out / "checkpoints" / "step_00000010"
    assert verify(slim) is None and not (slim / "optim.safetensors").exists()
    state = json.loads((slim / "state.json").read_text())
    assert state["update"] == 10 and list(state["files"]) == ["model.safetensors"]
    (slim / "model.safetensors").write_bytes(b"damaged")  # the model's checksum still counts
    assert "damaged" in verify(slim)
