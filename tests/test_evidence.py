"""experiments/evidence.py: which files of a folder of runs are copied for committing, the
hypotheses' reproducible tarball, and the refusal of files that name this machine's paths."""

from __future__ import annotations

import importlib.util
import io
import json
import lzma
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _evidence():
    spec = importlib.util.spec_from_file_location("_evidence", ROOT / "experiments" /
                                                  "evidence.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_runs(root: Path) -> Path:
    runs = root / "runs" / "sweep"
    for name in ("teacher_forcing-s1", "word_oracle-s1"):
        run = runs / name
        (run / "eval").mkdir(parents=True)
        (run / "checkpoints" / "step_00000100").mkdir(parents=True)
        (run / "data" / "train").mkdir(parents=True)
        (run / "config.yaml").write_text("name: x\n")
        (run / "log.jsonl").write_text('{"kind": "train"}\n')
        (run / "finetune.json").write_text(json.dumps({"method": name}) + "\n")
        (run / "eval" / "test2016.json").write_text('{"source": "../shared/data/x.de"}\n')
        (run / "eval" / "test2016.hyp").write_text(f"a hypothesis of {name}\n")
        (run / "checkpoints" / "step_00000100" / "model.safetensors").write_bytes(b"\0" * 64)
        (run / "data" / "prepare.json").write_text("{}\n")
        (run / "data" / "train" / "src.bin").write_bytes(b"\1" * 64)
        (run / "spm.model").write_bytes(b"\2" * 64)
    claim = runs / "tying-tied-s1"  # experiments/claims.py's run: claim.json, no finetune.json
    (claim / "eval").mkdir(parents=True)
    (claim / "config.yaml").write_text("name: y\n")
    (claim / "claim.json").write_text('{"claim": "tying"}\n')
    (claim / "eval" / "valid.json").write_text("{}\n")
    (runs / "base.json").write_text("{}\n")
    (runs / "report.md").write_text("# report\n")
    (runs / "sweep.log").write_text("not evidence\n")
    return runs


def test_copies_configs_logs_and_scores_but_no_weights_or_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = _fake_runs(tmp_path)
    written = _evidence().copy_evidence(Path("runs/sweep"), Path("docs/runs/sweep"))
    names = sorted(p.as_posix() for p in written)
    per_run = ["config.yaml", "eval/test2016.json", "finetune.json", "log.jsonl"]
    assert names == sorted(["base.json", "report.md"]
                           + [f"{r}/{f}" for r in ("teacher_forcing-s1", "word_oracle-s1")
                              for f in per_run]
                           + ["tying-tied-s1/claim.json", "tying-tied-s1/config.yaml",
                              "tying-tied-s1/eval/valid.json"])
    out = tmp_path / "docs" / "runs" / "sweep"
    assert (out / "word_oracle-s1" / "finetune.json").read_text() == \
        (runs / "word_oracle-s1" / "finetune.json").read_text()
    assert not list(out.rglob("*.safetensors")) and not list(out.rglob("*.bin"))
    assert not list(out.rglob("spm.model")) and not (out / "hyps.tar.xz").exists()
    assert not list(out.rglob("prepare.json"))


def test_hypotheses_packed_reproducibly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fake_runs(tmp_path)
    evidence = _evidence()
    evidence.copy_evidence(Path("runs/sweep"), Path("a"), hyps=True)
    evidence.copy_evidence(Path("runs/sweep"), Path("b"), hyps=True)
    packed = (tmp_path / "a" / "hyps.tar.xz").read_bytes()
    assert packed == (tmp_path / "b" / "hyps.tar.xz").read_bytes()
    with tarfile.open(fileobj=io.BytesIO(lzma.decompress(packed))) as tar:
        names = tar.getnames()
        text = tar.extractfile("word_oracle-s1/eval/test2016.hyp").read().decode()
    assert names == ["teacher_forcing-s1/eval/test2016.hyp", "word_oracle-s1/eval/test2016.hyp"]
    assert text == "a hypothesis of word_oracle-s1\n"


def test_refuses_a_file_naming_this_machines_path(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    runs = _fake_runs(tmp_path)
    bad = runs / "word_oracle-s1" / "eval" / "test2016.json"
    bad.write_text(json.dumps({"source": f"{tmp_path.resolve()}/x.de"}, indent=1) + "\n")
    with pytest.raises(ValueError, match=r"word_oracle-s1/eval/test2016.json:2: names"):
        _evidence().copy_evidence(Path("runs/sweep"), Path("out"))
    assert not (tmp_path / "out").exists()  # refused before writing
    assert _evidence().main(["runs/sweep", "out"]) == 2  # the command: an error, no traceback
    assert "test2016.json:2: names the absolute path" in capsys.readouterr().err


def test_a_folder_without_runs_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no run folders"):
        _evidence().copy_evidence(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        _evidence().copy_evidence(tmp_path / "missing", tmp_path / "out")


def test_finished_leaves_out_the_runs_under_way_and_their_hypotheses(tmp_path, monkeypatch):
    """``--finished``: a run without ``finetune.json`` or ``claim.json`` is still training;
    none of its files (hypotheses included) is copied, the finished runs' all are."""
    monkeypatch.chdir(tmp_path)
    runs = _fake_runs(tmp_path)
    (runs / "word_oracle-s1" / "finetune.json").unlink()  # under way
    ev = _evidence()
    assert ev.main(["runs/sweep", "out", "--hyps", "--finished"]) == 0
    copied = sorted(p.relative_to("out").as_posix() for p in Path("out").rglob("*")
                    if p.is_file())
    assert not [c for c in copied if c.startswith("word_oracle-s1/")]
    assert "teacher_forcing-s1/finetune.json" in copied and "tying-tied-s1/claim.json" in copied
    with tarfile.open(fileobj=io.BytesIO(lzma.decompress(Path("out/hyps.tar.xz").read_bytes()))
                      ) as tar:
        assert tar.getnames() == ["teacher_forcing-s1/eval/test2016.hyp"]
    assert ev.main(["runs/sweep", "all", "--hyps"]) == 0  # without it: every run
    assert Path("all/word_oracle-s1/log.jsonl").is_file()
