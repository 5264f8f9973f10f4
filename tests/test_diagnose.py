"""gapless.analysis diagnose: exposure-bias measurements on scripted models whose answers are known
exactly, the forced-prefix decoding of a real (tiny) Transformer, and the CLI end to end."""

from __future__ import annotations

import json
import math
import random
import shutil

import pytest
import torch

from gapless import config as config_mod
from gapless.analysis.exposure import (
    DEFINITIONS,
    MeasureSettings,
    bucket_names,
    bucket_of,
    measure,
    same_length_distractors,
)
from gapless.analysis.probe import ModelProbe
from gapless.analysis.report import FIGURES
from gapless.checkpoint import RunDir
from gapless.cli import main
from gapless.data import BOS, EOS, PAD
from gapless.inference import Translator
from gapless.model import Transformer
from gapless.prepare import prepare

TINY = "tiny"  # the shipped preset
V = 20  # scripted vocabulary: 0-3 specials, 4 = the scripted models' "wrong" token, 5-19 words
WRONG = 4
P = 0.9  # probability a scripted model puts on its next token (the rest is spread evenly)


class ScriptedProbe:
    """A "model" given by a rule ``next_token(src, prefix)``; the source is the reference
    itself (a copy task), so the gold answers are known."""

    def __init__(self, next_token):
        self.next_token = next_token

    def dist(self, src: list[int], prefix: list[int]) -> torch.Tensor:
        lp = torch.full((V,), math.log((1 - P) / (V - 1)))
        lp[self.next_token(src, prefix)] = math.log(P)
        return lp

    def log_probs(self, src, tgt):
        T = max(len(t) for t in tgt)
        out = torch.zeros(len(src), T + 1, V)
        for b, (s, t) in enumerate(zip(src, tgt)):
            for i in range(len(t) + 1):
                out[b, i] = self.dist(s, t[:i])
        return out

    def greedy(self, src, prefixes):
        out = []
        for s, prefix in zip(src, prefixes):
            seq = list(prefix)
            while len(seq) < 2 * len(s) + 5:
                tok = int(self.dist(s, seq).argmax())
                if tok == EOS:
                    break
                seq.append(tok)
            out.append(seq)
        return out

    def search(self, src, beam):
        return self.greedy(src, [[] for _ in src])

    def detokenize(self, ids):
        return [" ".join(f"w{i}" for i in seq) for seq in ids]


def copy_by_position(src, prefix):
    """Copies the source, whatever its own prefix says (ignores a substitution)."""
    return src[len(prefix)] if len(prefix) < len(src) else EOS


def copy_if_on_path(src, prefix):
    """Copies while its prefix is the gold one; after any other token it stops (EOS)."""
    if prefix != src[: len(prefix)]:
        return EOS
    return src[len(prefix)] if len(prefix) < len(src) else EOS


def degrading(src, prefix):
    """Right on the gold prefix except at position 3, lost (WRONG) once off the gold path."""
    t = len(prefix)
    if t >= len(src):
        return EOS
    if prefix != src[:t]:
        return WRONG
    return WRONG if t == 2 else src[t]


@pytest.fixture(scope="module")
def data():
    rng = random.Random(3)
    refs = [[rng.randrange(5, V) for _ in range(n)] for n in (4, 5, 6, 4, 7, 5, 8, 6, 4, 12)]
    return refs, ScriptedProbe(copy_by_position).detokenize(refs)


def _measure(rule, data, **kw):
    refs, text = data
    return measure(ScriptedProbe(rule), refs, refs, text, MeasureSettings(beams=(1, 3), **kw))


def test_a_model_that_copies_perfectly_has_zero_gap(data):
    r = _measure(copy_by_position, data)
    g = r["gap"]
    assert g["tf_acc"] == g["free_acc"] == 1.0 and g["gap"] == 0.0
    assert all(row["gap"] == 0.0 for row in g["by_position"])
    assert all(b["gap"] == 0.0 for b in g["by_bucket"])
    assert g["tokens"] == sum(map(len, data[0]))
    for row in r["beam_sweep"]["beams"]:
        assert row["bleu"] == 100.0 and row["length_ratio"] == 1.0
        assert row["hallucination"] == 0.0 and row["repetition"] == 0.0
    for row in r["prefix_swap"]:
        assert row["same_prefix"] == 1.0
        assert row["gold"] == row["model"]
        assert row["gold"]["chrf"] == 100.0 and row["gold"]["acc"] == 1.0


def test_a_model_that_degrades_on_its_own_prefix_shows_the_gap(data):
    refs = data[0]
    r = _measure(degrading, data)
    g = r["gap"]
    tokens, n = sum(map(len, refs)), len(refs)
    # teacher forced: wrong only at position 3; free running: right only at positions 1-2
    assert g["tf_acc"] == pytest.approx((tokens - n) / tokens, abs=1e-4)
    assert g["free_acc"] == pytest.approx(2 * n / tokens, abs=1e-4)
    assert g["gap"] > 0.5
    by_pos = {row["position"]: row for row in g["by_position"]}
    assert [by_pos[t]["gap"] for t in (1, 2, 3)] == [0.0, 0.0, 0.0]
    assert by_pos[3]["tf_acc"] == 0.0
    assert all(row["gap"] == 1.0 for row in g["by_position"] if row["position"] > 3)
    # at 75% every prefix (k >= 3) has passed the error: gold continues perfectly, the model's
    # own prefix carries the error and everything after it is lost
    swap = r["prefix_swap"][-1]
    assert swap["cut"] == 0.75 and swap["sentences"] == n
    assert swap["same_prefix"] == 0.0
    assert swap["gold"]["acc"] == 1.0 and swap["model"]["acc"] == 0.0
    assert swap["gold"]["chrf"] == 100.0 and swap["model"]["chrf"] < 10.0


def test_the_distractor_is_less_likely_than_the_reference(data):
    refs = data[0]
    d = _measure(copy_by_position, data)["distractor"]
    partner = same_length_distractors(refs)
    assert d["sentences"] == sum(p is not None for p in partner) == len(refs) - 3  # 7, 8, 12
    assert d["ref_logprob"] == pytest.approx(math.log(P), abs=1e-4)
    assert d["distractor_logprob"] < d["ref_logprob"] and d["ref_wins"] == 1.0
    assert all(row["margin"] > 0 for row in d["by_position"])


def test_same_length_distractors_and_buckets():
    refs = [[5] * 3, [6] * 4, [7] * 3, [8] * 3, [9] * 9]
    assert same_length_distractors(refs) == [2, None, 3, 0, None]
    assert bucket_names((10, 20)) == ["1-10", "11-20", "21+"]
    assert [bucket_of(n, (10, 20)) for n in (1, 10, 11, 20, 21, 99)] == [0, 0, 1, 1, 2, 2]


def test_overcorrection_tells_ignoring_the_substitution_from_following_it(data):
    positions = sum(len(r) - 1 for r in data[0])
    ignores = _measure(copy_by_position, data)["overcorrection"]
    assert ignores["all"]["positions"] == positions
    assert ignores["all"]["follow_gold"] == 1.0 and ignores["all"]["tf_next_acc"] == 1.0
    assert ignores["model_error"]["positions"] == 0  # it is never wrong under teacher forcing
    follows = _measure(copy_if_on_path, data)["overcorrection"]["all"]
    assert follows["follow_gold"] == 0.0 and follows["other"] == 1.0
    assert follows["next_gold_logprob_substituted"] < follows["next_gold_logprob"]
    # the degrading model's own mistakes (position 3) are the model_error subset
    lost = _measure(degrading, data)["overcorrection"]["model_error"]
    assert lost["positions"] == len(data[0])


# ----------------------------------------------------------------------------------------------
# a real Transformer


@pytest.fixture(scope="module")
def tiny_model():
    cfg = config_mod.load(TINY, {"model.vocab_size": 40, "decode.max_len_b": 6})
    torch.manual_seed(0)
    model = Transformer(cfg.model)
    return Translator(model, None, cfg.decode, torch.device("cpu"))


def test_model_probe_greedy_follows_the_prefix_then_its_own_argmax(tiny_model):
    probe = ModelProbe(tiny_model, batch_size=3)
    g = torch.Generator().manual_seed(1)
    src = [torch.randint(4, 40, (n,), generator=g).tolist() for n in (3, 7, 5, 4, 6)]
    prefixes = [torch.randint(4, 40, (n,), generator=g).tolist() for n in (0, 2, 4, 1, 3)]
    out = probe.greedy(src, prefixes)
    lp = probe.log_probs(src, prefixes)  # [B,T+1,V]
    lp[:, :, [PAD, BOS]] = -math.inf  # search never picks these, nor EOS as the first token
    lp[:, 0, EOS] = -math.inf
    for b, (o, p) in enumerate(zip(out, prefixes)):
        assert o[: len(p)] == p
        first = int(lp[b, len(p)].argmax())
        assert (o[len(p)] if len(o) > len(p) else EOS) == first
    # no prefix: exactly the translator's greedy search
    free = probe.greedy(src, [[] for _ in src])
    assert free == tiny_model.translate_ids(src, beam=1)


# ----------------------------------------------------------------------------------------------
# the command line


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A prepared tiny run with untrained weights saved as its best checkpoint."""
    root = tmp_path_factory.mktemp("diagnose")
    rng = random.Random(7)
    from gapless.corpora import synthetic_pair

    corpus = root / "corpus"
    corpus.mkdir()
    for split, n in (("train", 200), ("valid", 10), ("test2016", 12)):
        pairs = [synthetic_pair(rng) for _ in range(n)]
        for lang, col in (("de", 0), ("en", 1)):
            (corpus / f"{split}.{lang}").write_text("".join(p[col] + "\n" for p in pairs))
    cfg = config_mod.load(TINY, {"data.corpus": str(corpus), "decode.max_len_b": 5})
    run = root / "run_a"
    prepare(cfg, run)
    cfg = config_mod.load(run / "config.yaml")
    torch.manual_seed(0)
    RunDir(run).save(Transformer(cfg.model), None, {"update": 0}, tags=("last", "best"))
    return run


def test_cli_writes_json_figures_and_report(tiny_run, tmp_path, capsys):
    args = ["diagnose", str(tiny_run), "--max-sentences", "8", "--beams", "1,2"]
    assert main(args) == 0
    out = tiny_run / "diagnose" / "test2016"
    assert capsys.readouterr().out.strip() == str(out / "report.md")
    result = json.loads((out / "diagnose.json").read_text())
    assert result["sentences"] == 8 and result["corpus_sentences"] == 12
    assert [b["beam"] for b in result["beam_sweep"]["beams"]] == [1, 2]
    assert result["definitions"] == DEFINITIONS
    assert 0.0 <= result["gap"]["tf_acc"] <= 1.0
    report = (out / "report.md").read_text()
    assert result["command"] in report
    for name in FIGURES.values():
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"({name})" in report

    # several runs on the same figures: the first result is reused, the second measured
    other = tmp_path / "run_b"
    shutil.copytree(tiny_run, other, ignore=shutil.ignore_patterns("diagnose"))
    stamp = (out / "diagnose.json").stat().st_mtime_ns
    assert main(["diagnose", "--compare", str(tiny_run), str(other), "--out",
                 str(tmp_path / "cmp"), "--max-sentences", "8", "--beams", "1,2"]) == 0
    assert (out / "diagnose.json").stat().st_mtime_ns == stamp
    assert (other / "diagnose" / "test2016" / "diagnose.json").is_file()
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "run_a" in report and "run_b" in report and "--compare" in report
    assert all((tmp_path / "cmp" / name).is_file() for name in FIGURES.values())


def test_cli_diagnose_usage_errors(capsys):
    assert main(["diagnose"]) == 2
    assert main(["diagnose", "--compare", "a", "b"]) == 2
    assert "--compare" in capsys.readouterr().err


def dropping(src, prefix):
    """Skips y_2, otherwise copies: on the gold prefix it predicts y_3 at position 2; after
    its own prefix (y_1 y_3 ...) it keeps copying from one token further on."""
    t = len(prefix)
    if prefix == src[:t]:
        if t == 1 and len(src) > 2:
            return src[2]
        return src[t] if t < len(src) else EOS
    return src[t + 1] if t + 1 < len(src) else EOS


def test_a_dropped_word_is_not_counted_as_every_later_token_wrong(data):
    """The LCS-aligned own-prefix accuracy loses only the dropped token (no gap beyond
    teacher forcing's own error); the position-aligned variant counts all later tokens."""
    refs = data[0]
    g = _measure(dropping, data)["gap"]
    tokens, n = sum(map(len, refs)), len(refs)
    assert g["tf_acc"] == pytest.approx((tokens - n) / tokens, abs=1e-4)
    assert g["free_acc"] == pytest.approx((tokens - n) / tokens, abs=1e-4)
    assert g["gap"] == pytest.approx(0.0, abs=1e-4)
    # position by position, the shifted output (y_1 y_3 y_4 ...) is right only where a
    # reference happens to repeat a token (y_t == y_t+1) and at y_1
    hyps = [r[:1] + r[2:] for r in refs]
    in_place = sum(h == y for hyp, ref in zip(hyps, refs) for h, y in zip(hyp, ref))
    assert g["free_pos_acc"] == pytest.approx(in_place / tokens, abs=1e-4)
    assert g["gap_pos"] > 0.5
