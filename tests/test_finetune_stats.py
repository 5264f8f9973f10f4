"""The powered comparison's statistics (docs/protocols/powered_comparison.md): Student-t
quantiles and paired intervals, Holm's correction, the decision rule, sacreBLEU's paired
bootstrap through gapless's wrapper, and experiments/finetune.py's report built from fake run
folders (a missing run named as missing)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import random
import re
import sys
from pathlib import Path

import pytest

from gapless.analysis.paired import (
    bootstrap_counts,
    decide,
    holm,
    paired_bootstrap,
    paired_interval,
    t_quantile,
    t_two_sided_p,
)
from gapless.metrics import corpus_scores

ROOT = Path(__file__).resolve().parents[1]


def _finetune():
    """experiments/finetune.py loaded from its file (experiments/ is not a package)."""
    spec = importlib.util.spec_from_file_location("_finetune_experiment",
                                                  ROOT / "experiments" / "finetune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- t distribution
@pytest.mark.parametrize("df,expected", [(1, 12.706), (2, 4.303), (3, 3.182), (9, 2.262),
                                         (29, 2.045), (10**7, 1.960)])
def test_t_quantile_matches_the_tables(df, expected):
    assert round(t_quantile(0.975, df), 3) == expected
    assert t_two_sided_p(t_quantile(0.975, df), df) == pytest.approx(0.05, abs=1e-9)


def test_t_quantile_more_digits_symmetry_and_closed_forms():
    assert t_quantile(0.975, 9) == pytest.approx(2.2621571628, abs=1e-9)
    assert t_quantile(0.995, 9) == pytest.approx(3.2498355416, abs=1e-9)
    assert t_quantile(0.025, 4) == pytest.approx(-t_quantile(0.975, 4))
    assert t_quantile(0.5, 7) == 0.0
    for t in (0.3, 2.0, 15.0):  # df 1: Cauchy; df 2: 1 - t / sqrt(t^2 + 2)
        assert t_two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), abs=1e-12)
        assert t_two_sided_p(t, 2) == pytest.approx(1 - t / math.sqrt(t * t + 2), abs=1e-12)
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)


# ---------------------------------------------------------------- interval, Holm, decision
def test_paired_interval_by_hand():
    s = paired_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t = 2 / (1 / sqrt 3), df 2
    half = 4.302652729749 / math.sqrt(3)
    assert (s["n"], s["mean"], s["sd"]) == (3, 2.0, 1.0)
    assert s["lo"] == pytest.approx(2 - half) and s["hi"] == pytest.approx(2 + half)
    assert s["width"] == pytest.approx(2 * half)
    assert s["t"] == pytest.approx(2 * math.sqrt(3))
    assert s["p"] == pytest.approx(1 - 2 * math.sqrt(3) / math.sqrt(14), abs=1e-10)
    two = paired_interval([1.0, 3.0])  # df 1: t = 2, CI 2 +- 12.706
    assert two["p"] == pytest.approx(1 - 2 / math.pi * math.atan(2.0), abs=1e-10)
    assert two["lo"] == pytest.approx(2 - 12.7062047362, abs=1e-8)


def test_paired_interval_degenerate_cases():
    one = paired_interval([0.4])
    assert one["n"] == 1 and one["mean"] == 0.4 and one["lo"] is None and one["p"] is None
    assert paired_interval([])["mean"] is None
    same = paired_interval([0.5, 0.5, 0.5])  # no spread: a certain, zero-width difference
    assert same["p"] == 0.0 and same["width"] == 0.0
    assert paired_interval([0.0, 0.0])["p"] == 1.0


def test_holm_on_a_known_example():
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005})
    expected = {"a": 0.03, "b": 0.06, "c": 0.06, "d": 0.02}
    assert adjusted == pytest.approx(expected)
    assert holm({"a": 0.5, "b": 0.4}) == pytest.approx({"a": 0.8, "b": 0.8})
    assert holm({"a": 0.3, "b": 0.9}) == pytest.approx({"a": 0.6, "b": 0.9})
    # a member without a p-value still counts in the family (as p = 1)
    assert holm({"a": 0.01, "b": None}) == {"a": pytest.approx(0.02), "b": None}


@pytest.mark.parametrize("lo,hi,p_holm,verdict", [
    (0.1, 0.9, 0.01, "beats"),
    (0.1, 0.9, 0.07, "no difference detected"),  # interval clear of 0, but not after Holm
    (-0.9, -0.1, 0.01, "worse"),
    (-0.9, -0.1, 0.05, "no difference detected"),  # 0.05 is not below 0.05
    (-0.3, 0.4, 0.01, "no difference detected"),
    (None, None, None, "cannot be applied"),
])
def test_decision_rule(lo, hi, p_holm, verdict):
    assert decide({"lo": lo, "hi": hi}, p_holm) == verdict


# ---------------------------------------------------------------- sacreBLEU's bootstrap
WORDS = ["a", "man", "woman", "dog", "runs", "in", "the", "park", "with", "red", "ball",
         "child", "sits", "on", "bench", "."]


def _sentences(rng: random.Random, n: int) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10))) + " ." for _ in range(n)]


def _noisy(rng: random.Random, refs: list[str], rate: float) -> list[str]:
    return [" ".join(w if rng.random() > rate else rng.choice(WORDS) for w in r.split())
            for r in refs]


def test_bootstrap_wrapper_gives_sacrebleus_own_figures(monkeypatch):
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    rng = random.Random(3)
    refs = _sentences(rng, 30)
    base, sys_a, sys_b = (_noisy(rng, refs, r) for r in (0.3, 0.2, 0.45))
    monkeypatch.setenv("SACREBLEU_SEED", "7")  # set aside: the protocol fixes the default
    res = paired_bootstrap(base, {"a": sys_a, "b": sys_b}, refs)
    fields = set(res["signature"].split("|"))  # gapless's BLEU, plus the resampling's fields
    assert fields == set(corpus_scores(base, refs).bleu_signature.split("|")) | {"bs:1000",
                                                                                 "seed:12345"}
    assert os.environ["SACREBLEU_SEED"] == "7"
    monkeypatch.delenv("SACREBLEU_SEED")
    for name, hyps in (("a", sys_a), ("b", sys_b)):  # one pair per direct call
        _, direct = PairedTest([("tf", base), (name, hyps)], {"BLEU": BLEU()}, [refs],
                               test_type="bs", n_samples=1000)()
        bl, mine = direct["BLEU"]
        got = res["systems"][name]
        assert (got["score"], got["p"], got["mean"], got["ci"]) == pytest.approx(
            (mine.score, mine.p_value, mine.mean, mine.ci), abs=1e-12)
        assert got["delta"] == pytest.approx(mine.score - bl.score)
        assert res["baseline"]["mean"] == pytest.approx(bl.mean)
        assert round(got["score"], 2) == corpus_scores(hyps, refs).bleu
    with pytest.raises(ValueError, match="hypotheses"):
        paired_bootstrap(base, {"short": sys_a[:-1]}, refs)


# ---------------------------------------------------------------- the report
SPLITS = ("test2016", "valid")
METHODS = {"teacher_forcing": 0.35, "ss_sample": 0.25, "word_oracle": 0.4}
SEEDS = [1, 2, 3]


def _fake_runs(tmp_path: Path, missing: str) -> Path:
    """Runs of every method and seed but ``missing``, with hypotheses, scores and eval JSON
    naming a reference file (relative to the working directory, as gapless.evaluate writes)."""
    rng = random.Random(11)
    refs = {s: _sentences(rng, 25) for s in SPLITS}
    for split, lines in refs.items():
        (tmp_path / f"{split}.en").write_text("".join(x + "\n" for x in lines))
    runs = tmp_path / "runs"
    for seed in SEEDS:
        for method, rate in METHODS.items():
            run = runs / f"{method}-s{seed}"
            if run.name == missing:
                continue
            (run / "eval").mkdir(parents=True)
            scores = {}
            for split in SPLITS:
                hyps = _noisy(rng, refs[split], rate)
                (run / "eval" / f"{split}.hyp").write_text("".join(h + "\n" for h in hyps))
                (run / "eval" / f"{split}.json").write_text(json.dumps(
                    {"split": split, "reference": f"{split}.en",
                     "length_ratio": round(0.9 + rate / 10 + seed / 1000, 4)}))
                s = corpus_scores(hyps, refs[split])
                scores[split] = {"bleu": s.bleu, "chrf": s.chrf, "signature": s.bleu_signature}
            (run / "finetune.json").write_text(json.dumps(
                {"method": method, "seed": seed, "updates": 100, "valid_bleu": 30.0,
                 "scores": scores, "logged": {}}))
    return runs


def _spec(tmp_path: Path) -> Path:
    spec = {"name": "fake", "seeds": SEEDS, "splits": list(SPLITS),
            "methods": {m: {"strategy.name": m} for m in METHODS}}
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def _strings(node):
    if isinstance(node, dict):
        for k, v in node.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


def test_report_from_fake_runs_names_the_missing_run(tmp_path, monkeypatch):
    ft = _finetune()
    runs = _fake_runs(tmp_path, missing="ss_sample-s3")
    _spec(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["finetune.py", "spec.yaml", "--runs", "runs",
                                      "--report-only"])
    ft.main()
    md = (runs / "report.md").read_text()
    report = json.loads((runs / "report.json").read_text())
    assert report["missing"] == ["ss_sample-s3"]
    assert "ss_sample-s3" in md and "Provisional: 1 of 9 runs" in report["reading"]
    assert report["reading"] in md
    runs_done = [json.loads(p.read_text()) for p in sorted(runs.glob("*/finetune.json"))]
    bleu = {(r["method"], r["seed"]): r["scores"]["test2016"]["bleu"] for r in runs_done}
    diffs = [bleu["ss_sample", s] - bleu["teacher_forcing", s] for s in (1, 2)]
    got = report["intervals"]["ss_sample"]["test2016"]
    assert got["seeds"] == [1, 2] and got["diffs"] == pytest.approx(diffs)
    assert got["lo"] == pytest.approx(paired_interval(diffs)["lo"])
    p = {m: report["intervals"][m]["test2016"]["p"] for m in ("ss_sample", "word_oracle")}
    for m, adj in holm(p).items():
        assert report["decisions"][m]["p_holm"] == pytest.approx(adj)
        assert report["decisions"][m]["decision"] in md
    boot = report["bootstrap"]["per_seed"]["test2016"]
    assert set(boot) == {"1", "2", "3"} and "ss_sample" not in boot["3"]["systems"]
    assert all(r["consistent"] for seed in boot.values() for r in seed["systems"].values())
    assert report["bootstrap"]["summary"]["test2016"]["word_oracle"]["compared"] == 3
    assert "beats" in report["reading"] or "no method beats teacher_forcing" in report["reading"]
    length = report["length"]["word_oracle"]["test2016"]  # 0.94 + s/1000 vs 0.935 + s/1000
    assert length["mean"] == pytest.approx(0.942) and length["reference_mean"] == pytest.approx(
        0.937)
    assert length["diff_percent"]["n"] == 3 and length["diff_percent"]["mean"] == pytest.approx(
        0.5)
    assert report["length"]["ss_sample"]["test2016"]["diff_percent"]["n"] == 2  # s3 missing
    assert "| word_oracle | 0.9420: +0.50" in md
    assert not [s for s in _strings(report) if s.startswith("/")], "absolute path in report"
    assert report["runs"] == "runs" and "/tmp" not in md


def test_report_of_some_methods_decides_them_in_a_family_reported_elsewhere(tmp_path,
                                                                           monkeypatch):
    """Amendments 3 and 5: ``--report-only --methods`` reports the runs of an amendment, and
    ``--family`` puts the other report's methods into Holm's family at their raw p."""
    ft = _finetune()
    runs = _fake_runs(tmp_path, missing="ss_sample-s1")  # ss_sample is "reported elsewhere"
    _spec(tmp_path)
    elsewhere = {"reference": "teacher_forcing", "primary": "test2016",
                 "decisions": {"ss_sample": {"p": 0.004}, "other": {"p": None}}}
    (tmp_path / "gpu.json").write_text(json.dumps({"statistics": elsewhere}))
    monkeypatch.chdir(tmp_path)
    argv = ["finetune.py", "spec.yaml", "--runs", "runs", "--report-only",
            "--methods", "word_oracle", "--family", "gpu.json"]
    monkeypatch.setattr(sys, "argv", argv)
    ft.main()
    report = json.loads((runs / "report.json").read_text())
    md = (runs / "report.md").read_text()
    assert report["missing"] == [] and report["methods"] == ["teacher_forcing", "word_oracle"]
    assert set(report["decisions"]) == {"word_oracle"}
    p = report["decisions"]["word_oracle"]["p"]
    adjusted = holm({"word_oracle": p, "ss_sample": 0.004, "other": None})["word_oracle"]
    assert report["decisions"]["word_oracle"]["p_holm"] == pytest.approx(adjusted)
    assert adjusted != pytest.approx(p)  # the family changed the correction
    assert report["family"] == {"source": "gpu.json",
                                "outside": {"ss_sample": 0.004, "other": None}}
    assert "over the 3 methods (other and ss_sample at their raw p from gpu.json)" in \
        report["reading"]
    assert "Holm over 3 methods" in md and "ss_sample (p 0.004), other (p -)" in md
    wrong = {**elsewhere, "reference": "ss_soft"}
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    (tmp_path / "none.json").write_text(json.dumps({"runs": {}}))
    for name, says in (("wrong.json", "ss_soft / test2016"), ("none.json", "no 'decisions'")):
        monkeypatch.setattr(sys, "argv", argv[:-1] + [name])
        with pytest.raises(SystemExit, match=f"--family {name}: .*{re.escape(says)}"):
            ft.main()


def test_reading_says_plainly_when_no_method_beats():
    ft = _finetune()
    none = {"n": 3, "planned": 3, "p": 0.4, "p_holm": 0.8, "decision": "no difference detected",
            "width": 1.5}
    interval = {"mean": 0.2, "lo": -0.55, "hi": 0.95}
    report = {"reference": "teacher_forcing", "primary": "test2016", "alpha": 0.05,
              "missing": [], "planned_runs": 6, "splits": ["test2016", "valid"],
              "decisions": {"ss_sample": none},
              "intervals": {"ss_sample": {"test2016": interval}},
              "bootstrap": {"summary": {}}}
    text = ft.reading(report)
    assert "no method beats teacher_forcing" in text and "width 1.50" in text
    assert "Provisional" not in text and "(valid)" in text
    report["decisions"]["ss_sample"] = {**none, "decision": "beats"}
    assert "ss_sample beats teacher_forcing" in ft.reading(report)


def test_bootstrap_counts_direction_and_sets_equal_scores_apart():
    rows = [{"a": (0.01, 0.8), "b": (0.2, 0.3)}, {"a": (0.03, -0.4), "b": (0.000999, 0.0)},
            {"a": (0.5, 0.1)}]
    boot = {"test2016": {i: {"systems": {m: {"p": p, "delta": d} for m, (p, d) in r.items()}}
                         for i, r in enumerate(rows, 1)}}
    summary = bootstrap_counts(boot)["test2016"]
    assert summary["a"] == {"compared": 3, "significant": 2, "better": 1, "worse": 1,
                            "equal": 0}
    assert summary["b"] == {"compared": 2, "significant": 0, "better": 0, "worse": 0,
                            "equal": 1}


def test_selection_and_tidy(tmp_path):
    ft = _finetune()
    assert ft.parse_selection("1-3,5", list(range(1, 11)), "seeds") == [1, 2, 3, 5]
    assert ft.parse_selection(None, [1, 2], "seeds") == [1, 2]
    assert ft.parse_selection("b,a", ["a", "b", "c"], "methods") == ["a", "b"]
    with pytest.raises(SystemExit):
        ft.parse_selection("9-11", list(range(1, 11)), "seeds")
    run = tmp_path / "m-s1"
    for folder in ("checkpoints/step_00000100", "data/train", "eval"):
        (run / folder).mkdir(parents=True)
    for name in ("config.yaml", "log.jsonl", "eval/test2016.hyp", "eval/test2016.json"):
        (run / name).write_text("x\n")
    with pytest.raises(FileNotFoundError):
        ft.tidy(run)  # not finished: nothing goes
    (run / "finetune.json").write_text("{}")
    assert ft.tidy(run) == ["checkpoints", "data"]
    left = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    assert left == ["config.yaml", "eval", "eval/test2016.hyp", "eval/test2016.json",
                    "finetune.json", "log.jsonl"]


def test_methods_that_are_one_computation_are_named():
    """The harder spec's ss_sample and word_oracle share schedule and temperature: the report
    (and the sweep, before training) says they are one computation; the powered spec's differ."""
    import yaml

    ft = _finetune()
    hard = yaml.safe_load((ROOT / "configs/finetune/hard_multi30k_de_en.yaml").read_text())
    powered = yaml.safe_load((ROOT / "configs/finetune/powered_multi30k_de_en.yaml").read_text())
    assert ft.same_computation(ft.strategy_configs(hard)) == [["ss_sample", "word_oracle"]]
    assert ft.same_computation(ft.strategy_configs(powered)) == []
    report = {"reference": "teacher_forcing", "primary": "test2016", "alpha": 0.05,
              "missing": [], "planned_runs": 6, "splits": ["test2016"], "decisions": {},
              "intervals": {}, "bootstrap": {"summary": {}},
              "same_computation": [["ss_sample", "word_oracle"]]}
    assert "ss_sample and word_oracle are one computation" in ft.reading(report)
    fake = {"methods": {"teacher_forcing": {"strategy.name": "teacher_forcing"},
                        "mystery": {"strategy.name": "not_a_strategy"}}}
    assert list(ft.strategy_configs(fake)) == ["teacher_forcing"]
