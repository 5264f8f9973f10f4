"""Length handling in the search and in ``gapless diagnose`` (powered_comparison.md section 3):
GNMT's length penalty (formula, and that it changes the ranking), the minimum length ratio
(no output shorter than ceil(ratio x source)), the length grid choosing on valid only, the
word-length buckets, and diagnose end to end on a tiny trained model."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from gapless import config as config_mod
from gapless.analysis.exposure import (
    PROTOCOL_BEAMS,
    WORD_EDGES,
    _bleu_by_bucket,
    bucket_names,
    bucket_of,
    exposure_gap,
)
from gapless.analysis.lengths import GNMT_ALPHAS, MIN_LEN_RATIOS, Split, length_grid
from gapless.cli import build_parser, main
from gapless.config import DecodeConfig
from gapless.data import EOS
from gapless.decode import LengthPenalty, Limits, ModelStepper, beam_search, gnmt_norm
from gapless.inference import Translator, min_lengths
from gapless.model import Transformer

# ----------------------------------------------------------------------------------------------
# GNMT's length penalty

A, B = 4, 5
V = 8


class Table:
    """A stepper reading each row's next-token probabilities from ``table[prefix]``; unlisted
    tokens get probability 0. One sentence, ``repeat`` rows."""

    def __init__(self, table: dict, repeat: int):
        self.table, self.prefix, self.started = table, [() for _ in range(repeat)], False

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.started:
            self.prefix = [p + (int(t),) for p, t in zip(self.prefix, tokens)]
        self.started = True
        lp = torch.full((len(self.prefix), V), -math.inf)
        for row, prefix in enumerate(self.prefix):
            for tok, p in self.table.get(prefix, {EOS: 1.0}).items():
                lp[row, tok] = math.log(p)
        return lp

    def reorder(self, index: torch.Tensor, rows_changed_sentence: bool) -> None:
        self.prefix = [self.prefix[i] for i in index.tolist()]


# short: A EOS, log-prob log .5 + log .74 over 2 positions; long: B B B EOS, log .5 + 2 log .65
# over 4. fairseq alpha 1 divides by 2 and 4 (the long one wins); GNMT alpha 1 by 7/6 and 9/6
# (the short one wins)
SHORT_OR_LONG = {(): {A: 0.5, B: 0.5}, (A,): {EOS: 0.74}, (B,): {B: 0.65},
                 (B, B): {B: 0.65}}
SHORT_LP = math.log(0.5) + math.log(0.74)
LONG_LP = math.log(0.5) + 2 * math.log(0.65)


def test_gnmt_penalty_formula():
    for n in (1, 2, 7, 30):
        for alpha in (0.0, 0.6, 1.4):
            assert gnmt_norm(n, alpha) == pytest.approx(((5 + n) / 6) ** alpha)
            assert LengthPenalty(alpha, "gnmt")(n) == pytest.approx(((5 + n) / 6) ** alpha)
            assert LengthPenalty(alpha)(n) == float(n) ** alpha  # fairseq, exactly as before
    assert LengthPenalty(1.0, "gnmt")(1) == 1.0  # lp(1) = 1: one token is not penalised
    with pytest.raises(ValueError, match="gnmtt"):
        LengthPenalty(1.0, "gnmtt")


def _best(penalty) -> list:
    hyps = beam_search(Table(SHORT_OR_LONG, 2), Limits.of(1, 10), 2, penalty, nbest=2)[0]
    return hyps


def test_gnmt_penalty_changes_the_ranking():
    fair = _best(LengthPenalty(1.0, "fairseq"))
    assert [h.tokens for h in fair] == [[B, B, B], [A]]
    assert fair[0].score == pytest.approx(LONG_LP / 4)
    gnmt = _best(LengthPenalty(1.0, "gnmt"))
    assert [h.tokens for h in gnmt] == [[A], [B, B, B]]
    assert gnmt[0].score == pytest.approx(SHORT_LP / (7 / 6))
    assert gnmt[1].score == pytest.approx(LONG_LP / (9 / 6))
    # a plain number is fairseq's alpha, as before
    assert [h.tokens for h in _best(1.0)] == [[B, B, B], [A]]


def test_translator_and_cli_pass_the_length_settings(monkeypatch):
    from gapless import inference

    seen = []
    real = inference.beam_search
    monkeypatch.setattr(inference, "beam_search",
                        lambda *a, **k: seen.append(a[3]) or real(*a, **k))
    translator = _translator()
    translator.translate_ids([[5, 6, 7]], beam=2, len_norm="gnmt", len_penalty=0.6)
    assert seen == [LengthPenalty(0.6, "gnmt")]
    args = build_parser().parse_args(["translate", "RUN", "--len-norm", "gnmt",
                                      "--len-penalty", "0.8", "--min-len-ratio", "0.5"])
    from gapless.cli import _decode_kwargs

    assert _decode_kwargs(args) == {"len_norm": "gnmt", "len_penalty": 0.8,
                                    "min_len_ratio": 0.5}
    assert DecodeConfig().len_norm == "fairseq" and DecodeConfig().min_len_ratio == 0.0


def test_config_rejects_an_unknown_length_normalisation():
    with pytest.raises(config_mod.ConfigError, match="decode.len_norm"):
        config_mod.load("tiny", {"decode.len_norm": "wu"})
    with pytest.raises(config_mod.ConfigError, match="decode.min_len_ratio"):
        config_mod.load("tiny", {"decode.min_len_ratio": -0.5})


# ----------------------------------------------------------------------------------------------
# the minimum length ratio


class EosFirst:
    """A real model's stepper with EOS made the most likely token everywhere: every hypothesis
    ends as soon as the search allows, so its length is the minimum length."""

    first_step_per_sentence = True

    def __init__(self, model, src, repeat=1):
        self.inner = ModelStepper(model, src, repeat)

    def step(self, tokens):
        lp = self.inner.step(tokens)
        lp[:, EOS] = 0.0
        return lp

    def reorder(self, index, rows_changed_sentence):
        self.inner.reorder(index, rows_changed_sentence)


def _translator(stepper=ModelStepper) -> Translator:
    cfg = config_mod.load("tiny", {"model.vocab_size": 40})
    torch.manual_seed(0)
    return Translator(Transformer(cfg.model), None, cfg.decode, torch.device("cpu"),
                      stepper=stepper)


def test_min_lengths_rounding_floor_and_cap():
    s = DecodeConfig(min_len=2, min_len_ratio=0.1)
    assert min_lengths([30, 31, 5, 0], s, [99, 99, 99, 99]) == [3, 4, 2, 2]
    s = DecodeConfig(min_len=1, min_len_ratio=0.7)
    assert min_lengths([10, 3, 20], s, [99, 99, 9]) == [7, 3, 9]  # 0.7 * 3 = 2.1 -> 3


@pytest.mark.parametrize("beam", [1, 3])
@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.7])
def test_no_output_is_shorter_than_the_ratio_of_its_source(beam, ratio):
    translator = _translator(EosFirst)
    g = torch.Generator().manual_seed(2)
    src = [torch.randint(4, 40, (n,), generator=g).tolist() for n in (1, 3, 4, 7, 10, 13)]
    out = translator.translate_nbest(src, beam=beam, min_len_ratio=ratio, nbest=beam)
    for s, hyps in zip(src, out):
        want = max(1, math.ceil(ratio * len(s)))
        assert hyps and all(len(h.tokens) >= want for h in hyps)
        # EOS is taken as soon as it is allowed (a beam may also finish longer hypotheses)
        assert min(len(h.tokens) for h in hyps) == want


# ----------------------------------------------------------------------------------------------
# the grid chooses on valid


def _lines(prefix: str, n: int) -> tuple[list[str], list[str]]:
    rng = random.Random(prefix)
    refs = [" ".join(f"w{rng.randrange(50)}" for _ in range(8)) for _ in range(n)]
    return [f"{prefix}{i}" for i in range(n)], refs


def test_the_grid_chooses_on_valid_and_reports_test_only_for_the_choices():
    valid, test = Split("valid", *_lines("v", 6)), Split("test", *_lines("t", 6))
    calls = []

    def translate(lines, len_norm, len_penalty, min_len_ratio):
        """Valid: best at gnmt 1.2 / 0.5, second at alpha 1.4; test: best at gnmt 0.6 / 0."""
        split = valid if lines[0].startswith("v") else test
        calls.append((split.name, len_norm, len_penalty, min_len_ratio))
        cell = (len_norm, len_penalty, min_len_ratio)
        best = ("gnmt", 1.2, 0.5) if split is valid else ("gnmt", 0.6, 0.0)
        if cell == best:
            return list(split.ref)
        keep = 4 if split is valid and len_penalty == 1.4 else 1
        return [" ".join(r.split()[:keep]) for r in split.ref]

    default = {"len_norm": "fairseq", "len_penalty": 1.0, "min_len_ratio": 0.0}
    got = length_grid(translate, valid, test, default)
    choices = {c["choice"]: c for c in got["choices"]}
    assert choices["joint"]["setting"] == {"len_norm": "gnmt", "len_penalty": 1.2,
                                           "min_len_ratio": 0.5}
    assert choices["joint"]["valid"]["bleu"] == 100.0  # the valid figure that chose it
    assert choices["joint"]["test"]["bleu"] < 100.0
    assert choices["len_penalty"]["setting"]["len_penalty"] == 1.4  # best at ratio 0
    assert choices["min_len_ratio"]["setting"] == default  # a tie goes to the first (ratio 0)
    assert choices["default"]["test"]["bp"] < 1.0 and choices["default"]["test"]["length_ratio"] < 1
    # every valid cell before any test decode; test only for the default and the choices
    first_test = [c[0] for c in calls].index("test")
    assert all(c[0] == "valid" for c in calls[:first_test])
    assert all(c[0] == "test" for c in calls[first_test:])
    assert len(calls[:first_test]) == len(got["cells"]) == 1 + 2 + 5 * 3
    tested = {c[1:] for c in calls[first_test:]}
    assert tested == {("fairseq", 1.0, 0.0), ("gnmt", 1.2, 0.5), ("gnmt", 1.4, 0.0)}
    assert ("gnmt", 0.6, 0.0) not in tested  # the test split's own best is never looked at
    assert got["alphas"] == list(GNMT_ALPHAS) and got["ratios"] == list(MIN_LEN_RATIOS)


# ----------------------------------------------------------------------------------------------
# long sentences: word-length buckets


def test_word_buckets():
    assert bucket_names(WORD_EDGES) == ["1-10", "11-20", "21-30", "31+"]
    assert [bucket_of(n, WORD_EDGES) for n in (1, 10, 11, 20, 21, 30, 31, 90)] == [
        0, 0, 1, 1, 2, 2, 3, 3]
    refs = [[5, 6], [5, 6, 7], [5], [6, 6], [7, 7, 7]]
    words = [3, 12, 25, 40, 10]
    gap = exposure_gap(refs, refs, [[5, 6], [5], [5], [6, 6], [9]], word_lengths=words)
    rows = {b["bucket"]: b for b in gap["by_word_bucket"]}
    assert {k: r["sentences"] for k, r in rows.items()} == {"1-10": 2, "11-20": 1, "21-30": 1,
                                                            "31+": 1}
    assert rows["1-10"]["tokens"] == 5 and rows["1-10"]["free_acc"] == pytest.approx(0.4)
    assert rows["11-20"]["gap"] == pytest.approx(1 - 1 / 3, abs=1e-4)
    text = ["a b", "c d", "e"]
    got = _bleu_by_bucket(text, text, [5, 15, 25], (10, 20))
    assert [(g["bucket"], g["sentences"]) for g in got] == [("1-10", 1), ("11-20", 1),
                                                            ("21+", 1)]


# ----------------------------------------------------------------------------------------------
# diagnose end to end


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny run trained for a few seconds on the synthetic grammar."""
    from gapless.corpora import synthetic_pair
    from gapless.prepare import prepare
    from gapless.training import train

    root = tmp_path_factory.mktemp("lengths")
    rng = random.Random(5)
    corpus = root / "corpus"
    corpus.mkdir()
    for split, n in (("train", 240), ("valid", 12), ("test2016", 12)):
        pairs = [synthetic_pair(rng) for _ in range(n)]
        for lang, col in (("de", 0), ("en", 1)):
            (corpus / f"{split}.{lang}").write_text("".join(p[col] + "\n" for p in pairs))
    cfg = config_mod.load("tiny", {"data.corpus": str(corpus), "train.dtype": "fp32",
                                   "train.max_updates": 60, "train.lr": 5e-3,
                                   "train.valid_every": 60, "train.save_every": 60})
    run = root / "run_a"
    prepare(cfg, run)
    train(cfg, run)
    return run


def test_diagnose_length_grid_buckets_and_compare(trained_run, tmp_path, monkeypatch):
    from gapless.analysis import report as report_mod

    monkeypatch.chdir(trained_run.parent)  # paths in results are relative to the working dir
    monkeypatch.setattr(report_mod, "PLOTS", {})  # the figures are test_diagnose's
    assert main(["diagnose", str(trained_run), "--max-sentences", "8", "--beams", "1,2",
                 "--length-grid"]) == 0
    out = trained_run / "diagnose" / "test2016"
    result = json.loads((out / "diagnose.json").read_text())
    grid = result["length_grid"]
    assert grid["valid_split"] == "valid" and grid["valid_sentences"] == 8
    assert [c["choice"] for c in grid["choices"]] == ["default", "len_penalty",
                                                      "min_len_ratio", "joint"]
    best_valid = max(c["bleu"] for c in grid["cells"] if c["setting"]["len_norm"] == "gnmt")
    joint = next(c for c in grid["choices"] if c["choice"] == "joint")
    assert joint["valid"]["bleu"] == best_valid
    assert result["gap"]["by_word_bucket"] and result["settings"]["length_grid"] is True
    assert all(b["by_word_bucket"] for b in result["beam_sweep"]["beams"])
    report = (out / "report.md").read_text()
    assert "## 7. Where exposure bias bites" in report and "valid BLEU (chose it)" in report
    assert "--length-grid" in result["command"]
    assert str(trained_run.parent) not in report + json.dumps(result)  # no machine paths
    cmp_dir = tmp_path / "cmp"
    assert main(["diagnose", "--compare", str(trained_run), str(trained_run), "--out",
                 str(cmp_dir), "--max-sentences", "8", "--beams", "1,2", "--length-grid"]) == 0
    report = (cmp_dir / "report.md").read_text()
    assert "BLEU (length ratio) by beam size" in report and "reference words" in report
    assert "--length-grid" in report


def test_diagnose_refuses_to_choose_on_the_split_it_reports(trained_run, capsys):
    assert main(["diagnose", str(trained_run), "--split", "valid", "--length-grid"]) == 2
    assert "chooses on valid" in capsys.readouterr().err


def test_protocol_flag_sets_the_protocol_beams(monkeypatch):
    import gapless.analysis.diagnose as diagnose_mod

    got = []
    monkeypatch.setattr(diagnose_mod, "diagnose", lambda run, s, reuse=False: got.append(s))
    monkeypatch.setattr("gapless.analysis.diagnose_report", lambda folder: "report.md")
    assert main(["diagnose", "RUN", "--protocol"]) == 0
    assert tuple(got[0].beams) == PROTOCOL_BEAMS == (1, 5, 10, 50, 100)
    assert got[0].length_grid
    assert main(["diagnose", "RUN", "--protocol", "--beams", "1,2"]) == 0
    assert list(got[1].beams) == [1, 2]


def test_an_engine_without_gapless_search_refuses_the_length_options():
    """An exported CTranslate2 model cannot apply them: it must say so, never ignore them."""
    from gapless.inference import TextEngine

    class Other(TextEngine):
        name = "other"
        decode_cfg = DecodeConfig()

    assert Other().settings(beam=3, len_penalty=0.6).beam == 3
    for bad in ({"len_norm": "gnmt"}, {"min_len_ratio": 0.5}):
        with pytest.raises(config_mod.ConfigError, match="other engine"):
            Other().settings(**bad)
    assert _translator().settings(len_norm="gnmt", min_len_ratio=0.5).len_norm == "gnmt"
