"""Behaviour pinned across refactors: a fixed-seed tiny training (teacher forcing and two
strategies) must log the same per-update losses (to 1e-6) and end on the same weights, and
beam search must return the same hypotheses, as the reference that the code *before* the
package reshape produced (``tests/data/behaviour_reference.json``, committed as data).

Regenerate only for an intended behaviour change: ``GAPLESS_WRITE_REFERENCE=1 pytest
tests/test_behaviour_reference.py``.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch

from gapless import config as config_mod
from gapless.corpora import synthetic_pair

REFERENCE = Path(__file__).parent / "data" / "behaviour_reference.json"
TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
STRATEGIES = {
    "teacher_forcing": {},
    "scheduled_sampling": {"strategy.name": "scheduled_sampling", "strategy.predicted": "sample",
                           "strategy.schedule": "constant", "strategy.constant_p": 0.5},
    "word_oracle": {"strategy.name": "word_oracle", "strategy.schedule": "constant",
                    "strategy.constant_p": 0.6},
}
UPDATES = 80


def _corpus(folder: Path) -> Path:
    folder.mkdir()
    rng = random.Random(11)
    for split, n in (("train", 240), ("valid", 16), ("test2016", 16)):
        pairs = [synthetic_pair(rng) for _ in range(n)]
        for lang, col in (("de", 0), ("en", 1)):
            (folder / f"{split}.{lang}").write_text("".join(p[col] + "\n" for p in pairs),
                                                    encoding="utf-8")
    return folder


def _fingerprint(model) -> dict[str, list[float]]:
    """Per parameter: (sum, sum of squares) in float64, enough to tell any change apart."""
    return {name: [float(p.detach().double().sum()), float(p.detach().double().pow(2).sum())]
            for name, p in model.named_parameters()}


def _train(corpus: Path, run: Path, strategy: dict, monkeypatch) -> dict:
    from gapless.training import criterion as criterion_mod
    from gapless.training import train

    losses: list[float] = []
    original = criterion_mod.label_smoothed_nll

    def recording(logits, target, eps):
        loss, nll = original(logits, target, eps)
        if torch.is_grad_enabled():  # training steps only, not validation
            losses.append(float(loss.detach()) / len(target))  # per token
        return loss, nll

    monkeypatch.setattr(criterion_mod, "label_smoothed_nll", recording)
    cfg = config_mod.load(TINY, {
        "data.corpus": str(corpus), "train.dtype": "fp32", "train.max_updates": UPDATES,
        "train.log_every": 1, "train.valid_every": UPDATES, "train.save_every": UPDATES,
        "model.dropout": 0.1, "train.max_tokens": 512, "train.lr": 5e-3, **strategy})
    train(cfg, run)
    monkeypatch.setattr(criterion_mod, "label_smoothed_nll", original)
    logged = [r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())
              if r["kind"] == "train"]
    return {"step_losses": losses, "logged_losses": logged}


def _reference(tmp_path: Path, monkeypatch) -> dict:
    from gapless import load

    torch.set_num_threads(1)
    corpus = _corpus(tmp_path / "corpus")
    out: dict = {"strategies": {}}
    for name, over in STRATEGIES.items():
        run = tmp_path / name
        out["strategies"][name] = _train(corpus, run, over, monkeypatch)
        translator = load(run, "last", device="cpu")
        out["strategies"][name]["weights"] = _fingerprint(translator.model)
    translator = load(tmp_path / "teacher_forcing", "last", device="cpu")
    src = translator.vocab.encode((corpus / "test2016.de").read_text().splitlines())
    out["beam4"] = translator.translate_ids(src, beam=4)
    out["greedy"] = translator.translate_ids(src, beam=1)
    out["beam4_lp0_maxb3"] = translator.translate_ids(src, beam=4, len_penalty=0.0, max_len_b=3)
    return out


def test_behaviour_matches_the_pre_refactor_reference(tmp_path, monkeypatch):
    got = _reference(tmp_path, monkeypatch)
    if os.environ.get("GAPLESS_WRITE_REFERENCE") == "1":
        REFERENCE.write_text(json.dumps(got, indent=1) + "\n")
        pytest.skip(f"wrote {REFERENCE.name}")
    ref = json.loads(REFERENCE.read_text())
    for name, want in ref["strategies"].items():
        have = got["strategies"][name]
        assert len(have["step_losses"]) == len(want["step_losses"]), name
        assert have["step_losses"] == pytest.approx(want["step_losses"], abs=1e-6, rel=0), name
        assert have["logged_losses"] == want["logged_losses"], name
        assert have["weights"].keys() == want["weights"].keys(), name
        for key, value in want["weights"].items():
            assert have["weights"][key] == pytest.approx(value, rel=1e-6, abs=1e-6), (name, key)
    for key in ("beam4", "greedy", "beam4_lp0_maxb3"):
        assert got[key] == ref[key], key
