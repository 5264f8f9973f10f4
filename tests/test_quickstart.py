"""gapless.quickstart: corpus choice, the presets it trains, a tiny end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from gapless import corpora, presets, quickstart
from gapless.config import ConfigError
from gapless.data import CorpusError

REPO = Path(__file__).resolve().parents[1]

TINY = {  # dotted overrides, as a dict
    "model.d_model": 32, "model.n_heads": 2, "model.ffn_dim": 64, "model.enc_layers": 1,
    "model.dec_layers": 1, "data.vocab_size": 120, "train.max_updates": 4,
    "train.max_tokens": 512, "train.valid_max_sentences": 8, "train.progress": False,
    "train.dtype": "fp32",
}  # fmt: skip


def test_multi30k_settings_match_the_config_file():
    data = yaml.safe_load(presets.path("multi30k_de_en").read_text())
    cfg = quickstart.build_config("multi30k", 10)
    for key, value in data["model"].items():
        assert getattr(cfg.model, key) == value, f"model.{key}"
    for key in ("max_tokens", "lr", "warmup", "dtype"):
        assert getattr(cfg.train, key) == data["train"][key], f"train.{key}"
    assert cfg.data.vocab_size == data["data"]["vocab_size"]
    assert cfg.train.max_minutes == 10


def test_synthetic_settings_are_small():
    cfg = quickstart.build_config("synthetic", 2)
    assert (cfg.model.d_model, cfg.model.enc_layers, cfg.model.dec_layers) == (128, 2, 2)
    assert cfg.data.vocab_size == 1000 and cfg.data.corpus == "synthetic"


def _write_multi30k(folder: Path) -> None:
    (folder / "multi30k").mkdir(parents=True)
    for split in quickstart.NEEDED_SPLITS:
        for lang in ("de", "en"):
            (folder / "multi30k" / f"{split}.{lang}").write_text("x\n")


def test_choose_multi30k_when_local(tmp_path):
    _write_multi30k(tmp_path)
    corpus, reason = quickstart.choose_corpus(str(tmp_path))
    assert corpus == "multi30k" and str(tmp_path) in reason


def test_falls_back_to_synthetic_when_download_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(corpora, "data_dirs", lambda explicit=None: [tmp_path / "none"])

    def offline(split, lang, folder, *args, **kwargs):
        raise CorpusError("could not download: offline")

    monkeypatch.setattr(corpora, "download_multi30k", offline)
    corpus, reason = quickstart.choose_corpus()
    assert corpus == "synthetic" and "offline" in reason
    assert quickstart.choose_corpus(download=False)[0] == "synthetic"


def test_explicit_corpus_override():
    assert quickstart._explicit_corpus(["--data.corpus", "synthetic"]) == "synthetic"
    assert quickstart._explicit_corpus(["--data.corpus=multi30k"]) == "multi30k"
    assert quickstart._explicit_corpus(["--train.lr", "1"]) is None
    assert quickstart._explicit_corpus({"data.corpus": "synthetic"}) == "synthetic"
    assert quickstart._explicit_corpus(None) is None


def test_quickstart_end_to_end(tiny_corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GAPLESS_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "qs"
    summary = quickstart.quickstart(0.5, run, {"data.corpus": str(tiny_corpus), **TINY})
    out = capsys.readouterr().out
    assert "chosen with --data.corpus" in out
    assert "test2016: BLEU" in out and "nrefs:1" in out
    assert out.count(" -> ") >= 3
    assert f"gapless serve {run} --port 8080" in out
    assert summary["updates"] == 4 and len(summary["examples"]) == 3
    assert json.loads((run / quickstart.MARKER).read_text())["corpus"] == str(tiny_corpus)
    # a second quickstart replaces its own run; someone else's directory is refused
    quickstart._prepare_run_dir(run)
    assert "replacing the earlier quickstart run" in capsys.readouterr().out
    assert not run.exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a quickstart run directory"):
        quickstart.quickstart(0.5, other, {"data.corpus": str(tiny_corpus), **TINY})
    assert (other / "notes.txt").is_file()
