"""experiments/claims.py (protocol section 5): the layernorm and tying verdict rules on
constructed figures, each branch and the margins exactly, and a resumed end-to-end sweep of
the shipped spec's arms on the tiny preset whose report judges on valid BLEU alone."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "configs" / "claims" / "layernorm_tying.yaml"


def _claims():
    """experiments/claims.py loaded from its file (experiments/ is not a package)."""
    spec = importlib.util.spec_from_file_location("_claims_experiment",
                                                  ROOT / "experiments" / "claims.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


claims = _claims()


# ---------------------------------------------------------------- the rules
@pytest.mark.parametrize("layer, batch, verdict", [
    ([32.01, 30.0], [31.51, 29.5], "holds"),  # exactly +0.5 in each (32.01 - 31.51 < 0.5 raw)
    ([32.0, 30.0], [31.51, 29.0], "undecided"),  # +0.49 in one seed: not ahead enough
    ([31.51, 30.0], [32.01, 28.0], "fails"),  # BatchNorm exactly 0.5 ahead in one seed
    ([31.52, 30.0], [32.01, 28.0], "undecided"),  # BatchNorm 0.49 ahead: not a failure
    ([30.0, 30.0], [30.0, 30.0], "undecided"),
    ([29.0, 29.0], [30.0, 30.0], "fails"),
    ([], [], "cannot be applied"),
])
def test_layernorm_rule(layer, batch, verdict):
    got, why = claims.layernorm_verdict(layer, batch)
    assert got == verdict and ("LayerNorm - BatchNorm" in why or not layer)


@pytest.mark.parametrize("tied, untied, verdict", [
    ([20.0, 31.0], [20.3, 30.0], "holds"),  # exactly -0.3 in one seed (raw -0.30000000000000007)
    ([20.01, 29.69], [20.3, 30.0], "undecided"),  # -0.29 and -0.31: neither in every seed
    ([20.0, 29.69], [20.3, 30.0], "undecided"),  # exactly -0.3 (holds) and -0.31 (fails)
    ([20.0, 29.5], [20.01, 30.0], "undecided"),  # -0.01 and -0.5: holds in one seed only
    ([19.99, 29.5], [20.3, 30.0], "fails"),  # -0.31 and -0.5: more than 0.3 below in both
    ([19.0, 29.7], [20.3, 30.0], "undecided"),  # -1.3 and exactly -0.3 (not below it)
    ([20.0, 29.7], [20.3, 30.0], "holds"),  # exactly -0.3 in both: the margin is inclusive
    ([], [], "cannot be applied"),
])
def test_tying_rule(tied, untied, verdict):
    got, why = claims.tying_verdict(tied, untied)
    assert got == verdict, why


def test_unpaired_figures_are_an_error():
    with pytest.raises(ValueError, match="unpaired"):
        claims.tying_verdict([30.0, 31.0], [30.0])


def test_the_shipped_spec_is_the_protocols(tmp_path):
    spec = claims.Spec.read(SPEC)
    assert spec.preset == "multi30k_de_en" and spec.seeds == [1, 2]
    assert spec.verdict_split == "valid" and spec.beam == 5
    assert spec.common["train.max_updates"] == 2345 and spec.common["train.max_minutes"] == 0
    norm = spec.claims["layernorm"].arms
    assert norm["layer"] == {"model.norm": "layer", "model.norm_position": "post"}
    assert norm["batch"] == {"model.norm": "batch", "model.norm_position": "post"}
    cfg = spec.config("tying", "untied", 2)
    assert (cfg.model.tie_encoder_decoder, cfg.model.tie_output, cfg.train.seed) == (
        False, False, 2)
    assert spec.config("tying", "tied", 1).model.tie_output
    assert spec.config("layernorm", "batch", 1).train.max_minutes == 0
    bad = yaml.safe_load(SPEC.read_text())
    bad["claims"]["tying"]["arms"]["shared"] = bad["claims"]["tying"]["arms"].pop("tied")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(SystemExit, match=r"the tying rule needs the arms \['tied', 'untied'\]"):
        claims.Spec.read(tmp_path / "bad.yaml")


# ---------------------------------------------------------------- end to end, tiny
@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> dict:
    """The shipped spec's arms on the tiny preset: first tying seed 1 alone, then all (which
    must not retrain it). Returns the paths and what each step reported."""
    import random

    from gapless.corpora import synthetic_pair

    root = tmp_path_factory.mktemp("claims")
    corpus = root / "corpus"
    corpus.mkdir()
    rng = random.Random(3)
    for split, n in (("train", 240), ("valid", 12), ("test2016", 12)):
        pairs = [synthetic_pair(rng) for _ in range(n)]
        for lang, col in (("de", 0), ("en", 1)):
            (corpus / f"{split}.{lang}").write_text("".join(p[col] + "\n" for p in pairs))
    data = yaml.safe_load(SPEC.read_text())
    data.update(preset="tiny", splits=["valid", "test2016"], eval_dtype="fp32", common={
        "train.max_updates": 4, "train.max_minutes": 0, "train.lr": 1e-2, "train.warmup": 2,
        "train.threads": 1, "train.dtype": "fp32", "train.valid_max_sentences": 6,
        "data.corpus": str(corpus), "data.test_splits": ["test2016"], "data.workers": 0})
    spec, runs = root / "tiny.yaml", root / "runs"
    spec.write_text(yaml.safe_dump(data))
    claims.main([str(spec), "--runs", str(runs), "--claims", "tying", "--seeds", "1"])
    partial = json.loads((runs / "report.json").read_text())
    first = runs / "tying-tied-s1" / "claim.json"
    stamp = first.stat().st_mtime_ns
    claims.main([str(spec), "--runs", str(runs)])
    return {"spec": spec, "runs": runs, "partial": partial, "first_unchanged":
            first.stat().st_mtime_ns == stamp,
            "report": json.loads((runs / "report.json").read_text())}


def test_a_partial_sweep_names_what_is_missing(sweep):
    partial = sweep["partial"]
    assert sorted(partial["results"]) == ["tying-tied-s1", "tying-untied-s1"]
    assert len(partial["missing"]) == 6 and "layernorm-batch-s2" in partial["missing"]
    for c in partial["claims"].values():
        assert c["verdict"] == "cannot be applied" and "of 2 seeds" in c["why"]


def test_the_whole_sweep_resumes_and_judges_on_valid(sweep):
    report, runs = sweep["report"], sweep["runs"]
    assert sweep["first_unchanged"]  # the finished run was not trained again
    assert report["missing"] == [] and len(report["results"]) == 8
    for name, r in report["results"].items():
        assert r["updates"] == 4 and r["stopped"] == "max_updates", name
        config = yaml.safe_load((runs / name / "config.yaml").read_text())
        for key, value in r["overrides"].items():
            section, field = key.split(".")
            assert config[section][field] == value, (name, key)
    results = report["results"]
    vocab = yaml.safe_load((runs / "tying-tied-s1" / "config.yaml").read_text())["model"]
    # untied: a second embedding table and an output projection of vocab x d_model each
    extra = results["tying-untied-s1"]["parameters"] - results["tying-tied-s1"]["parameters"]
    assert extra == 2 * vocab["vocab_size"] * vocab["d_model"]
    for name, c in report["claims"].items():
        first, second = c["arms"]
        a = [results[f"{name}-{first}-s{s}"]["scores"]["valid"]["bleu"] for s in (1, 2)]
        b = [results[f"{name}-{second}-s{s}"]["scores"]["valid"]["bleu"] for s in (1, 2)]
        assert c["differences"] == [round(x - y, 6) for x, y in zip(a, b)]
        d = c["differences"]
        if name == "layernorm":
            expected = ("holds" if min(d) >= 0.5 else "fails" if min(d) <= -0.5 else
                        "undecided")
        else:
            expected = ("holds" if min(d) >= -0.3 else "fails" if max(d) < -0.3 else
                        "undecided")
        assert c["verdict"] == expected
        assert c["reported_beside"] == ["test2016"]
        assert c["per_seed"]["1"][first]["test2016"] == results[f"{name}-{first}-s1"][
            "scores"]["test2016"]["bleu"]
    md = (runs / "report.md").read_text()
    assert "## layernorm: **" in md and "## tying: **" in md and "reported beside" in md


def test_the_verdict_follows_valid_and_ignores_the_tests(sweep, tmp_path, capsys):
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(sweep["runs"], runs, ignore=shutil.ignore_patterns("checkpoints", "data"))

    def set_bleu(name: str, split: str, bleu: float) -> None:
        path = runs / name / "claim.json"
        record = json.loads(path.read_text())
        record["scores"][split]["bleu"] = bleu
        path.write_text(json.dumps(record))

    def verdicts() -> dict:
        claims.main([str(sweep["spec"]), "--runs", str(runs), "--report-only"])
        report = json.loads((runs / "report.json").read_text())
        return {name: c["verdict"] for name, c in report["claims"].items()}

    for seed in (1, 2):  # LayerNorm exactly 0.5 ahead (raw 32.01 - 31.51 < 0.5); tied -0.3
        set_bleu(f"layernorm-layer-s{seed}", "valid", 32.01)
        set_bleu(f"layernorm-batch-s{seed}", "valid", 31.51)
        set_bleu(f"tying-tied-s{seed}", "valid", 20.0 + seed)
        set_bleu(f"tying-untied-s{seed}", "valid", 20.3 + seed - (seed == 2))
        set_bleu(f"layernorm-layer-s{seed}", "test2016", 0.0)  # the tests say the opposite
        set_bleu(f"tying-tied-s{seed}", "test2016", 0.0)
        set_bleu(f"tying-untied-s{seed}", "test2016", 90.0)
    assert verdicts() == {"layernorm": "holds", "tying": "holds"}
    set_bleu("layernorm-batch-s2", "valid", 32.51)  # BatchNorm 0.5 ahead in seed 2
    set_bleu("tying-untied-s2", "valid", 22.31)  # tied -0.3 and -0.31: one seed each way
    assert verdicts() == {"layernorm": "fails", "tying": "undecided"}
    set_bleu("tying-untied-s1", "valid", 21.31)  # -0.31 and -0.31: more than 0.3 below in both
    assert verdicts()["tying"] == "fails"
    with pytest.raises(SystemExit, match="not in the spec"):
        claims.main([str(sweep["spec"]), "--runs", str(runs), "--claims", "tying,heads"])
    capsys.readouterr()
